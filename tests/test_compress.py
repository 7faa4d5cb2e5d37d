"""Compressed streams are read by the real gunzip and zstd, and truncation is noticed."""

from __future__ import annotations

import io
import os
import subprocess
import zlib

import pytest
import zstandard

from tasks.backup.compression import DecompressingReader, check_level, compress_stream
from tasks.core.errors import DbopsError
from tasks.core.streams import CHUNK_SIZE

CHUNK = 4 * 1024 * 1024


def sample(size: int) -> bytes:
    text = b"INSERT INTO messages VALUES (1, 'hello world');\n" * (size // 48)
    return text + os.urandom(size // 8)


def chunks(data: bytes):
    return iter([data[i : i + CHUNK] for i in range(0, len(data), CHUNK)])


@pytest.mark.parametrize(("codec", "tool"), [("gzip", ["gunzip", "-c"]), ("zstd", ["zstd", "-dc"])])
def test_parallel_output_is_one_valid_file_for_the_standard_tools(codec, tool):
    data = sample(9 * 1024 * 1024)  # three gzip members
    packed = b"".join(compress_stream(chunks(data), codec, 3, threads=2))
    out = subprocess.run(tool, input=packed, capture_output=True, check=True).stdout
    assert out == data
    assert len(packed) < len(data)


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_reader_round_trip_and_truncation(codec):
    data = sample(5 * 1024 * 1024)
    packed = b"".join(compress_stream(chunks(data), codec, 1))
    reader = DecompressingReader(io.BytesIO(packed), codec)
    out = b"".join(iter(lambda: reader.read_chunk(65536), b""))
    assert out == data
    truncated = DecompressingReader(io.BytesIO(packed[:-50]), codec)
    with pytest.raises(DbopsError, match="truncated"):
        while truncated.read_chunk(65536):
            pass


def test_corrupt_gzip_is_reported():
    packed = bytearray(b"".join(compress_stream(chunks(sample(1024 * 1024)), "gzip", 6)))
    packed[100] ^= 0xFF
    reader = DecompressingReader(io.BytesIO(bytes(packed)), "gzip")
    with pytest.raises(DbopsError, match="corrupt"):
        while reader.read_chunk(65536):
            pass


def test_levels_are_checked():
    assert check_level("gzip", None) == 6 and check_level("zstd", None) == 3
    with pytest.raises(DbopsError, match="out of range for gzip"):
        check_level("gzip", 12)
    with pytest.raises(DbopsError, match="unknown compression"):
        check_level("lz4", None)


def test_every_gzip_level_is_standard_gzip_and_high_levels_compress_harder():
    """Levels 1-6 go through ISA-L, 7-9 through zlib-ng: all of them plain gzip to gunzip."""
    data = sample(6 * 1024 * 1024)
    sizes = {}
    for level in (1, 6, 9):
        packed = b"".join(compress_stream(chunks(data), "gzip", level, threads=2))
        out = subprocess.run(["gunzip", "-c"], input=packed, capture_output=True, check=True)
        assert out.stdout == data
        sizes[level] = len(packed)
    assert sizes[9] < sizes[6] <= sizes[1]


@pytest.mark.parametrize("codec", ["gzip", "zstd"])
def test_a_1000_to_1_stream_decompresses_in_bounded_pieces(codec):
    """One compressed read of a highly compressible dump must not inflate all at once."""
    raw = 256 * 1024 * 1024
    zeros = bytes(4 * 1024 * 1024)
    if codec == "gzip":  # one member, as the guide's `gzip` writes it
        packer = zlib.compressobj(6, zlib.DEFLATED, 31)
        packed = b"".join(packer.compress(zeros) for _ in range(raw // len(zeros))) + packer.flush()
    else:  # one frame, as `zstd` writes it
        packer = zstandard.ZstdCompressor(level=3).compressobj()
        packed = b"".join(packer.compress(zeros) for _ in range(raw // len(zeros))) + packer.flush()
    assert len(packed) * 1000 < raw  # more than 1000:1
    reader = DecompressingReader(io.BytesIO(packed), codec)
    total, largest = 0, 0
    while chunk := reader.read_chunk(CHUNK_SIZE):
        total += len(chunk)
        largest = max(largest, len(chunk))
    assert total == raw
    assert largest <= 2 * CHUNK_SIZE, f"one read inflated {largest / 2**20:.0f} MiB at once"

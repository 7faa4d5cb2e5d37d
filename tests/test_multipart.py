"""S3 multipart uploads against moto's real HTTP server: growing parts, several in flight,
all or nothing, bounded memory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from tasks.core.errors import DbopsError
from tasks.core.settings import s3_options_from_env
from tasks.storage.destinations import Destination, S3Destination
from tasks.storage.multipart import (
    DEFAULT_SCHEDULE,
    S3_MAX_OBJECT_SIZE,
    S3_MAX_PART_SIZE,
    S3_MAX_PARTS,
    MiB,
    PartSchedule,
)
from tests.conftest import REPO
from tests.faults import FailingS3Proxy

SMALL = PartSchedule(first=5 * MiB, double_every=2, largest=20 * MiB, in_flight=3)


def s3_destination(bucket: str, schedule: PartSchedule = SMALL, **options: str) -> S3Destination:
    dest = Destination.from_url(f"s3://{bucket}/p", s3_options_from_env().merged(**options))
    assert isinstance(dest, S3Destination)
    dest.schedule = schedule
    return dest


def pattern(size: int, seed: int = 7) -> bytes:
    block = bytes((seed * i + i // 251) % 256 for i in range(1 << 16))
    return (block * (size // len(block) + 1))[:size]


def write_in_odd_chunks(stream, data: bytes) -> None:
    offset, sizes = 0, [1, 4095, 3 * MiB + 17, 65536, 9 * MiB - 1]
    for i in range(len(data)):
        if offset >= len(data):
            return
        size = sizes[i % len(sizes)]
        stream.write(data[offset : offset + size])
        offset += size


def test_default_schedule_reaches_s3s_object_limit_within_its_part_limits():
    sizes = [DEFAULT_SCHEDULE.part_size(n) for n in range(1, S3_MAX_PARTS + 1)]
    assert sizes[0] == 16 * MiB  # small dumps keep small parts
    assert sizes == sorted(sizes) and max(sizes) <= S3_MAX_PART_SIZE
    assert DEFAULT_SCHEDULE.capacity() >= S3_MAX_OBJECT_SIZE  # 5 TiB fits in 10,000 parts
    assert 2 <= DEFAULT_SCHEDULE.in_flight <= 4
    # Any dump under 500 x 16 MiB (7.8 GiB) is held in at most 4 x 16 MiB.
    assert DEFAULT_SCHEDULE.memory_bound(500) == 64 * MiB
    # The old fixed 16 MiB part stopped at part 10,001, ~156 GiB in.
    assert 16 * MiB * S3_MAX_PARTS < S3_MAX_OBJECT_SIZE


def test_part_sizes_grow_as_the_object_grows(bucket, s3_client):
    data = pattern(5 * MiB + 5 * MiB + 10 * MiB + 10 * MiB + 20 * MiB + 20 * MiB + 3 * MiB)
    dest = s3_destination(bucket)
    with dest.open_write("grow.sql.gz") as stream:
        write_in_odd_chunks(stream, data)
    head = s3_client.head_object(Bucket=bucket, Key="p/grow.sql.gz", PartNumber=1)
    sizes = [
        s3_client.head_object(Bucket=bucket, Key="p/grow.sql.gz", PartNumber=n)["ContentLength"]
        for n in range(1, head["PartsCount"] + 1)
    ]
    assert [s // MiB for s in sizes] == [5, 5, 10, 10, 20, 20, 3]
    assert dest.read_bytes("grow.sql.gz") == data
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_small_objects_are_one_put_and_empty_objects_exist(bucket, s3_client):
    dest = s3_destination(bucket, storage_class="STANDARD_IA", tags={"team": "db"})
    dest.write_bytes("m.manifest.json", b'{"a": 1}')
    dest.write_bytes("empty", b"")
    assert dest.read_bytes("m.manifest.json") == b'{"a": 1}' and dest.read_bytes("empty") == b""
    head = s3_client.head_object(Bucket=bucket, Key="p/m.manifest.json")
    assert head.get("StorageClass") == "STANDARD_IA"
    tags = s3_client.get_object_tagging(Bucket=bucket, Key="p/m.manifest.json")["TagSet"]
    assert tags == [{"Key": "team", "Value": "db"}]


def test_several_parts_upload_at_once_and_never_more_than_the_bound(bucket, s3_client):
    dest = s3_destination(bucket, PartSchedule(first=5 * MiB, double_every=100, in_flight=3))
    real_upload_part = dest.client.upload_part
    lock, running, most = threading.Lock(), [0], [0]

    def upload_part(**kwargs):
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        try:
            time.sleep(0.3)  # a slow link: the writer must not wait for each part in turn
            return real_upload_part(**kwargs)
        finally:
            with lock:
                running[0] -= 1

    dest.client.upload_part = upload_part
    data = pattern(8 * 5 * MiB + 1)
    with dest.open_write("wide.sql.gz") as stream:
        write_in_odd_chunks(stream, data)
    assert most[0] == 3  # three parts were in flight at once: not one after the other
    assert dest.read_bytes("wide.sql.gz") == data


def test_one_failed_part_aborts_the_upload_and_leaves_no_object(bucket, s3_client):
    import botocore.exceptions

    dest = s3_destination(bucket)
    real_upload_part = dest.client.upload_part
    sent: list[int] = []

    def upload_part(**kwargs):
        sent.append(kwargs["PartNumber"])
        if kwargs["PartNumber"] == 3:
            error = {"Error": {"Code": "InternalError", "Message": "injected"}}
            raise botocore.exceptions.ClientError(error, "UploadPart")
        return real_upload_part(**kwargs)

    dest.client.upload_part = upload_part
    with pytest.raises(DbopsError), dest.open_write("broken.sql.gz") as stream:
        write_in_odd_chunks(stream, pattern(200 * MiB))
    assert 3 in sent and max(sent) < 3 + 2 * SMALL.in_flight  # stopped soon after the failure
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_parts_refused_by_the_server_abort_the_upload(s3_server, bucket, s3_client):
    with FailingS3Proxy(s3_server) as proxy:
        dest = s3_destination(bucket, endpoint_url=proxy.url)
        with pytest.raises(DbopsError, match="denied") as error, dest.open_write("x") as stream:
            write_in_odd_chunks(stream, pattern(60 * MiB))
    assert "\n" not in str(error.value)
    assert 1 <= proxy.failed_parts <= SMALL.in_flight + 1
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


MEASURE = """
import json, resource, sys, tracemalloc
from tasks.core.settings import s3_options_from_env
from tasks.storage.destinations import Destination
from tasks.storage.multipart import MiB, PartSchedule

dest = Destination.from_url(f"s3://{sys.argv[1]}/mem", s3_options_from_env())
dest.schedule = PartSchedule(first=8 * MiB, double_every=1000, largest=8 * MiB, in_flight=3)
chunk = bytes(range(256)) * 4096  # 1 MiB, reused: only the writer's buffers grow
dest.write_bytes("warm-up", chunk * 20)  # imports, connections, first allocations
tracemalloc.start()
with dest.open_write("big.sql.gz") as stream:
    for _ in range(int(sys.argv[2])):
        stream.write(chunk)
    peak_buffered = stream.peak_buffered
print(json.dumps({"traced_peak": tracemalloc.get_traced_memory()[1],
                  "peak_buffered": peak_buffered}))
"""


def test_memory_stays_within_parts_in_flight_times_part_size(s3_server, bucket, s3_client):
    """A separate process (moto's own memory stays out of the count) uploads 240 MiB."""
    total_mib = 240
    result = subprocess.run(
        [sys.executable, "-c", MEASURE, bucket, str(total_mib)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    bound = (3 + 1) * 8 * MiB  # (parts in flight + the part filling) x part size
    assert measured["peak_buffered"] <= bound
    # Everything Python allocated while uploading, requests and responses included.
    assert measured["traced_peak"] <= bound + 16 * MiB, measured
    assert measured["traced_peak"] < total_mib * MiB / 4
    head = s3_client.head_object(Bucket=bucket, Key="mem/big.sql.gz")
    assert head["ContentLength"] == total_mib * MiB
    first = s3_client.head_object(Bucket=bucket, Key="mem/big.sql.gz", PartNumber=1)
    assert first["PartsCount"] == total_mib // 8

"""Feeding a stored object to psql or pg_restore: the one streaming step every restore shares.

The object is read through its SHA-256 (`HashingReader`), decrypted when it is age-encrypted,
decompressed, optionally filtered, and written to the tool's input; the end of input is sent
only once the whole object matched its manifest, so a damaged object never completes a load.
A failed tool is the backup's fault unless the server's SQLSTATE says it was its own.
"""

from __future__ import annotations

import contextlib
import re
import subprocess
from typing import IO, Protocol

from tasks.backup.catalog import BackupSource
from tasks.backup.compression import DecompressingReader
from tasks.backup.encryption import decrypting
from tasks.backup.manifest import ObjectInfo
from tasks.core.children import spawn
from tasks.core.client_tools import find_client_tool
from tasks.core.errors import BackupCheck, BackupFaultError, DbopsError, SurroundingsError
from tasks.core.streams import CHUNK_SIZE, HashingReader, StderrTail
from tasks.restore.readback import check_stored


def restore_command(source: BackupSource, major: int) -> list[str]:
    if source.format in ("custom", "parallel"):  # a parallel backup's schema archive
        needed = major
        if source.manifest:
            needed = max(major, int(source.manifest.pg_dump_version.split(".")[0]))
        tool = find_client_tool("pg_restore", needed)
        return [
            tool.path,
            "--no-password",
            "--exit-on-error",
            "--dbname",
            "{dbname}",
        ]
    return psql_command(major)


def psql_command(major: int) -> list[str]:
    """psql that stops at the first error, naming its SQLSTATE; `{dbname}` is filled in later."""
    tool = find_client_tool("psql", major)
    return [
        tool.path,
        "--no-password",
        "--no-psqlrc",
        "--quiet",
        "--set",
        "ON_ERROR_STOP=1",
        "--set",
        "VERBOSITY=verbose",  # errors carry their SQLSTATE: the server's fault or the backup's
        "--dbname",
        "{dbname}",
    ]


def _check_integrity(
    source: BackupSource, reader: HashingReader, expected: ObjectInfo | None = None
) -> bool:
    """False when there is no manifest to check against; raises when the check fails."""
    info = expected or (source.manifest.dump if source.manifest else None)
    if info is None:
        return False
    advice = "; nothing was restored, restore another backup"
    check_stored(source.url, reader, info, advice)
    return True


# SQLSTATE classes that blame the server, not the backup: connection exceptions, insufficient
# resources (disk full, out of memory, too many connections), operator intervention, system
# errors. psql exits 2 when it lost its connection.
SURROUNDINGS_CLASSES = ("08", "53", "57", "58")
SQLSTATE = re.compile(r"\b(?:ERROR|FATAL|PANIC):\s+([0-9A-Z]{5}):")


def tool_failure(tool: str, code: int, tail: StderrTail, secret: str | None) -> DbopsError:
    """A failed psql/pg_restore is the backup's fault unless the server says it was its own."""
    line = tail.last(secret, ("ERROR:", "FATAL:", "PANIC:", "error:")) or tail.last(secret)
    state = SQLSTATE.search(line)
    if (tool == "psql" and code == 2) or (state and state.group(1)[:2] in SURROUNDINGS_CLASSES):
        return SurroundingsError(
            f"{tool} failed because of the server, not the backup: {line}; nothing was "
            "restored, fix the server and try again"
        )
    return BackupFaultError(f"{tool} stopped at the first error: {line}", BackupCheck.RESTORE)


class ChunkFilter(Protocol):
    """Rewrites the decompressed dump on its way (e.g. keeps only some tables' rows)."""

    def feed(self, chunk: bytes) -> bytes: ...

    def finish(self) -> bytes: ...


def stream_into(
    source: BackupSource,
    command: list[str],
    env: dict[str, str],
    secret: str | None,
    transform: ChunkFilter | None = None,
    stdout: int | IO[bytes] = subprocess.DEVNULL,
    expected: ObjectInfo | None = None,
) -> tuple[HashingReader, bool]:
    """Feed the backup to psql/pg_restore; the end of input is sent only if it is intact.
    `expected`: what `source.dump_name` is checked against (default: the manifest's dump)."""
    process = spawn(command, stdin=subprocess.PIPE, stdout=stdout, stderr=subprocess.PIPE, env=env)
    assert process.stdin is not None and process.stderr is not None
    tail = StderrTail(process.stderr)
    tool = command[0].rsplit("/", 1)[-1]
    verified = False
    try:
        with (
            source.destination.open_read(source.dump_name) as raw,
            decrypting(
                reader := HashingReader(raw),
                source.identity,
                source.encryption is not None,
                source.url,
            ) as plain,
        ):
            decompressor = DecompressingReader(plain, source.compression)
            held = decompressor.read_chunk(CHUNK_SIZE)
            while held:
                following = decompressor.read_chunk(CHUNK_SIZE)
                if not following:
                    verified = _check_integrity(source, reader, expected)
                if transform is not None:
                    held = transform.feed(held) + (b"" if following else transform.finish())
                try:
                    process.stdin.write(held)
                except BrokenPipeError:
                    break
                held = following
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
        code = process.wait()
        if code != 0:
            raise tool_failure(tool, code, tail, secret)
        return reader, verified
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

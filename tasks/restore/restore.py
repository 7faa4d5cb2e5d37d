"""Storage -> SHA-256 check -> decompressor -> psql / pg_restore -> scratch database -> swap.

Every restore goes into a scratch database, and dbops alone decides that it replaces the
target: only after the whole object matched its size and SHA-256, psql or pg_restore exited
cleanly and every table's row count matched the manifest does `swap.swap_in` rename it into
place. End of input commits nothing: if dbops is killed, its children die with it
(`core.children`) and the target is untouched; the scratch database is a listed leftover.
No single transaction holds every table's lock, so databases with many tables restore too.
"""

from __future__ import annotations

import contextlib
import logging
import re
import subprocess
import time
from collections.abc import Callable
from typing import IO, Protocol

from pydantic import BaseModel, Field

from tasks.application.window import ApplicationReport
from tasks.backup.catalog import BackupSource
from tasks.backup.compression import DecompressingReader
from tasks.backup.encryption import decrypting
from tasks.backup.row_counts import table_row_counts
from tasks.core.children import spawn
from tasks.core.client_tools import find_client_tool
from tasks.core.errors import (
    BackupCheck,
    BackupFaultError,
    ConfigError,
    DbopsError,
    SurroundingsError,
)
from tasks.core.postgres import ConnInfo, database_exists, maintenance_conn, server_version
from tasks.core.streams import CHUNK_SIZE, HashingReader, StderrTail
from tasks.restore.readback import check_stored
from tasks.restore.swap import (
    apply_state,
    create_scratch,
    drop,
    helper_name,
    read_state,
    refuse_system_database,
    shut_out,
    swap_in,
)

logger = logging.getLogger("dbops.restore")


class RestoreResult(BaseModel):
    """What a restore did; `target` is the URL without its password."""

    source: str
    target: str
    backup_id: str | None
    bytes_read: int
    seconds: float
    sha256: str
    checksum_verified: bool
    row_counts_checked: bool
    tables: int
    mismatched_tables: dict[str, list[int]] = Field(default_factory=dict)
    replaced_existing: bool = False
    application: ApplicationReport | None = None


def user_object_count(target: ConnInfo) -> int:
    """Relations, types and functions outside the system schemas: 0 means empty."""
    with target.connect() as conn:
        row = conn.execute(
            """
            SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
                      AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%')
                 + (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql')
                 + (SELECT count(*) FROM pg_namespace
                    WHERE nspname NOT IN ('pg_catalog', 'information_schema', 'public')
                      AND nspname NOT LIKE 'pg\\_%')
            """
        ).fetchone()
    return int(row[0])  # type: ignore[index]


def restore_command(source: BackupSource, major: int) -> list[str]:
    if source.format == "custom":
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


def _check_integrity(source: BackupSource, reader: HashingReader) -> bool:
    """False when there is no manifest to check against; raises when the check fails."""
    if source.manifest is None:
        return False
    advice = "; nothing was restored, restore another backup"
    check_stored(source.url, reader, source.manifest.dump, advice)
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
) -> tuple[HashingReader, bool]:
    """Feed the backup to psql/pg_restore; the end of input is sent only if it is intact."""
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
                    verified = _check_integrity(source, reader)
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


def run_restore(
    source: BackupSource,
    target: ConnInfo,
    clean: bool = False,
    log: Callable[[str], None] = logger.info,
    around_swap: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
) -> RestoreResult:
    """Restore into a scratch database, check it, then swap it in for `target`.

    `around_swap` wraps only the swap: the application's stop and start (application/window.py).
    """
    started = time.perf_counter()
    refuse_system_database(target.dbname)
    with maintenance_conn(target) as admin:
        major, _ = server_version(admin)
        command = restore_command(source, major)
        state = None
        objects = 0
        if database_exists(admin, target.dbname):
            objects = user_object_count(target)
            if objects and not clean:
                raise ConfigError(
                    f"database {target.dbname!r} is not empty ({objects} objects); pass --clean "
                    "to replace it, or restore into another database"
                )
            state = read_state(admin, target.dbname)
        scratch = helper_name(target.dbname, "restore")
        aside = helper_name(target.dbname, "old") if state else None
        log(
            f"restoring {source.url} into scratch database {scratch!r}; {target.dbname!r} is "
            "replaced only once it is complete"
            + (f" (the current one is set aside as {aside!r}, then dropped)" if aside else "")
        )
        create_scratch(admin, scratch, state)
        try:
            into = target.with_dbname(scratch)
            argv = [part.replace("{dbname}", scratch) for part in command]
            reader, verified = stream_into(source, argv, into.child_env(), target.password)
            mismatched, counted = _compare_counts(source, into)
            if mismatched:
                raise BackupFaultError(
                    f"restored row counts differ from the manifest in {len(mismatched)} tables "
                    f"(e.g. {next(iter(mismatched))}); the backup is inconsistent",
                    BackupCheck.ROW_COUNTS,
                )
            if state is not None:
                apply_state(admin, scratch, state)
            allow = state.allow_connections if state else True
            with (around_swap or contextlib.nullcontext)():  # the application stops here
                shut_out(admin, scratch)
                swap_in(admin, scratch, target.dbname, aside, allow, drop_aside=False)
            if aside is not None:  # dropped once the application runs again
                drop(admin, aside)
        except BaseException:
            with contextlib.suppress(Exception):
                drop(admin, scratch)  # only ever the scratch database: the target is untouched
            if aside is not None:  # it exists only when the swap committed (the start failed)
                with contextlib.suppress(Exception):
                    drop(admin, aside)
            raise
        log(f"{target.dbname!r} is now the restored copy")
    return RestoreResult(
        source=source.url,
        target=target.redacted(),
        backup_id=source.manifest.backup_id if source.manifest else None,
        bytes_read=reader.size,
        seconds=round(time.perf_counter() - started, 3),
        sha256=reader.hasher.hexdigest(),
        checksum_verified=verified,
        row_counts_checked=source.manifest is not None,
        tables=counted,
        replaced_existing=bool(objects),
    )


def _compare_counts(source: BackupSource, target: ConnInfo) -> tuple[dict[str, list[int]], int]:
    with target.connect() as conn:
        actual = table_row_counts(conn)
    if source.manifest is None:
        return {}, len(actual)
    expected = source.manifest.row_counts
    mismatched = {
        table: [count, actual.get(table, -1)]
        for table, count in expected.items()
        if actual.get(table) != count
    }
    return mismatched, len(actual)

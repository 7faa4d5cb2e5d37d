"""Storage -> SHA-256 check -> decompressor -> psql / pg_restore, streaming.

The checksum is known only after the last byte, so the last chunk is held back
until the whole object has hashed correctly: psql (--single-transaction) and
pg_restore never see the end of their input, and so never commit, a corrupt
backup. A restore over an existing database (--clean) goes into a scratch
database that replaces the target only once it is complete: a failed restore
leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import subprocess
import time

from psycopg import sql
from pydantic import BaseModel, Field

from tasks.backup.catalog import BackupSource
from tasks.backup.compression import DecompressingReader
from tasks.backup.pipeline import table_row_counts
from tasks.core.client_tools import find_client_tool
from tasks.core.errors import BackupCheck, BackupFaultError, ConfigError
from tasks.core.postgres import ConnInfo, database_exists, maintenance_conn, server_version
from tasks.core.streams import CHUNK_SIZE, HashingReader, StderrTail
from tasks.restore.readback import check_stored


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


def _scratch_name(dbname: str) -> str:
    return f"{dbname[:40]}__dbops_restore_{int(time.time())}"


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
            "--single-transaction",
            "--dbname",
            "{dbname}",
        ]
    tool = find_client_tool("psql", major)
    return [
        tool.path,
        "--no-password",
        "--no-psqlrc",
        "--quiet",
        "--single-transaction",
        "--set",
        "ON_ERROR_STOP=1",
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


def stream_into(
    source: BackupSource, command: list[str], env: dict[str, str], secret: str | None
) -> tuple[HashingReader, bool]:
    """Feed the backup to psql/pg_restore; the end of input is sent only if it is intact."""
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
    )
    assert process.stdin is not None and process.stderr is not None
    tail = StderrTail(process.stderr)
    tool = command[0].rsplit("/", 1)[-1]
    verified = False
    try:
        with source.destination.open_read(source.dump_name) as raw:
            reader = HashingReader(raw)
            decompressor = DecompressingReader(reader, source.compression)
            held = decompressor.read_chunk(CHUNK_SIZE)
            while held:
                following = decompressor.read_chunk(CHUNK_SIZE)
                if not following:
                    verified = _check_integrity(source, reader)
                try:
                    process.stdin.write(held)
                except BrokenPipeError:
                    break
                held = following
        with contextlib.suppress(BrokenPipeError):
            process.stdin.close()
        code = process.wait()
        if code != 0:
            raise BackupFaultError(
                f"{tool} stopped at the first error: {tail.last(secret)}", BackupCheck.RESTORE
            )
        return reader, verified
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def run_restore(source: BackupSource, target: ConnInfo, clean: bool = False) -> RestoreResult:
    started = time.perf_counter()
    with maintenance_conn(target) as admin:
        major, _ = server_version(admin)
        command = restore_command(source, major)
        exists = database_exists(admin, target.dbname)
        replace = False
        if exists:
            objects = user_object_count(target)
            if objects and not clean:
                raise ConfigError(
                    f"database {target.dbname!r} is not empty ({objects} objects); pass --clean "
                    "to replace it, or restore into another database"
                )
            replace = bool(objects)
        into = _scratch_name(target.dbname) if (replace or not exists) else target.dbname
        if into != target.dbname:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(into)))
        try:
            scratch = target.with_dbname(into)
            argv = [part.replace("{dbname}", into) for part in command]
            reader, verified = stream_into(source, argv, scratch.child_env(), target.password)
            mismatched, counted = _compare_counts(source, scratch)
            if mismatched:
                raise BackupFaultError(
                    f"restored row counts differ from the manifest in {len(mismatched)} tables "
                    f"(e.g. {next(iter(mismatched))}); the backup is inconsistent",
                    BackupCheck.ROW_COUNTS,
                )
        except BaseException:
            if into != target.dbname:
                admin.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(into))
                )
            raise
        if into != target.dbname:
            if exists:
                admin.execute(
                    sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(target.dbname))
                )
            admin.execute(
                sql.SQL("ALTER DATABASE {} RENAME TO {}").format(
                    sql.Identifier(into), sql.Identifier(target.dbname)
                )
            )
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
        replaced_existing=replace,
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

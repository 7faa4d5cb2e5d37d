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
import time
from collections.abc import Callable

from pydantic import BaseModel, Field

from tasks.application.window import ApplicationReport
from tasks.backup.catalog import BackupSource
from tasks.backup.row_counts import table_row_counts
from tasks.core.errors import (
    BackupCheck,
    BackupFaultError,
    ConfigError,
)
from tasks.core.postgres import ConnInfo, database_exists, maintenance_conn, server_version
from tasks.restore.parallel_load import load_parallel
from tasks.restore.streaming import (  # noqa: F401 - re-exported: one import for callers
    SURROUNDINGS_CLASSES,
    psql_command,
    restore_command,
    stream_into,
    tool_failure,
)
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


def run_restore(
    source: BackupSource,
    target: ConnInfo,
    clean: bool = False,
    log: Callable[[str], None] = logger.info,
    around_swap: Callable[[], contextlib.AbstractContextManager[object]] | None = None,
    jobs: int = 2,
) -> RestoreResult:
    """Restore into a scratch database, check it, then swap it in for `target`.

    A parallel backup loads by `jobs` workers (`parallel_load.py`); other formats stream
    through one psql or pg_restore.
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
            if source.format == "parallel":
                loaded = load_parallel(source, into, major, target.password, jobs)
                assert source.manifest is not None  # load_parallel refuses one without
                bytes_read, sha256, verified = loaded.bytes_read, source.manifest.dump.sha256, True
                mismatched, counted = _compare_loaded(source, loaded.rows)
            else:
                reader, verified = stream_into(source, argv, into.child_env(), target.password)
                bytes_read, sha256 = reader.size, reader.hasher.hexdigest()
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
        bytes_read=bytes_read,
        seconds=round(time.perf_counter() - started, 3),
        sha256=sha256,
        checksum_verified=verified,
        row_counts_checked=source.manifest is not None,
        tables=counted,
        replaced_existing=bool(objects),
    )


def _compare_loaded(source: BackupSource, rows: dict[str, int]) -> tuple[dict[str, list[int]], int]:
    """A parallel load's rows per table (as each COPY reported) against the manifest."""
    expected = source.manifest.row_counts if source.manifest else {}
    mismatched = {
        table: [count, rows.get(table, -1)]
        for table, count in expected.items()
        if rows.get(table) != count
    }
    return mismatched, len(rows)


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

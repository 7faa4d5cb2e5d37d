"""Restore some tables of a backup, leaving everything else in the target database alone.

Someone deleted rows from one table: the operator restores that table beside the live one
(another schema or name in the same database) or into another database, compares, and
copies rows back. The path: names checked against the manifest and the target (before the
backup is read) -> every definition and the chosen tables' rows into a scratch database on
the target's server (`table_load`, SHA-256 checked as in every restore) -> row counts against
the manifest, renames (`table_move.prepare`) -> one transaction in the target
(`table_move.transfer`). The scratch database is dropped whatever happens; a killed run
leaves it as a `__dbops_restore_` leftover that `dbops cleanup` lists.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable

from pydantic import BaseModel, Field

from tasks.backup.catalog import BackupSource
from tasks.core.errors import ConfigError
from tasks.core.postgres import ConnInfo, database_exists, maintenance_conn, server_version
from tasks.restore.sql_filter import qualified
from tasks.restore.swap import create_scratch, drop, helper_name, read_state
from tasks.restore.table_load import table_source
from tasks.restore.table_move import check_target, prepare, transfer
from tasks.restore.table_names import TableRequest, final_table, refuse_existing, selection_of

logger = logging.getLogger("dbops.restore")


class TableRestoreResult(BaseModel):
    """What a table restore did; `target` is the URL without its password."""

    source: str
    target: str
    backup_id: str | None
    bytes_read: int
    seconds: float
    sha256: str
    checksum_verified: bool
    tables: dict[str, str] = Field(description="name in the backup -> name in the target")
    row_counts: dict[str, int] = Field(description="rows of each restored table (checked)")
    left_out: list[str] = Field(
        default_factory=list, description="foreign keys to tables that were not restored"
    )


def restore_tables(
    source: BackupSource,
    target: ConnInfo,
    request: TableRequest,
    log: Callable[[str], None] = logger.info,
) -> TableRestoreResult:
    """Restore the requested tables into `target`, which must exist; nothing is overwritten."""
    started = time.perf_counter()
    known = sorted(source.manifest.row_counts) if source.manifest else []
    with maintenance_conn(target) as admin:
        major, _ = server_version(admin)
        loader = table_source(source, major)
        assert source.manifest is not None  # table_source refuses a dump without one
        selection = selection_of(request, known)
        if not database_exists(admin, target.dbname):
            raise ConfigError(
                f"database {target.dbname!r} does not exist; create it first (a table restore "
                "adds tables to an existing database)"
            )
        with target.connect() as conn:
            finals = [final_table(table, request) for table in sorted(selection.tables)]
            refuse_existing(conn, finals, target.dbname)
        scratch = helper_name(target.dbname, "restore")
        log(
            f"restoring {describe(request)} of {source.url} through scratch database "
            f"{scratch!r} into {target.dbname!r}; nothing there is replaced"
        )
        create_scratch(admin, scratch, read_state(admin, target.dbname))
        try:
            into = target.with_dbname(scratch)
            loaded = loader.load(selection, into, target.password)
            with into.connect() as conn:
                plan = prepare(conn, selection, request, source.manifest)
                with target.connect() as live:
                    check_target(conn, live, plan)
            plan.left_out = loaded.left_out + plan.left_out
            for key in plan.left_out:
                log(f"left out foreign key {key}: it refers to a table that was not restored")
            transfer(into, target, plan)
        finally:
            with contextlib.suppress(Exception):
                drop(admin, scratch)
    restored = {qualified(*m.source): qualified(*m.final) for m in plan.tables}
    log(f"restored {', '.join(f'{a} as {b}' for a, b in restored.items())}")
    return TableRestoreResult(
        source=source.url,
        target=target.redacted(),
        backup_id=source.manifest.backup_id,
        bytes_read=loaded.bytes_read,
        seconds=round(time.perf_counter() - started, 3),
        sha256=loaded.sha256,
        checksum_verified=loaded.checksum_verified,
        tables=restored,
        row_counts={qualified(*m.final): m.rows for m in plan.tables if m.rows is not None},
        left_out=plan.left_out,
    )


def describe(request: TableRequest) -> str:
    parts = [f"table {name}" for name in request.tables]
    parts += [f"schema {name}" for name in request.schemas]
    return ", ".join(parts)

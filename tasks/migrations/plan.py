"""What a run would do, computed before anything changes (the dry run's output).

The plan refuses when history and files disagree, so a drifted or half-applied
database stops the run before the backup, not after it.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import BaseModel, Field

from tasks.core.errors import DbopsError
from tasks.core.postgres import ConnInfo
from tasks.migrations.command import command_argv
from tasks.migrations.files import Migration, discover_migrations
from tasks.migrations.history import (
    HISTORY_TABLE,
    AppliedMigration,
    read_history,
    read_prisma_history,
)


class MigrationPlan(BaseModel):
    """What a run would do, computed before anything changes (the --dry-run output)."""

    database: str
    mode: Literal["directory", "command"]
    migrations: str | None = None
    command: str | None = None
    applied: list[str] = Field(default_factory=list)
    applied_by_prisma: list[str] = Field(
        default_factory=list, description="recorded in _prisma_migrations; not run again"
    )
    pending: list[Migration] = Field(default_factory=list)
    out_of_order: list[str] = Field(default_factory=list)
    target_version: str


class UnfinishedMigrationError(DbopsError):
    """A migration outside a transaction started and never finished; an operator must look."""

    def __init__(self, row: AppliedMigration) -> None:
        super().__init__(
            f"migration {row.id} started at {row.started_at} (run {row.applied_by}) and never "
            "finished: it ran outside a transaction and stopped part way, so some of its "
            "statements may have committed; check the database against it (e.g. INVALID "
            "indexes), finish or undo it by hand, then clear its record with repair "
            "(`dbops migrate --repair --yes`) and run again"
        )
        self.migration_id = row.id


class DirectoryPlan(NamedTuple):
    pending: list[Migration]
    out_of_order: list[str]
    applied_by_prisma: list[str]


def plan_directory(
    migrations: list[Migration],
    history: list[AppliedMigration],
    where: str,
    prisma: dict[str, bool] | None = None,
) -> DirectoryPlan:
    """Pending migrations and those among them numbered below the newest applied one.

    Refuses when history and files disagree: an applied migration that was edited
    (checksum drift), deleted, or that stopped half way outside a transaction; or a
    migration that Prisma started and neither finished nor rolled back.
    """
    prisma = prisma or {}
    for name, finished in prisma.items():
        if not finished:
            raise DbopsError(
                f"Prisma migration {name} failed and was never resolved (_prisma_migrations); "
                f"run `npx prisma migrate resolve --rolled-back {name}` (or --applied) first"
            )
    on_disk = {m.id: m for m in migrations}
    for row in history:
        if row.finished_at is None:
            raise UnfinishedMigrationError(row)
        migration = on_disk.get(row.id)
        if migration is None:
            raise DbopsError(
                f"migration {row.id} is applied in {where} but its file is missing from the "
                "migrations directory; restore it from version control (never delete applied "
                "migrations)"
            )
        if migration.sha256 != row.checksum:
            raise DbopsError(
                f"migration {row.id} was edited after it was applied (checksum drift: "
                f"{row.checksum[:12]} applied, {migration.sha256[:12]} on disk in "
                f"{migration.path}); put the applied version back and write a new migration "
                "for the change"
            )
    applied = {row.id for row in history}
    by_prisma = [
        m.id for m in migrations if m.layout == "prisma" and m.id in prisma and m.id not in applied
    ]
    applied |= set(by_prisma)
    pending = [m for m in migrations if m.id not in applied]
    newest = max((on_disk[i].number for i in applied if i in on_disk), default=-1)
    out_of_order = [m.id for m in pending if m.number < newest]
    return DirectoryPlan(pending, out_of_order, by_prisma)


def build_plan(
    info: ConnInfo, migrations: str | None, command: str | None, target_version: str | None
) -> MigrationPlan:
    """The plan for a directory of migrations, or for another tool's command."""
    if command is not None:
        command_argv(command)  # a malformed command is refused before the backup
        return MigrationPlan(
            database=info.dbname,
            mode="command",
            command=command,
            target_version=target_version or "external",
        )
    assert migrations is not None
    found = discover_migrations(migrations)
    with info.connect() as conn:
        history = read_history(conn)
        prisma = read_prisma_history(conn, info.app_params.get("schema") or "public")
    pending, out_of_order, by_prisma = plan_directory(
        found, history, f"{info.dbname}.{HISTORY_TABLE}", prisma
    )
    return MigrationPlan(
        database=info.dbname,
        mode="directory",
        migrations=migrations,
        applied=[row.id for row in history],
        applied_by_prisma=by_prisma,
        pending=pending,
        out_of_order=out_of_order,
        target_version=target_version or (pending[-1].id if pending else "current"),
    )

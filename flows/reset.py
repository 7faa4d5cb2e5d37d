"""reset-database: the guide's `db:reset` (DEV ONLY): drop and recreate a non-production database.

Refuses unless the target is marked non-production (DBOPS_ENVIRONMENT where the
flow runs, or a name ending in _dev/_test/_local) and `confirm` repeats the
database's name. With `migrations`, the recreated database gets every migration
of the directory, like `prisma migrate reset`. The reset holds the database's
dbops slot, so it never runs beside a backup, restore, migration or maintenance.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.core.parameters import DatabaseUrl, SlotWait, documented
from tasks.core.settings import reject_inline_password
from tasks.migrations.reset import ResetResult
from tasks.migrations.tasks import drop_and_recreate
from tasks.operations.outcomes import outcome_hooks


@flow(name="reset-database", **outcome_hooks("reset"))
@documented
def reset_database_flow(
    database_url: DatabaseUrl = None,
    confirm: Annotated[
        str | None,
        Field(description="the database's name, to confirm that every object and row in it goes"),
    ] = None,
    migrations: Annotated[
        str | None,
        Field(description="apply this directory's migrations to the recreated database"),
    ] = None,
    slot_wait_seconds: SlotWait = 3600,
) -> ResetResult:
    """Drop and recreate a non-production database (DEV ONLY), after confirmation."""
    reject_inline_password(database_url, "database_url")
    return drop_and_recreate(database_url, confirm, migrations, slot_wait_seconds)

"""reset-database: the guide's `db:reset` (DEV ONLY): drop and recreate a non-production database.

Refuses unless the target is marked non-production (DBOPS_ENVIRONMENT where the
flow runs, or a name ending in _dev/_test/_local) and `confirm` repeats the
database's name. With `migrations`, the recreated database gets every migration
of the directory, like `prisma migrate reset`.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import Field

from tasks.core.settings import Settings, reject_inline_password
from tasks.migrations.reset import check_confirmation, non_production_reason, reset_database
from tasks.migrations.runner import RunOptions, apply_migration, discover_migrations


@task(name="reset-database", cache_policy=NO_CACHE)
def drop_and_recreate(
    database_url: str | None, confirm: str | None, migrations: str | None
) -> dict[str, Any]:
    logger = get_run_logger()
    info = Settings.load(database_url).connection()
    reason = non_production_reason(info.dbname)
    check_confirmation(info.dbname, confirm)
    found = discover_migrations(migrations) if migrations else []  # checked before the drop
    logger.warning("Resetting %s (non-production: %s)", info.redacted(), reason)
    owner = reset_database(info)
    applied = []
    for migration in found:
        applied.append(
            apply_migration(info, migration, str(flow_run.id or "reset"), RunOptions()).id
        )
        logger.info("Applied %s", migration.id)
    return {
        "database": info.dbname,
        "target": info.redacted(),
        "owner": owner,
        "non_production": reason,
        "applied": applied,
    }


@flow(name="reset-database")
def reset_database_flow(
    database_url: Annotated[
        str | None,
        Field(description="secret://BLOCK or a URL without password; default DATABASE_URL"),
    ] = None,
    confirm: Annotated[
        str | None,
        Field(description="the database's name, to confirm that every object and row goes"),
    ] = None,
    migrations: Annotated[
        str | None, Field(description="apply this directory's migrations after the reset")
    ] = None,
) -> dict[str, Any]:
    """Drop and recreate a non-production database (DEV ONLY), after confirmation.

    Args:
        database_url: secret://BLOCK or a URL without password; default DATABASE_URL.
        confirm: the database's name, to confirm that every object and row in it goes.
        migrations: apply this directory's migrations to the recreated database.
    """
    reject_inline_password(database_url, "database_url")
    return drop_and_recreate(database_url, confirm, migrations)

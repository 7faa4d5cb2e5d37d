"""rehearse-migration: the pending migrations applied to a restored copy of production, each
statement observed and rated; production is never touched.

The newest verified backup (or a given one) is restored into a scratch database
on the scratch server (VERIFY_DATABASE_URL when set), the migrations run there
through the same runner with the same timeouts and checks as production, and
the report says per statement which locks it took for how long, whether it
rewrote or scanned a table, and what squawk's lint says, rated green, amber or
red. The run Fails when a migration fails or a statement is red, with the
reasons in its state message, so CD can refuse the production migration. The
scratch database is dropped whatever happens, cancel included.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State
from pydantic import Field

from tasks.core.errors import ParameterError
from tasks.core.parameters import (
    AgeIdentityFile,
    DatabaseUrl,
    FromServer,
    MaxLockSeconds,
    documented,
)
from tasks.core.settings import reject_inline_key, reject_inline_password
from tasks.migrations.checks import read_checks_file
from tasks.migrations.files import discover_migrations
from tasks.migrations.rehearsal import Rating, RehearsalChecks, RehearsalReport
from tasks.migrations.rehearsal_report import publish_rehearsal, verdict
from tasks.migrations.runner import RunOptions
from tasks.migrations.tasks import drop_rehearsal_copy, rehearse_on_copy, restore_rehearsal_copy
from tasks.operations.outcomes import outcome_hooks
from tasks.storage.destinations import S3Options


@flow(name="rehearse-migration", **outcome_hooks("rehearsal"))
@documented
def rehearse_migration(
    database_url: DatabaseUrl = None,
    migrations: Annotated[
        str | None,
        Field(description="directory of migrations for the built-in runner; or command"),
    ] = None,
    command: Annotated[
        str | None,
        Field(description="another tool's migration command, run against the copy"),
    ] = None,
    source: Annotated[
        str,
        Field(description="`latest` (the newest verified backup) or a backup id or path"),
    ] = "latest",
    backup_url: Annotated[
        str | None, Field(description="where the backups are; default BACKUP_URL")
    ] = None,
    verify_database_url: Annotated[
        str | None,
        Field(
            description="server for the scratch copy (secret://BLOCK or no password); default "
            "VERIFY_DATABASE_URL, else the DATABASE_URL server"
        ),
    ] = None,
    max_lock_seconds: MaxLockSeconds = 5,
    workdir: Annotated[
        str | None, Field(description="directory the migration and verify commands run in")
    ] = None,
    verify_sql: Annotated[
        str | None, Field(description="file of SQL checks run on the copy afterwards")
    ] = None,
    verify_command: Annotated[
        str | None, Field(description="command run against the copy afterwards; must exit 0")
    ] = None,
    builtin_checks: Annotated[
        bool, Field(description="fail on new invalid indexes or NOT VALID constraints")
    ] = True,
    lock_timeout_seconds: Annotated[
        float, Field(gt=0, le=600, description="lock_timeout of every migration statement")
    ] = 5,
    statement_timeout_seconds: Annotated[
        float, Field(ge=0, description="statement_timeout of migration statements; 0: none")
    ] = 1800,
    command_timeout_seconds: Annotated[
        float, Field(gt=0, description="kill the migration or verify command after this long")
    ] = 3600,
    s3: Annotated[S3Options | None, Field(description="S3 options; default from AWS_*")] = None,
    from_server: FromServer = None,
    identity: AgeIdentityFile = None,
) -> RehearsalReport | State:
    """Rehearse the pending migrations on a restored copy; Failed when one fails or a statement
    holds a blocking lock longer than max_lock_seconds. Production is never touched."""
    reject_inline_password(database_url, "database_url")
    reject_inline_password(verify_database_url, "verify_database_url")
    reject_inline_key(identity)
    if (migrations is None) == (command is None):
        raise ParameterError(
            "migrations",
            "or command: give one, not both and not neither: migrations is a directory of SQL "
            "migrations, command another tool's, e.g. 'alembic upgrade head'",
        )
    if migrations is not None:
        discover_migrations(migrations)  # a missing or malformed directory: before the restore
    logger = get_run_logger()
    checks = RehearsalChecks(
        builtin=builtin_checks,
        sql=read_checks_file(verify_sql) if verify_sql else None,
        sql_source=verify_sql or "",
        command=verify_command,
        workdir=workdir,
        timeout_seconds=command_timeout_seconds,
    )
    options = RunOptions(
        lock_timeout_seconds=lock_timeout_seconds,
        statement_timeout_seconds=statement_timeout_seconds,
        lock_retries=0,  # nobody else is in the copy: a lock timeout there is a finding
    )
    copy = restore_rehearsal_copy(
        database_url, verify_database_url, backup_url, s3, source, from_server, identity
    )
    try:
        report = rehearse_on_copy(
            database_url,
            verify_database_url,
            copy,
            migrations,
            command,
            checks,
            options,
            max_lock_seconds,
        )
    finally:  # a failure, a cancel's SIGTERM or Ctrl-C: the copy goes either way
        drop_rehearsal_copy(database_url, verify_database_url, copy.name)
    report.scratch_dropped = True
    publish_rehearsal(report)
    message = verdict(report)
    logger.info(message)
    if report.rating is Rating.RED:
        return Failed(message=message, data=report)
    return Completed(message=message, data=report)

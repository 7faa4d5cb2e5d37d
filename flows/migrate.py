"""migrate-database: lock, plan, back up, migrate, verify; restore the backup when something
that was applied fails.

The guide's production sequence (back up, migrate, verify, restore the backup if
something is wrong) as one flow that CD triggers through the Prefect API and
that answers with its final state: Completed only when the migration is applied
and verified; Failed otherwise, Cancelled when cancelled, with a message saying
what was applied, whether the database was restored, and the backup.

With recipients (`encrypt_to`, DBOPS_AGE_RECIPIENTS) the pre-migration backup is encrypted
like every other backup, and the run first checks that its `identity` (DBOPS_AGE_IDENTITY)
opens it: a rollback must decrypt it, so without such a key nothing is backed up or migrated.

With `require_rehearsal`, the migrations are first rehearsed on a copy restored from the
newest verified backup (flows/rehearse.py); a failed or red rehearsal refuses the run before
anything of production is locked, backed up or changed.

The whole run holds the migration lock and the database's dbops slot, so no
backup, restore or maintenance job of the database runs beside it. The backup is
restored only when something of this run committed: a failure before that (a
lock never granted, the first migration failing) loses no write.
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.exceptions import TerminationSignal
from prefect.runtime import flow_run
from prefect.states import Cancelled, State
from pydantic import Field

from flows.rehearse import rehearse_migration
from tasks.application.commands import AppHooksParameter, ApplicationHooks
from tasks.application.hooks import APPLICATION_HOOKS, merged
from tasks.backup.encryption import parse_recipients
from tasks.core.errors import DbopsError, ParameterError, first_line
from tasks.core.parameters import (
    AgeIdentityFile,
    AgeRecipientList,
    DatabaseUrl,
    MaxLockSeconds,
    SlotWait,
    documented,
)
from tasks.core.settings import reject_inline_key, reject_inline_password
from tasks.migrations.checks import read_checks_file
from tasks.migrations.ending import Ending, decide, ending_message, seen_progress
from tasks.migrations.lock import exclusive_migration
from tasks.migrations.outcomes import DatabaseState, MigrationStatus, MigrationSummary
from tasks.migrations.report import publish_plan, publish_report
from tasks.migrations.runner import RunOptions
from tasks.migrations.tasks import (
    apply_one,
    check_rollback_key,
    migration_command,
    plan_migrations,
    pre_migration_backup,
    read_progress,
    repair_history,
    restore_pre_migration_backup,
    verify_schema,
)
from tasks.operations.outcomes import migration_finished, outcome_hooks
from tasks.storage.destinations import S3Options

Interrupted = (TerminationSignal, KeyboardInterrupt)  # a cancel's SIGTERM, Ctrl-C


@flow(
    name="migrate-database",
    **merged(APPLICATION_HOOKS, outcome_hooks("migration", notify=False)),
)
@documented
def migrate_database(
    database_url: DatabaseUrl = None,
    backup_url: Annotated[
        str | None,
        Field(
            description="where the pre-migration backup goes: s3://bucket/prefix or a "
            "directory; default BACKUP_URL"
        ),
    ] = None,
    migrations: Annotated[
        str | None,
        Field(
            description="directory of NNNN_name.sql files or Prisma "
            "<timestamp>_<name>/migration.sql folders, for the built-in runner; give this or "
            "command"
        ),
    ] = None,
    command: Annotated[
        str | None,
        Field(
            description="another tool's migration command, e.g. `alembic upgrade head` or "
            "`npx prisma migrate deploy`; it gets DATABASE_URL in its environment"
        ),
    ] = None,
    workdir: Annotated[
        str | None,
        Field(
            description="directory the migration and verify commands run in; default the worker's"
        ),
    ] = None,
    verify_sql: Annotated[
        str | None,
        Field(
            description="file of SQL checks run after the migration; each must return true or "
            "no rows"
        ),
    ] = None,
    verify_command: Annotated[
        str | None, Field(description="command run after the migration; it must exit 0")
    ] = None,
    builtin_checks: Annotated[
        bool, Field(description="fail on new invalid indexes or NOT VALID constraints")
    ] = True,
    dry_run: Annotated[
        bool,
        Field(description="only list the pending migrations and publish the plan; change nothing"),
    ] = False,
    target_version: Annotated[
        str | None,
        Field(
            description="version label of the pre-migration backup; default the last pending "
            "migration"
        ),
    ] = None,
    lock_wait_seconds: Annotated[
        float,
        Field(
            ge=0,
            le=3600,
            description="how long to wait for another migrator's lock before giving up",
        ),
    ] = 60,
    lock_timeout_seconds: Annotated[
        float, Field(gt=0, le=600, description="lock_timeout of every migration statement")
    ] = 5,
    lock_retries: Annotated[
        int,
        Field(
            ge=0,
            le=20,
            description="retries, with doubling backoff, after a lock timeout or deadlock",
        ),
    ] = 5,
    retry_delay_seconds: Annotated[
        float, Field(ge=0, le=300, description="the first backoff after a lock timeout")
    ] = 1,
    statement_timeout_seconds: Annotated[
        float,
        Field(ge=0, description="statement_timeout of migration statements; 0 means none"),
    ] = 1800,
    command_timeout_seconds: Annotated[
        float, Field(gt=0, description="kill the migration or verify command after this long")
    ] = 3600,
    compression: Annotated[
        Literal["gzip", "zstd", "none"],
        Field(description="compression of the pre-migration backup"),
    ] = "gzip",
    s3: Annotated[
        S3Options | None,
        Field(description="S3 options for backup_url; default from AWS_* and DBOPS_S3_*"),
    ] = None,
    slot_wait_seconds: SlotWait = 3600,
    repair: Annotated[
        bool,
        Field(
            description="only remove the records of migrations that started outside a "
            "transaction and never finished, after you checked the database; migrate nothing"
        ),
    ] = False,
    application: AppHooksParameter = None,
    require_rehearsal: Annotated[
        bool,
        Field(
            description="first rehearse on a copy restored from the newest verified backup "
            "(rehearse-migration); refuse to migrate when the rehearsal fails or a statement "
            "holds a blocking lock longer than max_lock_seconds"
        ),
    ] = False,
    max_lock_seconds: MaxLockSeconds = 5,
    encrypt_to: AgeRecipientList = None,
    identity: AgeIdentityFile = None,
) -> MigrationSummary | State:
    """Back up, migrate, verify; restore the backup if something applied fails. Completed only
    when the migration is applied and verified."""
    reject_inline_password(database_url, "database_url")
    reject_inline_key(identity)
    parse_recipients(encrypt_to or [])  # a malformed key is refused before anything is done
    if application is not None:
        application.check_restore()  # stopped and started around a rollback's swap only
    if repair and (command is not None or dry_run):
        raise ParameterError(
            "repair",
            "clears the built-in runner's unfinished records and changes nothing else: not with "
            "command (use the tool's own repair, e.g. `prisma migrate resolve`) nor dry_run",
            ("command", "dry_run"),
        )
    if not repair and (migrations is None) == (command is None):
        raise ParameterError(
            "migrations",
            "or command: give one, not both and not neither: migrations is a directory of SQL "
            "migrations, command another tool's, e.g. 'alembic upgrade head'",
        )
    logger = get_run_logger()
    started = time.perf_counter()
    checks_sql = read_checks_file(verify_sql) if verify_sql else None
    options = RunOptions(
        lock_timeout_seconds=lock_timeout_seconds,
        statement_timeout_seconds=statement_timeout_seconds,
        lock_retries=lock_retries,
        retry_delay_seconds=retry_delay_seconds,
    )
    if dry_run:
        plan, _ = plan_migrations(database_url, migrations, command, target_version)
        publish_plan(plan)
        return MigrationSummary.of(plan, MigrationStatus.PLANNED)
    if not repair:  # the rollback must be able to decrypt the backup: proven before anything
        check_rollback_key(encrypt_to, identity)

    if require_rehearsal and not repair:
        rehearsal = rehearse_migration(
            database_url=database_url,
            migrations=migrations,
            command=command,
            backup_url=backup_url,
            max_lock_seconds=max_lock_seconds,
            workdir=workdir,
            verify_sql=verify_sql,
            verify_command=verify_command,
            builtin_checks=builtin_checks,
            lock_timeout_seconds=lock_timeout_seconds,
            statement_timeout_seconds=statement_timeout_seconds,
            command_timeout_seconds=command_timeout_seconds,
            s3=s3,
            identity=identity,
            return_state=True,
        )
        if not rehearsal.is_completed():
            raise DbopsError(f"not migrated: {_refusal(rehearsal)}")
        logger.info("%s", rehearsal.message)

    run_id = str(flow_run.id or "local")
    summary: MigrationSummary | None = None
    try:
        with exclusive_migration(
            database_url, lock_wait_seconds, slot_wait_seconds, owner=run_id, log=logger.info
        ) as lock:
            logger.info(
                "Holding the migration lock and the dbops slot of %s (waited %.1f s)",
                lock.database,
                lock.waited_seconds,
            )
            if repair:
                summary = repair_history(database_url, migrations)
                publish_report(summary)
                return summary
            plan, baseline = plan_migrations(database_url, migrations, command, target_version)
            publish_plan(plan)
            summary = MigrationSummary.of(plan, MigrationStatus.APPLIED)
            verify_args = (
                database_url,
                checks_sql,
                verify_sql or "",
                verify_command,
                workdir,
                baseline,
                builtin_checks,
                command_timeout_seconds,
            )
            if plan.mode == "directory" and not plan.pending:
                summary.status = MigrationStatus.UP_TO_DATE
                try:
                    summary.checks = verify_schema(*verify_args)
                except DbopsError as exc:
                    raise DbopsError(
                        f"nothing to migrate, but {exc}; nothing was changed"
                    ) from None
                summary.seconds = round(time.perf_counter() - started, 3)
                publish_report(summary)
                return summary

            try:
                summary.backup = pre_migration_backup(
                    database_url,
                    backup_url,
                    s3,
                    compression,
                    plan.target_version,
                    encrypt_to,
                    identity,
                )
                if plan.mode == "directory":
                    summary.applied = []  # filled one by one: a failure reports what got through
                    for migration in plan.pending:
                        summary.applied.append(apply_one(database_url, migration, run_id, options))
                else:
                    assert command is not None
                    summary.command = migration_command(
                        database_url, command, workdir, command_timeout_seconds
                    )
                summary.checks = verify_schema(*verify_args)
            except Exception as exc:
                end = _settle(summary, exc, database_url, backup_url, s3, application, identity)
                raise DbopsError(ending_message(end)) from None
    except Interrupted as signal:
        if summary is None:
            raise  # nothing was touched yet: Prefect's own cancelled/crashed state says so
        end = _settle(summary, signal, database_url, backup_url, s3, application, identity)
        return Cancelled(message=ending_message(end))
    summary.seconds = round(time.perf_counter() - started, 3)
    publish_report(summary)
    migration_finished(summary, database_url)
    logger.info("Migration of %s applied and verified", plan.database)
    return summary


def _refusal(rehearsal: State) -> str:
    """Why the rehearsal refused: its verdict, or the error that stopped it."""
    outcome = rehearsal.result(raise_on_failure=False)
    if isinstance(outcome, BaseException):
        return f"the rehearsal failed: {first_line(outcome)}"
    return (rehearsal.message or rehearsal.name or "the rehearsal did not complete").strip()


def _settle(
    summary: MigrationSummary,
    failure: BaseException,
    database_url: str | None,
    backup_url: str | None,
    s3: S3Options | None,
    application: ApplicationHooks | None = None,
    identity: str | None = None,
) -> Ending:
    """Decide from what this run committed whether to restore the backup; restore if so;
    record the outcome in the summary and its report."""
    plan = summary.plan
    cancelled = isinstance(failure, Interrupted)
    applied = [a.id for a in summary.applied or []]
    recorded = None
    if summary.backup and plan.mode == "directory":
        recorded = read_progress(database_url, plan)  # None when the history cannot be read
    progress = recorded if recorded is not None else seen_progress(applied, failure)
    decision = decide(plan, progress, failure, cancelled)
    state, error, app_error = decision.state, None, None
    if decision.restore and summary.backup is not None:
        outcome = restore_pre_migration_backup(
            database_url, backup_url, s3, summary.backup, application, identity
        )
        if not outcome.restored:
            state, error = DatabaseState.ROLLBACK_FAILED, outcome.error
        summary.undone = list(decision.undone)
        summary.application, app_error = outcome.application, outcome.application_error
    end = Ending(
        database=plan.database,
        state=state if summary.backup else DatabaseState.UNCHANGED,
        backup=summary.backup,
        reason=None if cancelled else first_line(failure),
        progress=progress,
        undone=decision.undone,
        pending=tuple(m.id for m in plan.pending),
        rollback_error=error,
        application_error=app_error,
    )
    summary.status = MigrationStatus.CANCELLED if cancelled else MigrationStatus.FAILED
    summary.database_state, summary.error = end.state, ending_message(end)
    publish_report(summary)
    migration_finished(summary, database_url)
    return end

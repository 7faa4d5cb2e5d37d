"""The migration's Prefect tasks: plan, pre-migration backup, apply, verify, restore the backup,
read what a run left in the history, repair; and the dev reset.

Every task loads its settings itself from the flow's parameters, so a password
in DATABASE_URL or a Secret block never passes through Prefect. The flow, not a
hook, decides whether the backup is restored: only when something was applied.
"""

from __future__ import annotations

import psycopg
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel, Field

from tasks.application.commands import ApplicationHooks, ApplicationStartError
from tasks.application.window import ApplicationWindow
from tasks.backup.catalog import resolve_source, with_identity
from tasks.backup.compression import check_level
from tasks.backup.tasks import take_backup
from tasks.core.errors import BackupFaultError, DbopsError, SurroundingsError, first_line
from tasks.core.postgres import maintenance_conn, url_with_dbname
from tasks.core.settings import Settings
from tasks.core.slots import database_slot
from tasks.migrations.checks import (
    CheckResult,
    SchemaBaseline,
    capture_baseline,
    failure_summary,
    run_checks,
)
from tasks.migrations.command import CommandResult, run_command
from tasks.migrations.files import Migration, discover_migrations
from tasks.migrations.history import delete_unfinished, read_history
from tasks.migrations.outcomes import (
    MigrationStatus,
    MigrationSummary,
    PreMigrationBackup,
    RollbackOutcome,
    RunProgress,
)
from tasks.migrations.plan import MigrationPlan, build_plan
from tasks.migrations.rehearsal import (
    RehearsalChecks,
    RehearsalReport,
    rehearse_command,
    rehearse_migration,
)
from tasks.migrations.reset import (
    ResetResult,
    check_confirmation,
    non_production_reason,
    reset_database,
)
from tasks.migrations.rollback_key import pre_migration_encryption
from tasks.migrations.runner import AppliedResult, RunOptions, apply_migration
from tasks.restore.readback import read_back_dump
from tasks.restore.restore import run_restore
from tasks.restore.restore_test import provide_roles
from tasks.restore.swap import drop, helper_name
from tasks.storage.destinations import S3Options


@task(name="plan-migrations", cache_policy=NO_CACHE)
def plan_migrations(
    database_url: str | None,
    migrations: str | None,
    command: str | None,
    target_version: str | None,
) -> tuple[MigrationPlan, SchemaBaseline]:
    """Pending migrations (refusing checksum drift), and what was already broken before."""
    logger = get_run_logger()
    info = Settings.load(database_url).connection()
    plan = build_plan(info, migrations, command, target_version)
    if plan.mode == "directory":
        if plan.applied_by_prisma:
            logger.info(
                "Already applied by Prisma (_prisma_migrations): %s",
                ", ".join(plan.applied_by_prisma),
            )
        for migration_id in plan.out_of_order:
            logger.warning("%s is numbered below an applied migration (out of order)", migration_id)
        logger.info(
            "%s: %d applied, %d pending: %s",
            info.dbname,
            len(plan.applied),
            len(plan.pending),
            ", ".join(m.id for m in plan.pending) or "none",
        )
    return plan, capture_baseline(info)


@task(name="check-rollback-key", cache_policy=NO_CACHE)
def check_rollback_key(encrypt_to: list[str] | None, identity: str | None) -> list[str]:
    """Before anything is locked or backed up: when the pre-migration backup will be encrypted,
    the identity that opens it (the rollback decrypts it). Its recipients' fingerprints."""
    settings = Settings.from_env()
    recipients, key = pre_migration_encryption(
        encrypt_to, identity, settings.age_recipients, settings.age_identity
    )
    if recipients is None or key is None:
        get_run_logger().info("The pre-migration backup will not be encrypted (no recipients)")
        return []
    get_run_logger().info(
        "The pre-migration backup will be encrypted with age to %s; the identity %s opens it, "
        "so a rollback can decrypt it",
        ", ".join(recipients.fingerprints),
        key.source,
    )
    return recipients.fingerprints


@task(name="pre-migration-backup", cache_policy=NO_CACHE)
def pre_migration_backup(
    database_url: str | None,
    backup_url: str | None,
    s3: S3Options | None,
    compression: str,
    target_version: str,
    encrypt_to: list[str] | None = None,
    identity: str | None = None,
) -> PreMigrationBackup:
    """Back up through the one backup path (encrypted to the recipients a normal backup has),
    then read it back, decrypted with the rollback's identity: no backup, no migration."""
    logger = get_run_logger()
    settings = Settings.load(database_url, backup_url, s3)
    recipients, key = pre_migration_encryption(
        encrypt_to, identity, settings.age_recipients, settings.age_identity
    )
    destination = settings.destination()
    logger.info(
        "Pre-migration backup of %s to %s", settings.connection().redacted(), destination.url
    )
    manifest = take_backup(
        settings,
        format="plain",
        compression=compression,
        level=check_level(compression, None),
        labels=["pre-migration", f"target:{target_version}"],
        recipients=recipients,
    )
    url = destination.url_for(manifest.dump.name)
    try:
        read = read_back_dump(destination, manifest, key)
    except BackupFaultError as exc:
        raise BackupFaultError(
            f"the pre-migration backup {url} does not read back as written ({exc}); nothing "
            "was migrated: check the backup storage",
            exc.check,
        ) from None
    logger.info(
        "Backup %s verified readable: %d bytes, sha256 %s, %d tables",
        manifest.backup_id,
        read.raw_bytes,
        manifest.dump.sha256,
        len(manifest.row_counts),
    )
    backup = PreMigrationBackup(backup_id=manifest.backup_id, url=url, sha256=manifest.dump.sha256)
    return backup


@task(name="restore-pre-migration-backup", cache_policy=NO_CACHE)
def restore_pre_migration_backup(
    database_url: str | None,
    backup_url: str | None,
    s3: S3Options | None,
    backup: PreMigrationBackup,
    application: ApplicationHooks | None = None,
    identity: str | None = None,
) -> RollbackOutcome:
    """Put the database back as it was before the run; a failure is the outcome, not raised.
    The application is stopped for the swap (or the whole restore) and started again. An
    encrypted backup is decrypted with `identity` (a file or secret://BLOCK; default
    DBOPS_AGE_IDENTITY)."""
    logger = get_run_logger()
    logger.warning("Rolling back: restoring pre-migration backup %s", backup.backup_id)
    window = None
    try:
        settings = Settings.load(database_url, backup_url, s3)
        target = settings.connection()
        window = ApplicationWindow(application, logger.info, logger.warning, [target.password])
        source = resolve_source(backup.backup_id, settings.backup_url, settings.s3)
        source = with_identity(source, identity or settings.age_identity)
        with window.around_restore():
            result = run_restore(source, target, clean=True, around_swap=window.around_swap())
    except ApplicationStartError as exc:  # the application is down: the flow says so loudly
        restored = window is not None and window.body_done
        return RollbackOutcome(
            restored=restored,
            backup=backup,
            error=None if restored else first_line(exc),
            application_error=str(exc),
        )
    except Exception as exc:  # noqa: BLE001 - reported loudly by the flow
        logger.critical(
            "ROLLBACK FAILED: restoring %s did not work (%s); the database may be half "
            "migrated; the backup is at %s",
            backup.backup_id,
            exc,
            backup.url,
        )
        return RollbackOutcome(restored=False, backup=backup, error=first_line(exc))
    logger.warning(
        "Restored %s from %s (%d tables, checksum verified: %s)",
        result.target,
        backup.url,
        result.tables,
        result.checksum_verified,
    )
    return RollbackOutcome(
        restored=True, backup=backup, seconds=result.seconds, application=window.report
    )


@task(name="read-migration-progress", cache_policy=NO_CACHE)
def read_progress(database_url: str | None, plan: MigrationPlan) -> RunProgress | None:
    """What this run's pending migrations left in the history table; None if unreadable."""
    pending = {m.id for m in plan.pending}
    try:
        with Settings.load(database_url).connection().connect() as conn:
            rows = [row for row in read_history(conn) if row.id in pending]
    except Exception as exc:  # noqa: BLE001 - the flow falls back to what it saw itself
        get_run_logger().warning("cannot read the migration history: %s", first_line(exc))
        return None
    return RunProgress(
        applied=[row.id for row in rows if row.finished_at is not None],
        unfinished=[row.id for row in rows if row.finished_at is None],
    )


@task(name="repair-migration-history", cache_policy=NO_CACHE)
def repair_history(database_url: str | None, migrations: str | None) -> MigrationSummary:
    """Remove the records of migrations that started and never finished; nothing else."""
    logger = get_run_logger()
    info = Settings.load(database_url).connection()
    with info.connect() as conn:
        removed = delete_unfinished(conn)
    for row in removed:
        logger.warning(
            "Removed the unfinished record of %s (started %s by run %s)",
            row.id,
            row.started_at,
            row.applied_by,
        )
    if not removed:
        logger.info("No unfinished migration recorded; nothing to repair")
    plan = MigrationPlan(
        database=info.dbname, mode="directory", migrations=migrations, target_version="current"
    )
    summary = MigrationSummary.of(plan, MigrationStatus.REPAIRED)
    summary.repaired = [row.id for row in removed]
    return summary


@task(name="apply-migration", task_run_name="apply-{migration.id}", cache_policy=NO_CACHE)
def apply_one(
    database_url: str | None, migration: Migration, applied_by: str, options: RunOptions
) -> AppliedResult:
    logger = get_run_logger()
    info = Settings.load(database_url).connection()
    mode = "in a transaction" if migration.transactional else "outside a transaction"
    logger.info("Applying %s (%d statements, %s)", migration.id, migration.statements, mode)
    result = apply_migration(info, migration, applied_by, options, log=logger.info)
    logger.info("Applied %s in %.2f s", migration.id, result.seconds)
    return result


@task(name="run-migration-command", cache_policy=NO_CACHE)
def migration_command(
    database_url: str | None, command: str, workdir: str | None, timeout_seconds: float
) -> CommandResult:
    logger = get_run_logger()
    settings = Settings.load(database_url)
    logger.info("Running %r with DATABASE_URL for %s", command, settings.connection().redacted())
    return run_command(command, settings, workdir, timeout_seconds, logger.info)


@task(name="verify-schema", cache_policy=NO_CACHE)
def verify_schema(
    database_url: str | None,
    checks_sql: str | None,
    checks_source: str,
    verify_command: str | None,
    workdir: str | None,
    baseline: SchemaBaseline,
    builtin: bool,
    timeout_seconds: float,
) -> list[CheckResult]:
    """Every check runs (so the report lists them all); any failure fails the task."""
    logger = get_run_logger()
    settings = Settings.load(database_url)
    results = run_checks(
        settings,
        baseline,
        builtin,
        checks_sql,
        checks_source,
        verify_command,
        workdir,
        timeout_seconds,
        logger.info,
    )
    for result in results:
        logger.info("%s %s %s", "PASS" if result.ok else "FAIL", result.name, result.detail)
    summary = failure_summary(results)
    if summary:
        raise DbopsError(summary)
    return results


@task(name="drop-and-recreate-database", cache_policy=NO_CACHE)
def drop_and_recreate(
    database_url: str | None,
    confirm: str | None,
    migrations: str | None,
    slot_wait_seconds: float = 3600,
) -> ResetResult:
    """Refuse production and unconfirmed targets, then reset and apply the migrations."""
    logger = get_run_logger()
    info = Settings.load(database_url).connection()
    reason = non_production_reason(info.dbname)
    check_confirmation(info.dbname, confirm)
    found = discover_migrations(migrations) if migrations else []  # checked before the drop
    applied = []
    with database_slot(info, slot_wait_seconds):  # never beside a backup or migration of it
        logger.warning("Resetting %s (non-production: %s)", info.redacted(), reason)
        owner = reset_database(info)
        for migration in found:
            applied.append(
                apply_migration(info, migration, str(flow_run.id or "reset"), RunOptions()).id
            )
            logger.info("Applied %s", migration.id)
    return ResetResult(
        database=info.dbname,
        target=info.redacted(),
        owner=owner,
        non_production=reason,
        applied=applied,
    )


class RehearsalCopy(BaseModel):
    """The scratch copy a rehearsal runs in (its password stays in the settings)."""

    database: str = Field(description="the production database it is a copy of")
    name: str = Field(description="the scratch database")
    server: str = Field(description="the scratch database's URL, without password")
    backup_id: str
    backup_url: str
    restore_seconds: float


@task(name="restore-rehearsal-copy", cache_policy=NO_CACHE)
def restore_rehearsal_copy(
    database_url: str | None,
    verify_database_url: str | None,
    backup_url: str | None,
    s3: S3Options | None,
    source: str,
    from_server: str | None,
    identity: str | None,
) -> RehearsalCopy:
    """The newest verified backup (or `source`) restored into a new scratch database on the
    scratch server. Production is only read (which server it is), never written."""
    logger = get_run_logger()
    settings = Settings.load(database_url, backup_url, s3, verify_database_url)
    home, server = settings.connection(), settings.scratch_server()
    backup = resolve_source(
        source,
        settings.backup_url,
        settings.s3,
        home.dbname,
        from_server=from_server,
        home=home,
        verified_only=source == "latest",
    )
    backup = with_identity(backup, identity or settings.age_identity)
    if backup.manifest is None:
        raise DbopsError(
            f"{backup.url} has no dbops manifest; rehearse on a dbops backup (its checksum and "
            "row counts are checked on the way in)"
        )
    scratch = server.with_dbname(helper_name(home.dbname, "rehearse"))
    logger.info("Restoring %s into %s for the rehearsal", backup.url, scratch.redacted())
    with maintenance_conn(scratch) as admin:
        provide_roles(admin, backup.manifest.roles, server)
    result = run_restore(backup, scratch)  # creates it; on any failure drops what it made
    return RehearsalCopy(
        database=home.dbname,
        name=scratch.dbname,
        server=scratch.redacted(),
        backup_id=backup.manifest.backup_id,
        backup_url=backup.url,
        restore_seconds=round(result.seconds, 3),
    )


@task(name="rehearse-migrations", cache_policy=NO_CACHE)
def rehearse_on_copy(
    database_url: str | None,
    verify_database_url: str | None,
    copy: RehearsalCopy,
    migrations: str | None,
    command: str | None,
    checks: RehearsalChecks,
    options: RunOptions,
    max_lock_seconds: float,
) -> RehearsalReport:
    """Apply the pending migrations to the copy as production would, every statement observed,
    then the same checks; nothing here connects to production except to read its plan."""
    logger = get_run_logger()
    settings = Settings.load(database_url, None, None, verify_database_url)
    server_url = settings.verify_database_url or settings.require_database_url()
    on_copy = settings.model_copy(update={"database_url": url_with_dbname(server_url, copy.name)})
    scratch = on_copy.connection()
    report = RehearsalReport(
        database=copy.database,
        backup_id=copy.backup_id,
        backup_url=copy.backup_url,
        scratch=copy.server,
        restore_seconds=copy.restore_seconds,
        max_lock_seconds=max_lock_seconds,
        mode="command" if command else "directory",
    )
    baseline = capture_baseline(scratch)
    if command:
        report.migrations.append(
            rehearse_command(
                on_copy, command, checks.workdir, checks.timeout_seconds, max_lock_seconds,
                logger.info,
            )
        )  # fmt: skip
    else:
        assert migrations is not None
        plan = build_plan(scratch, migrations, None, None)
        production = build_plan(settings.connection(), migrations, None, None)  # read only
        if [m.id for m in production.pending] != [m.id for m in plan.pending]:
            report.notes.append(
                f"production has {len(production.pending)} pending "
                f"({', '.join(m.id for m in production.pending) or 'none'}), the copy of "
                f"{copy.backup_id} {len(plan.pending)}: back up and verify again for a copy "
                "as production is now"
            )
        with scratch.connect() as conn:
            major = conn.info.server_version // 10000
        failed = False
        for migration in plan.pending:
            logger.info("Rehearsing %s on %s", migration.id, copy.server)
            rehearsed = rehearse_migration(
                scratch, migration, options, max_lock_seconds, major, logger.info, not failed
            )
            failed = failed or rehearsed.error is not None
            report.migrations.append(rehearsed)
    if not any(m.error for m in report.migrations):
        report.checks = run_checks(
            on_copy,
            baseline,
            checks.builtin,
            checks.sql,
            checks.sql_source,
            checks.command,
            checks.workdir,
            checks.timeout_seconds,
            logger.info,
        )
    report.conclude()
    return report


@task(name="drop-rehearsal-copy", cache_policy=NO_CACHE)
def drop_rehearsal_copy(
    database_url: str | None, verify_database_url: str | None, name: str
) -> None:
    """Drop the scratch copy (forcing its sessions out); a failure says how to clean up."""
    server = Settings.load(database_url, None, None, verify_database_url).scratch_server()
    try:
        with maintenance_conn(server.with_dbname(name)) as admin:
            drop(admin, name)
    except (psycopg.Error, DbopsError) as exc:
        raise SurroundingsError(
            f"could not drop the rehearsal's scratch database {name!r} ({first_line(exc)}); "
            "drop it by hand or with `dbops cleanup --yes`"
        ) from None
    get_run_logger().info("Dropped the rehearsal copy %s", name)

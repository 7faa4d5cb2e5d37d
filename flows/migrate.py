"""migrate-database: lock, plan, back up, migrate, verify; restore the backup when anything fails.

The guide's production sequence (back up, migrate, verify, restore the backup if
something is wrong) as one flow that CD triggers through the Prefect API and
that answers with its final state: Completed only when the migration is applied
and verified; Failed otherwise, with a message saying whether the database was
restored and from which backup.

Backup, migration and verification run inside one Prefect transaction; the
backup task's rollback hook restores the backup it made, so any failure after
the backup (a migration error, a lock timeout, a failed check) puts the database
back as it was before the run.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from prefect.transactions import Transaction, get_transaction, transaction
from pydantic import Field

from tasks.backup.catalog import resolve_source
from tasks.backup.pipeline import BackupRequest, run_backup
from tasks.core.artifacts import artifact_key
from tasks.core.errors import DbopsError
from tasks.core.postgres import ConnInfo
from tasks.core.settings import Settings, reject_inline_password
from tasks.migrations.checks import (
    CheckResult,
    SchemaBaseline,
    builtin_checks,
    capture_baseline,
    failure_summary,
    read_checks_file,
    sql_checks,
)
from tasks.migrations.lock import migration_lock_for
from tasks.migrations.runner import (
    AppliedResult,
    CommandResult,
    Migration,
    MigrationPlan,
    RunOptions,
    apply_migration,
    check_backup_readable,
    command_argv,
    discover_migrations,
    plan_directory,
    read_history,
    read_prisma_history,
    run_command,
)
from tasks.restore.restore import run_restore
from tasks.storage.destinations import S3Options


def _target(database_url: str | None) -> tuple[str, ConnInfo]:
    """The real URL (with its password) and its parsed form; only tasks call this."""
    url = Settings.load(database_url).require_database_url()
    return url, ConnInfo.parse(url)


@task(name="plan-migrations", cache_policy=NO_CACHE)
def plan_migrations(
    database_url: str | None,
    migrations: str | None,
    command: str | None,
    target_version: str | None,
) -> tuple[MigrationPlan, SchemaBaseline]:
    """Pending migrations (refusing checksum drift), and what was already broken before."""
    logger = get_run_logger()
    _, info = _target(database_url)
    if command is not None:
        command_argv(command)  # a malformed command is refused before the backup
        plan = MigrationPlan(
            database=info.dbname,
            mode="command",
            command=command,
            target_version=target_version or "external",
        )
    else:
        assert migrations is not None
        found = discover_migrations(migrations)
        with info.connect() as conn:
            history = read_history(conn)
            prisma = read_prisma_history(conn, info.app_params.get("schema") or "public")
        pending, out_of_order, by_prisma = plan_directory(
            found, history, f"{info.dbname}.dbops_schema_history", prisma
        )
        plan = MigrationPlan(
            database=info.dbname,
            mode="directory",
            migrations=migrations,
            applied=[row.id for row in history],
            applied_by_prisma=by_prisma,
            pending=pending,
            out_of_order=out_of_order,
            target_version=target_version or (pending[-1].id if pending else "current"),
        )
        if by_prisma:
            logger.info("Already applied by Prisma (_prisma_migrations): %s", ", ".join(by_prisma))
        for migration_id in out_of_order:
            logger.warning("%s is numbered below an applied migration (out of order)", migration_id)
        logger.info(
            "%s: %d applied, %d pending: %s",
            info.dbname,
            len(history),
            len(pending),
            ", ".join(m.id for m in pending) or "none",
        )
    return plan, capture_baseline(info)


@task(name="pre-migration-backup", cache_policy=NO_CACHE)
def pre_migration_backup(
    database_url: str | None,
    backup_url: str | None,
    s3: S3Options | None,
    compression: str,
    target_version: str,
) -> dict[str, Any]:
    """Back up through the backup pipeline, then read the backup back: no backup, no migration."""
    logger = get_run_logger()
    settings = Settings.load(database_url, backup_url, s3)
    info = settings.connection()
    destination = settings.destination()
    logger.info("Pre-migration backup of %s to %s", info.redacted(), destination.url)
    manifest = run_backup(
        BackupRequest(
            conn=info,
            destination=destination,
            compression=compression,
            level={"gzip": 6, "zstd": 3, "none": 0}[compression],
            labels=["pre-migration", f"target:{target_version}"],
        )
    )
    url = destination.url_for(manifest.dump.name)
    read = check_backup_readable(destination, manifest)
    logger.info(
        "Backup %s verified readable: %d bytes, sha256 %s, %d tables",
        manifest.backup_id,
        read,
        manifest.dump.sha256,
        len(manifest.row_counts),
    )
    backup = {"backup_id": manifest.backup_id, "url": url, "sha256": manifest.dump.sha256}
    txn = get_transaction()
    if txn is not None:  # what the rollback hook needs; never the password
        txn.set(
            "backup",
            {
                **backup,
                "database_url": database_url,
                "backup_url": backup_url,
                "s3": settings.s3.model_dump(),
            },
        )
    return backup


@pre_migration_backup.on_rollback
def restore_pre_migration_backup(txn: Transaction) -> None:
    """Put the database back as it was; record the outcome for the flow's final message."""
    stash = txn.get("backup")
    logger = get_run_logger()
    logger.warning("Rolling back: restoring pre-migration backup %s", stash["backup_id"])
    try:
        settings = Settings.load(
            stash["database_url"], stash["backup_url"], S3Options(**stash["s3"])
        )
        target = settings.connection()
        source = resolve_source(stash["backup_id"], settings.backup_url, settings.s3)
        result = run_restore(source, target, clean=True)
    except Exception as exc:  # noqa: BLE001 - reported loudly by the flow
        logger.critical(
            "ROLLBACK FAILED: restoring %s did not work (%s); the database may be half "
            "migrated; the backup is at %s",
            stash["backup_id"],
            exc,
            stash["url"],
        )
        txn.set("rollback", {"restored": False, "error": str(exc), **_public(stash)})
        return
    logger.warning(
        "Restored %s from %s (%d tables, checksum verified: %s)",
        result.target,
        stash["url"],
        result.tables,
        result.checksum_verified,
    )
    txn.set("rollback", {"restored": True, "seconds": result.seconds, **_public(stash)})


def _public(stash: dict[str, Any]) -> dict[str, Any]:
    return {k: stash[k] for k in ("backup_id", "url", "sha256", "backup_url")}


@task(name="apply-migration", task_run_name="apply-{migration.id}", cache_policy=NO_CACHE)
def apply_one(
    database_url: str | None, migration: Migration, applied_by: str, options: RunOptions
) -> AppliedResult:
    logger = get_run_logger()
    _, info = _target(database_url)
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
    url, info = _target(database_url)
    logger.info("Running %r with DATABASE_URL for %s", command, info.redacted())
    return run_command(command, info, url, workdir, timeout_seconds, logger.info)


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
    url, info = _target(database_url)
    results: list[CheckResult] = []
    if builtin:
        results += builtin_checks(info, baseline)
    if checks_sql is not None:
        results += sql_checks(info, checks_sql, checks_source)
    if verify_command:
        try:
            run_command(
                verify_command, info, url, workdir, timeout_seconds, logger.info, "verify command"
            )
            results.append(CheckResult(name=f"verify command {verify_command!r}", ok=True))
        except DbopsError as exc:
            results.append(CheckResult(name="verify command", ok=False, detail=str(exc)))
    for result in results:
        logger.info("%s %s %s", "PASS" if result.ok else "FAIL", result.name, result.detail)
    summary = failure_summary(results)
    if summary:
        raise DbopsError(summary)
    return results


def _publish_plan(plan: MigrationPlan) -> None:
    rows: list[dict[str, Any]] = [
        {
            "migration": m.id,
            "layout": m.layout,
            "statements": m.statements,
            "transaction": "yes" if m.transactional else "no (-- dbops:no-transaction)",
            "sha256": m.sha256[:16],
            "out of order": "yes" if m.id in plan.out_of_order else "",
        }
        for m in plan.pending
    ]
    if plan.mode == "command":
        rows = [{"migration": f"external command: {plan.command}"}]
    create_table_artifact(
        rows or [{"migration": "nothing pending: the database is up to date"}],
        key=artifact_key(f"migration-plan-{plan.database}"),
        description=f"Migration plan for {plan.database} (target {plan.target_version})",
    )


def _publish_report(summary: dict[str, Any]) -> None:
    lines = [
        f"# Migration of `{summary['database']}`: {summary['status']}",
        "",
        f"- mode: {summary['mode']}",
        f"- target: {summary['target_version']}",
    ]
    if summary.get("backup"):
        lines.append(
            f"- pre-migration backup: `{summary['backup']['backup_id']}` "
            f"({summary['backup']['url']})"
        )
    lines += [f"- applied: `{a['id']}` in {a['seconds']} s" for a in summary.get("applied", [])]
    if summary.get("command"):
        lines.append(f"- command: `{summary['command']['command']}` exited 0")
    lines += [
        f"- check {'passed' if c['ok'] else 'FAILED'}: {c['name']} {c['detail']}"
        for c in summary.get("checks", [])
    ]
    if summary.get("error"):
        lines += ["", f"**{summary['error']}**"]
    try:
        create_markdown_artifact(
            "\n".join(lines),
            key=artifact_key(f"migration-{summary['database']}"),
            description=f"Migration of {summary['database']}",
        )
    except Exception:  # noqa: BLE001 - a report must never hide the real outcome
        get_run_logger().warning("could not publish the migration report artifact")


def _rollback_outcome(txn: Transaction) -> dict[str, Any] | None:
    for child in txn.children:
        outcome = child.get("rollback", None)
        if outcome is not None:
            return outcome
    return None


def _failure_message(
    database: str, reason: str, backup: dict[str, Any] | None, outcome: dict[str, Any] | None
) -> str:
    if backup is None:
        return f"pre-migration backup of {database} failed, nothing was migrated: {reason}"
    where = f"{backup['backup_id']} ({backup['url']})"
    if outcome and outcome.get("restored"):
        return (
            f"migration rolled back: database {database} was restored from pre-migration backup "
            f"{where} after: {reason}"
        )
    detail = outcome["error"] if outcome else "the rollback hook did not run"
    return (
        f"ROLLBACK FAILED: migration of {database} failed ({reason}) and restoring the "
        f"pre-migration backup failed too ({detail}); the database may be half migrated: "
        f"restore it by hand with `dbops restore {backup['backup_id']} --clean` from the "
        f"backup at {backup['url']}"
    )


@flow(name="migrate-database")
def migrate_database(
    database_url: Annotated[
        str | None,
        Field(description="secret://BLOCK or a URL without password; default DATABASE_URL"),
    ] = None,
    backup_url: Annotated[
        str | None,
        Field(description="where the pre-migration backup goes: s3://... or a directory"),
    ] = None,
    migrations: Annotated[
        str | None,
        Field(
            description="directory of NNNN_name.sql files or Prisma <timestamp>_<name>/"
            "migration.sql folders (built-in runner); or give command"
        ),
    ] = None,
    command: Annotated[
        str | None,
        Field(
            description="another tool's migration command, e.g. `alembic upgrade head`; "
            "runs with DATABASE_URL in its environment"
        ),
    ] = None,
    workdir: Annotated[
        str | None, Field(description="directory the commands run in; default the worker's")
    ] = None,
    verify_sql: Annotated[
        str | None,
        Field(description="file of SQL checks; each must return true or no rows"),
    ] = None,
    verify_command: Annotated[
        str | None, Field(description="command that verifies the migration (exit 0 = ok)")
    ] = None,
    builtin_checks: Annotated[
        bool, Field(description="fail on new invalid indexes or NOT VALID constraints")
    ] = True,
    dry_run: Annotated[
        bool, Field(description="only list pending migrations and publish the plan")
    ] = False,
    target_version: Annotated[
        str | None,
        Field(description="version label of the backup; default the last pending migration"),
    ] = None,
    lock_wait_seconds: Annotated[
        float, Field(ge=0, le=3600, description="how long to wait for another migrator")
    ] = 60,
    lock_timeout_seconds: Annotated[
        float, Field(gt=0, le=600, description="lock_timeout of every migration statement")
    ] = 5,
    lock_retries: Annotated[
        int, Field(ge=0, le=20, description="retries (with backoff) after a lock timeout")
    ] = 5,
    retry_delay_seconds: Annotated[
        float, Field(ge=0, le=300, description="first backoff after a lock timeout, doubling")
    ] = 1,
    statement_timeout_seconds: Annotated[
        float, Field(ge=0, description="statement_timeout of migration statements; 0 = none")
    ] = 1800,
    command_timeout_seconds: Annotated[
        float, Field(gt=0, description="kill the migration/verify command after this long")
    ] = 3600,
    compression: Annotated[
        Literal["gzip", "zstd", "none"], Field(description="compression of the backup")
    ] = "gzip",
    s3: Annotated[S3Options | None, Field(description="S3 options; default from AWS_*")] = None,
) -> dict[str, Any]:
    """Back up, migrate, verify; restore the backup if anything fails. Completed only when the
    migration is applied and verified.

    Prefect shows these descriptions in the UI and the deployment's parameter schema (it reads
    them from this docstring, not from the Field descriptions).

    Args:
        database_url: secret://BLOCK or a URL without password; default DATABASE_URL.
        backup_url: where the pre-migration backup goes: s3://bucket/prefix or a directory;
            default BACKUP_URL.
        migrations: directory of NNNN_name.sql files or Prisma <timestamp>_<name>/migration.sql
            folders, for the built-in runner. Give this or command.
        command: another tool's migration command, e.g. `alembic upgrade head` or
            `npx prisma migrate deploy`; it gets DATABASE_URL in its environment.
        workdir: directory the migration and verify commands run in; default the worker's.
        verify_sql: file of SQL checks run after the migration; each must return true or no rows.
        verify_command: command run after the migration; it must exit 0.
        builtin_checks: fail on new invalid indexes or NOT VALID constraints.
        dry_run: only list the pending migrations and publish the plan; change nothing.
        target_version: version label of the pre-migration backup; default the last pending
            migration.
        lock_wait_seconds: how long to wait for another migrator's lock before giving up.
        lock_timeout_seconds: lock_timeout of every migration statement.
        lock_retries: retries, with doubling backoff, after a lock timeout or deadlock.
        retry_delay_seconds: the first backoff after a lock timeout.
        statement_timeout_seconds: statement_timeout of migration statements; 0 means none.
        command_timeout_seconds: kill the migration or verify command after this long.
        compression: compression of the pre-migration backup.
        s3: S3 options for backup_url; default from AWS_* and DBOPS_S3_*.
    """
    reject_inline_password(database_url, "database_url")
    if (migrations is None) == (command is None):
        raise DbopsError(
            "give either migrations (a directory of SQL migrations) or command (e.g. "
            "'alembic upgrade head'), not both and not neither"
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
        _publish_plan(plan)
        return {"status": "planned", **_plan_summary(plan)}

    run_id = str(flow_run.id or "local")
    with migration_lock_for(database_url, lock_wait_seconds, owner=run_id, log=logger.info) as lock:
        logger.info(
            "Holding the migration lock of %s (waited %.1f s)", lock.database, lock.waited_seconds
        )
        plan, baseline = plan_migrations(database_url, migrations, command, target_version)
        _publish_plan(plan)
        summary: dict[str, Any] = {"status": "applied", **_plan_summary(plan)}
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
            summary["status"] = "up-to-date"
            try:
                checks = verify_schema(*verify_args)
            except DbopsError as exc:
                raise DbopsError(f"nothing to migrate, but {exc}; nothing was changed") from None
            summary["checks"] = [c.model_dump() for c in checks]
            summary["seconds"] = round(time.perf_counter() - started, 3)
            _publish_report(summary)
            return summary

        backup: dict[str, Any] | None = None
        txn: Transaction | None = None
        try:
            with transaction() as txn:
                backup = pre_migration_backup(
                    database_url, backup_url, s3, compression, plan.target_version
                )
                summary["backup"] = backup
                if plan.mode == "directory":
                    summary["applied"] = []
                    for migration in plan.pending:
                        result = apply_one(database_url, migration, run_id, options)
                        summary["applied"].append(result.model_dump())
                else:
                    assert command is not None
                    ran = migration_command(database_url, command, workdir, command_timeout_seconds)
                    summary["command"] = ran.model_dump()
                summary["checks"] = [c.model_dump() for c in verify_schema(*verify_args)]
        except Exception as exc:
            outcome = _rollback_outcome(txn) if txn is not None else None
            message = _failure_message(plan.database, str(exc), backup, outcome)
            summary.update(status="failed", error=message)
            _publish_report(summary)
            raise DbopsError(message) from None
    summary["seconds"] = round(time.perf_counter() - started, 3)
    _publish_report(summary)
    logger.info("Migration of %s applied and verified", plan.database)
    return summary


def _plan_summary(plan: MigrationPlan) -> dict[str, Any]:
    return {
        "database": plan.database,
        "mode": plan.mode,
        "target_version": plan.target_version,
        "plan": plan.model_dump(mode="json"),
    }

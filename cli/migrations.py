"""`dbops migrate` and `dbops reset`: the guide's migration procedure and its dev reset."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from cli.app import (
    BackupUrl,
    DatabaseUrl,
    IdentityOption,
    JsonFlag,
    app,
    emit,
    error_line,
    fail,
    run_flow,
    use_database_url,
)
from cli.application import AppTimeout, StartApp, StopApp, StopAppAt, restore_hooks
from tasks.core.errors import DbopsError


def _default_migrations_dir() -> str | None:
    """The guide's Prisma layout, or a plain migrations/ folder, when present."""
    for candidate in ("prisma/migrations", "migrations"):
        if os.path.isdir(candidate):
            return candidate
    return None


@app.command()
def migrate(
    migrations: Annotated[
        str | None,
        typer.Option(
            "--migrations",
            help="directory of NNNN_name.sql files or Prisma <timestamp>_<name>/migration.sql "
            "folders (default: ./prisma/migrations or ./migrations)",
            show_default=False,
        ),
    ] = None,
    command: Annotated[
        str | None,
        typer.Option(
            "--command",
            help="run another tool instead, e.g. 'alembic upgrade head' or "
            "'npx prisma migrate deploy' (gets DATABASE_URL in its environment)",
        ),
    ] = None,
    verify_sql: Annotated[
        str | None,
        typer.Option("--verify-sql", help="file of SQL checks; each must return true or no rows"),
    ] = None,
    verify_command: Annotated[
        str | None, typer.Option("--verify-command", help="command that must exit 0 afterwards")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="print the plan; change nothing, back up nothing")
    ] = False,
    database_url: DatabaseUrl = None,
    to: BackupUrl = None,
    workdir: Annotated[
        str | None, typer.Option(help="directory the commands run in (default: here)")
    ] = None,
    target_version: Annotated[
        str | None,
        typer.Option(help="label of the pre-migration backup (default: last pending migration)"),
    ] = None,
    lock_wait: Annotated[
        float, typer.Option(min=0, help="seconds to wait for another migrator's lock")
    ] = 60,
    lock_timeout: Annotated[
        float, typer.Option(min=0.001, help="lock_timeout (s) of each migration statement")
    ] = 5,
    lock_retries: Annotated[
        int, typer.Option(min=0, max=20, help="retries with backoff after a lock timeout")
    ] = 5,
    statement_timeout: Annotated[
        float, typer.Option(min=0, help="statement_timeout (s) of migration statements; 0: none")
    ] = 1800,
    builtin_checks: Annotated[
        bool,
        typer.Option(help="fail on new invalid indexes or NOT VALID constraints"),
    ] = True,
    slot_wait: Annotated[
        float, typer.Option(min=0.001, help="seconds to wait for other dbops jobs on the database")
    ] = 3600,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="only remove the records of migrations that started outside a transaction and "
            "never finished, after you checked the database by hand (needs --yes)",
        ),
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="confirm --repair")] = False,
    stop_app: StopApp = None,
    start_app: StartApp = None,
    stop_app_at: StopAppAt = "swap",
    app_timeout: AppTimeout = 300,
    rehearse: Annotated[
        bool,
        typer.Option(
            "--rehearse",
            help="only rehearse: restore the newest verified backup into a scratch database, "
            "apply the pending migrations there with every statement's locks observed, report, "
            "drop it; production is not touched (exit 1 on a failure or a red statement)",
        ),
    ] = False,
    require_rehearsal: Annotated[
        bool,
        typer.Option(
            "--require-rehearsal",
            help="rehearse first and migrate only when the rehearsal passes",
        ),
    ] = False,
    max_lock_seconds: Annotated[
        float,
        typer.Option(
            min=0,
            help="rehearsal: a lock blocking writes held longer than this on an existing table "
            "is red",
        ),
    ] = 5,
    backup: Annotated[
        str,
        typer.Option(
            "--backup", help="rehearsal: the backup to restore (default: newest verified)"
        ),
    ] = "latest",
    encrypt_to: Annotated[
        list[str] | None,
        typer.Option(
            help="encrypt the pre-migration backup with age to this public key or file of keys "
            "(repeatable; needs --identity); default $DBOPS_AGE_RECIPIENTS",
            show_default=False,
        ),
    ] = None,
    identity: IdentityOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Back up, migrate, verify; restore the backup if something applied fails (with
    --stop-app/--start-app, the application is stopped for that restore). Exit 0 only
    when the migration is applied and verified. --rehearse: try it on a restored copy."""
    from flows.migrate import migrate_database
    from tasks.migrations.outcomes import MigrationStatus

    use_database_url(database_url)
    if migrations and command:
        fail("give --migrations DIR or --command CMD, not both")
    if repair and not yes:
        fail(
            "--repair forgets migrations that started and never finished; check the database "
            "against them first (statements that committed, INVALID indexes), then add --yes"
        )
    if not command:
        migrations = migrations or _default_migrations_dir()
        if not migrations and not repair:
            fail("no migrations found; pass --migrations DIR or --command 'alembic upgrade head'")
        migrations = os.path.abspath(migrations) if migrations else None
    if rehearse:
        if repair or dry_run:
            fail("--rehearse changes nothing already; not with --repair or --dry-run")
        _rehearse(
            as_json,
            migrations=migrations,
            command=command,
            source=backup,
            backup_url=to,
            max_lock_seconds=max_lock_seconds,
            workdir=workdir,
            verify_sql=os.path.abspath(verify_sql) if verify_sql else None,
            verify_command=verify_command,
            builtin_checks=builtin_checks,
            lock_timeout_seconds=lock_timeout,
            statement_timeout_seconds=statement_timeout,
            identity=identity,
        )
        return
    result = run_flow(
        migrate_database,
        backup_url=to,
        migrations=migrations,
        command=command,
        workdir=workdir,
        verify_sql=os.path.abspath(verify_sql) if verify_sql else None,
        verify_command=verify_command,
        builtin_checks=builtin_checks,
        dry_run=dry_run,
        target_version=target_version,
        lock_wait_seconds=lock_wait,
        lock_timeout_seconds=lock_timeout,
        lock_retries=lock_retries,
        statement_timeout_seconds=statement_timeout,
        slot_wait_seconds=slot_wait,
        repair=repair,
        application=restore_hooks(stop_app, start_app, stop_app_at, app_timeout),
        require_rehearsal=require_rehearsal,
        max_lock_seconds=max_lock_seconds,
        encrypt_to=encrypt_to or None,
        identity=identity,
    )
    plan = result.plan
    if result.status == MigrationStatus.REPAIRED:
        removed = ", ".join(result.repaired or []) or "nothing unfinished was recorded"
        lines = [f"repaired the migration history of {plan.database}: {removed}"]
    elif result.status == MigrationStatus.PLANNED:
        if plan.mode == "command":
            lines = [f"would back up {plan.database}, then run: {plan.command}"]
        else:
            lines = [f"{plan.database}: {len(plan.applied)} applied, {len(plan.pending)} pending"]
            lines += [
                f"  {m.id}  ({m.statements} statements"
                + ("" if m.transactional else ", outside a transaction")
                + ")"
                for m in plan.pending
            ]
    elif result.status == MigrationStatus.UP_TO_DATE:
        lines = [f"{plan.database} is up to date; nothing was changed"]
    else:
        applied = [a.id for a in result.applied or []] or [plan.command]
        assert result.backup is not None
        lines = [
            f"migrated {plan.database}: {', '.join(map(str, applied))}",
            f"  pre-migration backup {result.backup.backup_id} ({result.backup.url})",
            f"  {len(result.checks or [])} checks passed",
        ]
    emit(result.model_dump(mode="json"), as_json, "\n".join(lines))


def _rehearse(as_json: bool, **parameters: object) -> None:
    """Run rehearse-migration; print its report (also when red), exit 1 unless it passed."""
    from flows.rehearse import rehearse_migration
    from tasks.migrations.rehearsal import RehearsalReport
    from tasks.migrations.rehearsal_report import verdict

    try:
        state = rehearse_migration(**parameters, return_state=True)
    except DbopsError as exc:
        fail(error_line(exc))
    report = state.result(raise_on_failure=False)
    if not isinstance(report, RehearsalReport):
        if isinstance(report, BaseException):
            fail(error_line(report))
        fail((state.message or state.name).strip().splitlines()[0])
    lines = [verdict(report)]
    for migration in report.migrations:
        lines.append(f"  {migration.id}: {migration.rating}, {migration.seconds:.3f} s")
        for s in migration.statements:
            locks = ", ".join(
                f"{e.lock} on {e.relation} {e.held_seconds:.3f} s"
                + (" (rewritten)" if e.rewritten else "")
                for e in s.effects
                if e.lock
            )
            lines.append(f"    {s.index} line {s.line} {s.rating}: {s.sql}  [{locks or '-'}]")
            lines += [f"      why: {r}" for r in s.reasons]
            lines += [f"      safer: {a}" for a in s.advice]
    emit(report, as_json, "\n".join(lines))
    if not state.is_completed():
        raise typer.Exit(1)


@app.command()
def reset(
    database_url: DatabaseUrl = None,
    migrations: Annotated[
        str | None, typer.Option("--migrations", help="apply this directory's migrations after")
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Drop and recreate a DEVELOPMENT database (DBOPS_ENVIRONMENT=development, or a name
    ending in _dev/_test/_local); refuses anything else."""
    from flows.reset import reset_database_flow
    from tasks.core.settings import Settings
    from tasks.migrations.reset import non_production_reason

    use_database_url(database_url)
    try:
        name = Settings.load().connection().dbname
        reason = non_production_reason(name)  # refuse before asking
    except DbopsError as exc:
        fail(str(exc))
    if not yes and not typer.confirm(
        f"Drop database {name!r} ({reason}) and recreate it empty? Every object and row in it "
        "is deleted",
        default=False,
        err=True,
    ):
        fail(f"reset of {name!r} cancelled; nothing was changed")
    result = run_flow(reset_database_flow, confirm=name, migrations=migrations)
    applied = f", then applied {len(result.applied)} migrations" if result.applied else ""
    emit(
        result.model_dump(mode="json"),
        as_json,
        f"reset {result.target}: dropped and recreated{applied}",
    )

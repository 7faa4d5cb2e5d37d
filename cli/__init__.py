"""The `dbops` command line: parses arguments and calls flows, nothing more.

Human output and progress go to stderr; `--json` prints one JSON document on
stdout. The exit code is 0 only when the flow run Completed.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any, Literal

import typer

from tasks.core.errors import DbopsError

# Without PREFECT_API_URL, Prefect starts a temporary server in this process; its first
# start migrates a fresh database, which can take longer than Prefect's default wait.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

app = typer.Typer(
    name="dbops",
    help="PostgreSQL backups, restores, migrations and maintenance as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="libpq URI; default $DATABASE_URL", show_default=False),
]
BackupUrl = Annotated[
    str | None,
    typer.Option(
        "--to", help="s3://bucket/prefix or a directory; default $BACKUP_URL or ./backups"
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")]
Retries = Annotated[
    int, typer.Option(min=0, max=10, help="retries of transient errors (deployments default to 2)")
]


def say(message: str) -> None:
    typer.echo(message, err=True)


def fail(message: str) -> None:
    say(f"error: {message}")
    raise typer.Exit(1)


def use_database_url(url: str | None) -> None:
    """A URL given on the command line travels in the environment, never as a flow parameter
    (Prefect stores parameters with the run)."""
    if url:
        os.environ["DATABASE_URL"] = url


def run_flow(flow_fn: Any, **parameters: Any) -> Any:
    """Run a flow; on failure print its one-line error and exit 1."""
    try:
        state = flow_fn(**parameters, return_state=True)
    except DbopsError as exc:
        fail(str(exc))
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        message = str(error) if isinstance(error, BaseException) else (state.message or state.name)
        fail(message.strip().splitlines()[0] if message.strip() else state.name)
    return state.result()


def emit(document: Any, as_json: bool, human: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    else:
        say(human)


def s3_options(
    endpoint_url: str | None,
    sse: str | None,
    sse_kms_key_id: str | None,
    storage_class: str | None,
    tags: list[str] | None,
):
    from tasks.core.settings import S3Options, parse_tags

    return S3Options.from_env().merged(
        endpoint_url=endpoint_url,
        sse=sse,
        sse_kms_key_id=sse_kms_key_id,
        storage_class=storage_class,
        tags=parse_tags(",".join(tags or [])),
    )


@app.command()
def backup(
    database_url: DatabaseUrl = None,
    to: BackupUrl = None,
    format: Annotated[Literal["plain", "custom"], typer.Option(help="pg_dump format")] = "plain",
    compression: Annotated[
        Literal["gzip", "zstd", "none"], typer.Option(help="compression of the dump")
    ] = "gzip",
    level: Annotated[int | None, typer.Option(help="compression level")] = None,
    label: Annotated[list[str] | None, typer.Option(help="label the backup (repeatable)")] = None,
    globals_: Annotated[
        bool, typer.Option("--globals", help="also dump roles and tablespaces")
    ] = False,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
    sse: Annotated[
        Literal["AES256", "aws:kms"] | None, typer.Option(help="server-side encryption")
    ] = None,
    sse_kms_key_id: Annotated[str | None, typer.Option(help="KMS key id for aws:kms")] = None,
    storage_class: Annotated[str | None, typer.Option(help="S3 storage class")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="S3 object tag KEY=VALUE")] = None,
    retries: Retries = 0,
    as_json: JsonFlag = False,
) -> None:
    """Back up a database: pg_dump | compress | checksum | upload, then a manifest."""
    from flows.backup import backup_database

    use_database_url(database_url)
    try:
        s3 = s3_options(endpoint_url, sse, sse_kms_key_id, storage_class, tag)
    except DbopsError as exc:
        fail(str(exc))
    manifest = run_flow(
        backup_database,
        backup_url=to,
        format=format,
        compression=compression,
        level=level,
        labels=label or [],
        include_globals=globals_,
        s3=s3,
        retries=retries,
    )
    emit(manifest, as_json, f"backup {manifest['backup_id']} stored: {manifest['dump']['name']}")


@app.command()
def restore(
    source: Annotated[str, typer.Argument(help="`latest`, a backup id, an s3:// URL or a path")],
    database_url: DatabaseUrl = None,
    backups: Annotated[
        str | None, typer.Option("--from", help="where backups are; default $BACKUP_URL")
    ] = None,
    clean: Annotated[bool, typer.Option(help="replace a non-empty target database")] = False,
    from_database: Annotated[
        str | None, typer.Option(help="with `latest`: whose backups (default: the target's)")
    ] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
    retries: Retries = 0,
    as_json: JsonFlag = False,
) -> None:
    """Restore a backup into a database (created if missing)."""
    from flows.restore import restore_database

    use_database_url(database_url)
    result = run_flow(
        restore_database,
        source=source,
        backup_url=backups,
        clean=clean,
        from_database=from_database,
        s3=s3_options(endpoint_url, None, None, None, None),
        retries=retries,
    )
    emit(result, as_json, f"restored {result['source']} into {result['target']}")


@app.command("list")
def list_backups(
    to: BackupUrl = None,
    database: Annotated[str | None, typer.Option(help="only this database's backups")] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List the backups under BACKUP_URL, newest first (reads only; runs no flow)."""
    from tasks.backup.manifest import list_manifests
    from tasks.core.settings import Settings
    from tasks.storage.destinations import Destination

    try:
        settings = Settings.load(None, to, s3_options(endpoint_url, None, None, None, None))
        manifests = list_manifests(Destination.from_url(settings.backup_url, settings.s3), database)
    except DbopsError as exc:
        fail(str(exc))
    rows = [
        {
            "backup_id": m.backup_id,
            "database": m.database,
            "started_at": m.started_at.isoformat(),
            "format": m.format,
            "compression": m.compression,
            "size": m.dump.size,
            "dump": m.dump.name,
            "labels": m.labels,
            "verified": m.verification.ok if m.verification else None,
            "verified_at": m.verification.verified_at.isoformat() if m.verification else None,
            "verification": m.verification.detail if m.verification else None,
        }
        for m in manifests
    ]
    if as_json:
        emit(rows, True, "")
        return
    if not rows:
        say(f"no backups under {settings.backup_url}")
        return
    for m, row in zip(manifests, rows, strict=True):
        labels = ",".join(row["labels"])
        if m.verification is None:
            state = "-"
        elif m.verification.ok:
            state = f"verified {m.verification.verified_at:%Y-%m-%d}"
        else:
            state = "FAILED"
        say(f"{row['backup_id']:<40} {row['size']:>14,d}  {state:<19} {row['dump']}  {labels}")


# --- retention, verification, freshness (issue 3) ---
@app.command()
def prune(
    to: BackupUrl = None,
    database: Annotated[
        str | None, typer.Option(help="only this database's backups (default: all)")
    ] = None,
    keep_days: Annotated[
        float | None,
        typer.Option(help="keep every backup younger than N days (7 when no rule is given)"),
    ] = None,
    keep_last: Annotated[int | None, typer.Option(help="keep the newest N backups")] = None,
    keep_daily: Annotated[
        int | None, typer.Option(help="keep the newest backup of each of the last N days")
    ] = None,
    keep_weekly: Annotated[
        int | None, typer.Option(help="keep the newest backup of each of the last N ISO weeks")
    ] = None,
    keep_monthly: Annotated[
        int | None, typer.Option(help="keep the newest backup of each of the last N months")
    ] = None,
    keep_yearly: Annotated[
        int | None, typer.Option(help="keep the newest backup of each of the last N years")
    ] = None,
    min_keep: Annotated[int, typer.Option(help="never keep fewer than N backups")] = 1,
    keep_pre_migration_days: Annotated[
        float, typer.Option(help="keep backups labelled pre-migration for N days")
    ] = 30,
    stale_after_days: Annotated[
        float | None,
        typer.Option(
            help="delete nothing and fail when the newest backup is older than N days "
            "(default: --keep-days, else the finest calendar rule's span)"
        ),
    ] = None,
    timezone: Annotated[
        str, typer.Option("--timezone", "--tz", help="time zone of calendar days/weeks/months")
    ] = "UTC",
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="print the plan (what is kept and why), delete nothing"),
    ] = False,
    abort_uploads_older_than_hours: Annotated[
        float, typer.Option(help="abort incomplete S3 uploads / partial files older than N hours")
    ] = 24,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
    retries: Retries = 0,
    as_json: JsonFlag = False,
) -> None:
    """Delete old backups by a retention policy; never the newest (verified) one, never while
    backups are failing. Only backups with a manifest are counted or touched."""
    from flows.prune import prune_backups

    result = run_flow(
        prune_backups,
        backup_url=to,
        database=database,
        keep_days=keep_days,
        keep_last=keep_last,
        keep_daily=keep_daily,
        keep_weekly=keep_weekly,
        keep_monthly=keep_monthly,
        keep_yearly=keep_yearly,
        min_keep=min_keep,
        keep_pre_migration_days=keep_pre_migration_days,
        stale_after_days=stale_after_days,
        timezone=timezone,
        dry_run=dry_run,
        abort_uploads_older_than_hours=abort_uploads_older_than_hours,
        s3=s3_options(endpoint_url, None, None, None, None),
        retries=retries,
    )
    verified = {True: "verified", False: "FAILED", None: ""}
    lines = [
        f"{'keep' if i['action'] == 'keep' else 'DELETE':<6} {i['backup_id']:<40} "
        f"{i['age']:>8} {verified[i['verified']]:<8} {i['reason']}"
        for i in result["items"]
    ]
    lines += [f"DELETE {name}  (leftover of a half-deleted backup)" for name in result["leftovers"]]
    lines += [f"ABORT  {key}  (incomplete upload)" for key in result["incomplete_uploads"]]
    deletions = sum(1 for i in result["items"] if i["action"] == "delete")
    if result["refused"]:
        lines.append(f"prune would refuse, nothing would be deleted: {result['refused']}")
    elif dry_run:
        lines.append(f"dry run: would delete {deletions} backups under {result['location']}")
    else:
        lines.append(
            f"deleted {len(result['deleted_backups'])} backups "
            f"({len(result['deleted_objects'])} objects), aborted "
            f"{len(result['aborted_uploads'])} incomplete uploads under {result['location']}"
        )
    emit(result, as_json, "\n".join(lines))


@app.command()
def verify(
    source: Annotated[
        str, typer.Argument(help="`latest`, a backup id, an s3:// URL or a path")
    ] = "latest",
    database_url: DatabaseUrl = None,
    verify_database_url: Annotated[
        str | None,
        typer.Option(
            "--verify-database-url",
            help="server for the scratch database; default $VERIFY_DATABASE_URL, "
            "else the $DATABASE_URL server",
            show_default=False,
        ),
    ] = None,
    backups: Annotated[
        str | None, typer.Option("--from", "--to", help="where backups are; default $BACKUP_URL")
    ] = None,
    database: Annotated[
        str | None, typer.Option(help="with `latest`: whose backups (default: DATABASE_URL's)")
    ] = None,
    smoke: Annotated[
        list[str] | None,
        typer.Option(
            "--smoke",
            help="read-only SQL run in the restored copy; fails on an error, no rows, or a "
            "false/NULL first value (repeatable)",
        ),
    ] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
    retries: Retries = 0,
    as_json: JsonFlag = False,
) -> None:
    """Restore a backup into a scratch database, check SHA-256, archive, row counts and smoke
    queries, drop the scratch database and record the result next to the backup."""
    from flows.verify import verify_backup

    use_database_url(database_url)
    if verify_database_url:  # like DATABASE_URL: through the environment, never a parameter
        os.environ["VERIFY_DATABASE_URL"] = verify_database_url
    result = run_flow(
        verify_backup,
        source=source,
        backup_url=backups,
        database=database,
        smoke_queries=smoke or [],
        s3=s3_options(endpoint_url, None, None, None, None),
        retries=retries,
    )
    emit(result, as_json, f"backup {result['backup_id']} verified: {result['detail']}")


@app.command()
def check(
    to: BackupUrl = None,
    database: Annotated[
        str | None, typer.Option(help="the database that must have backups (default: all)")
    ] = None,
    max_age_hours: Annotated[
        float, typer.Option(help="the newest verified backup may be at most N hours old")
    ] = 192,
    max_backup_age_hours: Annotated[
        float | None,
        typer.Option(help="the newest backup, verified or not, may be at most N hours old"),
    ] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
    retries: Retries = 0,
    as_json: JsonFlag = False,
) -> None:
    """Exit 1 when a database's newest verified backup is too old (like Barman's
    last_backup_maximum_age)."""
    from flows.check import backup_freshness

    result = run_flow(
        backup_freshness,
        backup_url=to,
        database=database,
        max_age_hours=max_age_hours,
        max_backup_age_hours=max_backup_age_hours,
        s3=s3_options(endpoint_url, None, None, None, None),
        retries=retries,
    )
    lines = [
        f"{d['database']}: newest verified backup {d['newest_verified']} is "
        f"{d['newest_verified_age_hours']}h old (limit {max_age_hours:g}h): OK"
        for d in result["databases"]
    ]
    emit(result, as_json, "\n".join(lines))


# --- migrations and reset (issue 4) ---
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
    as_json: JsonFlag = False,
) -> None:
    """Back up, migrate, verify; restore the backup if anything fails. Exit 0 only when the
    migration is applied and verified."""
    from flows.migrate import migrate_database

    use_database_url(database_url)
    if migrations and command:
        fail("give --migrations DIR or --command CMD, not both")
    if not command:
        migrations = migrations or _default_migrations_dir()
        if not migrations:
            fail("no migrations found; pass --migrations DIR or --command 'alembic upgrade head'")
        migrations = os.path.abspath(migrations)
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
    )
    plan = result["plan"]
    if result["status"] == "planned":
        if plan["mode"] == "command":
            lines = [f"would back up {plan['database']}, then run: {plan['command']}"]
        else:
            pending = plan["pending"]
            lines = [f"{plan['database']}: {len(plan['applied'])} applied, {len(pending)} pending"]
            lines += [
                f"  {m['id']}  ({m['statements']} statements"
                + ("" if m["transactional"] else ", outside a transaction")
                + ")"
                for m in pending
            ]
    elif result["status"] == "up-to-date":
        lines = [f"{plan['database']} is up to date; nothing was changed"]
    else:
        applied = [a["id"] for a in result.get("applied", [])] or [plan.get("command")]
        lines = [
            f"migrated {plan['database']}: {', '.join(map(str, applied))}",
            f"  pre-migration backup {result['backup']['backup_id']} ({result['backup']['url']})",
            f"  {len(result.get('checks', []))} checks passed",
        ]
    emit(result, as_json, "\n".join(lines))


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
    from tasks.core.postgres import ConnInfo
    from tasks.core.settings import Settings
    from tasks.migrations.reset import non_production_reason

    use_database_url(database_url)
    try:
        name = ConnInfo.parse(Settings.load().require_database_url()).dbname
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
    applied = f", then applied {len(result['applied'])} migrations" if result["applied"] else ""
    emit(result, as_json, f"reset {result['target']}: dropped and recreated{applied}")


@app.command()
def demo(
    workdir: Annotated[str, typer.Option("--dir", help="where backups go")] = "dbops-demo",
    size_mb: Annotated[float, typer.Option(help="approximate dump size in MB")] = 20.0,
    as_json: JsonFlag = False,
) -> None:
    """Start an embedded PostgreSQL with a guide-shaped ai_saas database, back it up,
    restore it into a second database and check the row counts match."""
    from flows.demo import demo as demo_flow

    summary = run_flow(demo_flow, workdir=workdir, size_mb=size_mb)
    lines = [
        "dbops demo: embedded PostgreSQL, database ai_saas (User, Conversation, Message)",
        f"  backed up   {summary['dump_mb']} MB of SQL -> {summary['stored_mb']} MB gzip "
        f"in {summary['backup_seconds']} s",
        f"  backup      {summary['backup']}",
        f"  manifest    {summary['manifest']}",
        f"  restored    into ai_saas_restored in {summary['restore_seconds']} s, "
        f"SHA-256 verified: {summary['checksum_verified']}",
    ]
    lines += [
        f"  {table:<22} {counts[0]:>9} rows, restored {counts[1]}"
        for table, counts in summary["row_counts"].items()
    ]
    lines.append("  row counts match. Try: gunzip -c " + summary["backup"] + " | head")
    emit(summary, as_json, "\n".join(lines))


@app.command()
def serve(
    only: Annotated[
        list[str] | None, typer.Option(help="only this deployment, e.g. backup-database/nightly")
    ] = None,
) -> None:
    """Serve every deployment of prefect.yaml, schedules included, from this process
    (one machine, no work pool). Needs PREFECT_API_URL or a local `prefect server start`."""
    from deployments.serve import serve_all

    try:
        serve_all(only)
    except DbopsError as exc:
        fail(str(exc))


# --- maintenance, health and security (issue 5) ---

TimeBudget = Annotated[
    float | None,
    typer.Option("--time-budget", help="minutes; start no new table/index after that"),
]
LockTimeout = Annotated[
    float, typer.Option("--lock-timeout", help="seconds to wait for a lock, then skip")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="only show what would be done")]
StoreAs = Annotated[
    Literal["url", "password"],
    typer.Option("--store", help="store a full DATABASE_URL (default) or only the password"),
]


def maintenance_lines(report: dict[str, Any]) -> str:
    lines = [report["summary"] + (" (dry run)" if report.get("dry_run") else "")]
    for item in report["items"]:
        sizes = ""
        if "size_mb_before" in item:
            sizes = f"  {item['size_mb_before']} -> {item.get('size_mb_after', '?')} MB"
        dead = ""
        if "dead_tuples_before" in item:
            dead = f"  dead {item['dead_tuples_before']} -> {item.get('dead_tuples_after', '?')}"
        lines.append(
            f"  {item['action']:<27} {item['target']}: {item['status']} "
            f"({item['seconds']} s){dead}{sizes}  [{item['reason']}]"
        )
    return "\n".join(lines)


@app.command()
def vacuum(
    database_url: DatabaseUrl = None,
    all_: Annotated[bool, typer.Option("--all", help="every table, like vacuumdb -z")] = False,
    table: Annotated[
        list[str] | None, typer.Option("--table", help="only this table, schema.table (repeat)")
    ] = None,
    full: Annotated[
        bool, typer.Option("--full", help="VACUUM FULL: rewrites and LOCKS each table")
    ] = False,
    time_budget: TimeBudget = None,
    lock_timeout: LockTimeout = 5.0,
    dry_run: DryRun = False,
    as_json: JsonFlag = False,
) -> None:
    """VACUUM (ANALYZE) the tables that need it, biggest payoff first (--all: every table)."""
    from flows.maintenance import FULL_WARNING, vacuum_analyze

    use_database_url(database_url)
    if full:
        say(f"warning: {FULL_WARNING}")
    report = run_flow(
        vacuum_analyze,
        all_tables=all_,
        tables=table,
        full=full,
        time_budget_minutes=time_budget,
        lock_timeout_seconds=lock_timeout,
        dry_run=dry_run,
    )
    emit(report, as_json, maintenance_lines(report))


@app.command()
def analyze(
    database_url: DatabaseUrl = None,
    all_: Annotated[bool, typer.Option("--all", help="every table, like `ANALYZE;`")] = False,
    table: Annotated[
        list[str] | None, typer.Option("--table", help="only this table, schema.table (repeat)")
    ] = None,
    time_budget: TimeBudget = None,
    lock_timeout: LockTimeout = 5.0,
    dry_run: DryRun = False,
    as_json: JsonFlag = False,
) -> None:
    """ANALYZE the tables never analyzed or much changed since (--all: every table)."""
    from flows.maintenance import analyze as analyze_flow

    use_database_url(database_url)
    report = run_flow(
        analyze_flow,
        all_tables=all_,
        tables=table,
        time_budget_minutes=time_budget,
        lock_timeout_seconds=lock_timeout,
        dry_run=dry_run,
    )
    emit(report, as_json, maintenance_lines(report))


@app.command()
def reindex(
    database_url: DatabaseUrl = None,
    index: Annotated[
        list[str] | None, typer.Option("--index", help="only this index, schema.index (repeat)")
    ] = None,
    bloat_threshold: Annotated[
        float, typer.Option(help="rebuild indexes with more estimated bloat (%)")
    ] = 30.0,
    min_size_mb: Annotated[
        float, typer.Option(help="ignore indexes wasting less than this (MB)")
    ] = 10.0,
    time_budget: TimeBudget = None,
    lock_timeout: LockTimeout = 5.0,
    dry_run: DryRun = False,
    as_json: JsonFlag = False,
) -> None:
    """REINDEX INDEX CONCURRENTLY invalid and bloated indexes; drop leftover _ccnew copies."""
    from flows.maintenance import reindex as reindex_flow

    use_database_url(database_url)
    report = run_flow(
        reindex_flow,
        indexes=index,
        bloat_threshold_pct=bloat_threshold,
        min_index_mb=min_size_mb,
        time_budget_minutes=time_budget,
        lock_timeout_seconds=lock_timeout,
        dry_run=dry_run,
    )
    emit(report, as_json, maintenance_lines(report))


def parse_thresholds(pairs: list[str] | None) -> Any:
    from pydantic import ValidationError

    from tasks.core.settings import parse_tags
    from tasks.health.checks import HealthThresholds

    given = parse_tags(",".join(pairs or []))
    unknown = sorted(set(given) - set(HealthThresholds.model_fields))
    if unknown:
        raise DbopsError(
            f"unknown threshold(s) {unknown}; known: {', '.join(HealthThresholds.model_fields)}"
        )
    try:
        return HealthThresholds(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        raise DbopsError(
            f"threshold {first['loc'][0]}={given[str(first['loc'][0])]!r}: {first['msg']}"
        ) from None


@app.command()
def health(
    database_url: DatabaseUrl = None,
    check: Annotated[
        list[str] | None, typer.Option("--check", help="only this check (repeatable)")
    ] = None,
    threshold: Annotated[
        list[str] | None,
        typer.Option(help="NAME=VALUE, e.g. long_query_warning_seconds=30 (repeatable)"),
    ] = None,
    app_instances: Annotated[
        int, typer.Option(min=1, help="app instances sharing the database")
    ] = 1,
    connection_limit: Annotated[
        int | None, typer.Option(help="the app's pool per instance; default from DATABASE_URL")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Health report like PgHero's; exit code 1 when a check is critical.

    The report is printed even then, so this does not use run_flow.
    """
    use_database_url(database_url)
    try:
        thresholds = parse_thresholds(threshold)
    except DbopsError as exc:
        fail(str(exc))
    from flows.health import ICON, health_report

    try:
        state = health_report(
            thresholds=thresholds,
            checks=check,
            app_instances=app_instances,
            connection_limit=connection_limit,
            return_state=True,
        )
    except DbopsError as exc:
        fail(str(exc))
    report = state.result(raise_on_failure=False)
    if not isinstance(report, dict):
        message = str(report) if isinstance(report, BaseException) else state.message
        fail((message or state.name).strip().splitlines()[0])
    lines = [f"health of {report['database']}: {report['status']}"]
    for c in report["checks"]:
        lines.append(f"  {ICON[c['status']]} {c['status']:<8} {c['name']:<26} {c['summary']}")
        for finding in c["findings"][:5]:
            named = {k: v for k, v in finding.items() if k in NAMED_KEYS}
            lines.append(f"        {named or finding}")
    emit(report, as_json, "\n".join(lines))
    if not state.is_completed():
        say(f"error: {state.message}")
        raise typer.Exit(1)


NAMED_KEYS = (
    "schema",
    "table",
    "index",
    "sequence",
    "constraint",
    "slot",
    "pid",
    "blocked_pid",
    "blocking_pid",
    "database",
    "query",
    "extension",
    "problem",
    "scope",
)


@app.command("create-readonly-user")
def create_readonly_user_cmd(
    name: Annotated[str, typer.Argument(help="name of the read-only role")],
    database_url: DatabaseUrl = None,
    schema: Annotated[
        list[str] | None, typer.Option("--schema", help="schema to read (repeat); default public")
    ] = None,
    owner: Annotated[
        list[str] | None,
        typer.Option("--owner", help="role whose future tables must be readable (repeat)"),
    ] = None,
    secret_block: Annotated[
        str | None, typer.Option(help="Prefect Secret block for the credentials")
    ] = None,
    store: StoreAs = "url",
    as_json: JsonFlag = False,
) -> None:
    """Create a read-only role (idempotent) and prove it can read new tables and not write."""
    from flows.security import create_readonly_user

    use_database_url(database_url)
    result = run_flow(
        create_readonly_user,
        role=name,
        schemas=schema,
        owners=owner,
        secret_block=secret_block,
        secret_format=store,
    )
    where = (
        f"credentials in Prefect Secret {result['secret_block']!r}"
        if result["secret_block"]
        else "its password is unknown to dbops (set it with `dbops rotate-password`)"
    )
    lines = [
        f"role {name!r} {'created' if result['created'] else 'already existed; grants refreshed'}"
        f" in {result['database']}; {where}"
    ]
    lines += [f"  {c['check']}: {c['result']}" for c in result["checks"]]
    emit(result, as_json, "\n".join(lines))


@app.command("rotate-password")
def rotate_password_cmd(
    role: Annotated[str, typer.Argument(help="role whose password to rotate")],
    database_url: DatabaseUrl = None,
    secret_block: Annotated[
        str | None, typer.Option(help="Prefect Secret block; default dbops-<db>-<role>")
    ] = None,
    store: StoreAs = "url",
    aws_secret_id: Annotated[
        str | None, typer.Option(help="also store in this AWS Secrets Manager secret")
    ] = None,
    aws_region: Annotated[str | None, typer.Option(help="default $AWS_DEFAULT_REGION")] = None,
    aws_endpoint_url: Annotated[
        str | None, typer.Option(help="default $AWS_ENDPOINT_URL_SECRETSMANAGER")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """New strong password, proven to log in, stored in a Prefect Secret (and AWS); never shown.

    Restarting the application (the guide's rolling restart) is up to you.
    """
    from flows.security import rotate_password

    use_database_url(database_url)
    result = run_flow(
        rotate_password,
        role=role,
        secret_block=secret_block,
        secret_format=store,
        aws_secret_id=aws_secret_id,
        aws_region=aws_region,
        aws_endpoint_url=aws_endpoint_url,
    )
    where = f"Prefect Secret {result['secret_block']!r}"
    if result["aws_secret_id"]:
        where += f" and AWS secret {result['aws_secret_id']!r}"
    emit(
        result,
        as_json,
        f"password of {role!r} rotated, login verified, stored in {where}; "
        "restart the application to use it",
    )


@app.command("terminate-blocking")
def terminate_blocking_cmd(
    database_url: DatabaseUrl = None,
    min_blocked_seconds: Annotated[
        float, typer.Option(min=0, help="only sessions keeping others waiting longer than this")
    ] = 60.0,
    yes: Annotated[
        bool, typer.Option("--yes", help="really terminate them (default: only report)")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Last resort: pg_terminate_backend on sessions at the head of long lock waits."""
    from flows.security import terminate_blocking

    use_database_url(database_url)
    result = run_flow(terminate_blocking, min_blocked_seconds=min_blocked_seconds, confirm=yes)
    lines = [
        f"pid {s['pid']} ({s['user']}, {s['state']}) blocks {s['blocked_pids']} for "
        f"{s['longest_wait_seconds']} s: {s['action']}"
        for s in result["sessions"]
    ] or [f"no session blocks others for more than {min_blocked_seconds:g} s"]
    if result["sessions"] and not yes:
        lines.append("nothing terminated; pass --yes to terminate them")
    emit(result, as_json, "\n".join(lines))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

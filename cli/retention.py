"""`dbops prune` and `dbops check`: retention and the staleness alert."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.app import BackupUrl, JsonFlag, Retries, app, emit, run_flow, s3_options
from tasks.core.parameters import field_help
from tasks.retention.policy import RetentionPolicy


def _policy_option(name: str, *flags: str) -> typer.models.OptionInfo:
    return typer.Option(*flags, help=field_help(RetentionPolicy, name))


@app.command()
def prune(
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            "--from",
            help="the destination to prune (each has its own policy); default $BACKUP_URL",
        ),
    ] = None,
    database: Annotated[
        str | None, typer.Option(help="only this database's backups (default: all)")
    ] = None,
    keep_days: Annotated[float | None, _policy_option("keep_days")] = None,
    keep_last: Annotated[int | None, _policy_option("keep_last")] = None,
    keep_daily: Annotated[int | None, _policy_option("keep_daily")] = None,
    keep_weekly: Annotated[int | None, _policy_option("keep_weekly")] = None,
    keep_monthly: Annotated[int | None, _policy_option("keep_monthly")] = None,
    keep_yearly: Annotated[int | None, _policy_option("keep_yearly")] = None,
    min_keep: Annotated[int, _policy_option("min_keep")] = 1,
    keep_pre_migration_days: Annotated[float, _policy_option("keep_pre_migration_days")] = 30,
    stale_after_days: Annotated[float | None, _policy_option("stale_after_days")] = None,
    timezone: Annotated[str, _policy_option("timezone", "--timezone", "--tz")] = "UTC",
    dry_run: Annotated[
        bool,
        typer.Option("--dry-run", help="print the plan (what is kept and why), delete nothing"),
    ] = False,
    abort_uploads_older_than_hours: Annotated[
        float,
        typer.Option(
            help="abort incomplete S3 uploads / partial files and clean unfinished backups "
            "older than N hours (at least 6; more than your longest backup takes)"
        ),
    ] = 24,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
    retries: Retries = 0,
    as_json: JsonFlag = False,
) -> None:
    """Delete old backups by a retention policy; never the newest (verified) one, never while
    backups are failing. Only backups with a manifest are counted or touched."""
    from flows.prune import prune_backups

    policy = RetentionPolicy(
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
    )
    report = run_flow(
        prune_backups,
        backup_url=to,
        database=database,
        policy=policy,
        dry_run=dry_run,
        abort_uploads_older_than_hours=abort_uploads_older_than_hours,
        s3=s3_options(endpoint_url, None, None, None, None),
        retries=retries,
    )
    verified = {True: "verified", False: "FAILED", None: ""}
    lines = [
        f"{'keep' if i.action == 'keep' else 'DELETE':<6} {i.backup_id:<40} "
        f"{i.age:>8} {verified[i.verified]:<8} {i.reason}"
        for i in report.items
    ]
    lines += [f"DELETE {name}  (leftover of a half-deleted backup)" for name in report.leftovers]
    lines += [f"ABORT  {key}  (incomplete upload)" for key in report.incomplete_uploads]
    lines += [f"DELETE {name}  (left by a backup that never finished)" for name in report.abandoned]
    lines += [
        f"LEAVE  {name}  (unreadable: its backup is not touched)" for name in report.unreadable
    ]
    lines += [f"LOCKED {refused}" for refused in report.locked]
    if report.refused:
        lines.append(f"prune would refuse, nothing would be deleted: {report.refused}")
    elif dry_run:
        lines.append(f"dry run: would delete {len(report.delete)} backups under {report.location}")
    else:
        lines.append(
            f"deleted {len(report.deleted_backups)} backups "
            f"({len(report.deleted_objects)} objects), aborted "
            f"{len(report.aborted_uploads)} incomplete uploads under {report.location}"
        )
    emit(report, as_json, "\n".join(lines))


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
    min_copies: Annotated[
        int,
        typer.Option(
            min=0, help="the newest verified backup must also exist in N other destinations"
        ),
    ] = 0,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
    retries: Retries = 0,
    as_json: JsonFlag = False,
) -> None:
    """Exit 1 when a database's newest verified backup is too old (like Barman's
    last_backup_maximum_age)."""
    from flows.check import backup_freshness

    report = run_flow(
        backup_freshness,
        backup_url=to,
        database=database,
        max_age_hours=max_age_hours,
        max_backup_age_hours=max_backup_age_hours,
        min_copies=min_copies,
        s3=s3_options(endpoint_url, None, None, None, None),
        retries=retries,
    )
    lines = [
        f"{d.database}: newest verified backup {d.newest_verified} is "
        f"{d.newest_verified_age_hours}h old (limit {max_age_hours:g}h): OK"
        + (f", {d.copies} checked copies elsewhere" if d.copies is not None else "")
        for d in report.databases
    ]
    emit(report, as_json, "\n".join(lines))

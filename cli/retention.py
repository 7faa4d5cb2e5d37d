"""`dbops prune` and `dbops check`: retention and the staleness alert."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.app import (
    BackupUrl,
    JsonFlag,
    Retries,
    app,
    emit,
    run_flow,
    s3_options,
)


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

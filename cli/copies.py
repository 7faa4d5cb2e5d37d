"""`dbops copy`: a second copy of backups at another destination (the 3-2-1 rule)."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.app import (
    JsonFlag,
    ObjectLockDaysOption,
    ObjectLockOption,
    Retries,
    app,
    emit,
    run_flow,
    s3_options,
)


@app.command()
def copy(
    backup_id: Annotated[
        str | None,
        typer.Argument(help="a backup id or `latest`; default with --all-missing: every one"),
    ] = None,
    to: Annotated[
        str, typer.Option("--to", "--copy-to", help="the second destination: s3:// or a directory")
    ] = "",
    source: Annotated[
        str | None, typer.Option("--from", help="where the backups are; default $BACKUP_URL")
    ] = None,
    all_missing: Annotated[
        bool, typer.Option("--all-missing", help="copy every backup the destination lacks")
    ] = False,
    database: Annotated[str | None, typer.Option(help="only this database's backups")] = None,
    object_lock: ObjectLockOption = None,
    object_lock_days: ObjectLockDaysOption = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
    retries: Retries = 0,
    as_json: JsonFlag = False,
) -> None:
    """Copy backups to a second destination, each object checked against its manifest's
    SHA-256 on the way, the manifest last; the copy is recorded beside the backup."""
    from cli.app import fail
    from flows.copy import copy_backups

    if not to:
        fail("--to is missing; give the second destination (s3://bucket/prefix or a directory)")
    if bool(backup_id) == all_missing:
        fail("give a backup id (or `latest`) or --all-missing, not both and not neither")
    report = run_flow(
        copy_backups,
        copy_to=to,
        backup_url=source,
        backup_id=backup_id,
        database=database,
        s3=s3_options(endpoint_url, None, None, None, None),
        object_lock=object_lock,
        object_lock_days=object_lock_days,
        retries=retries,
    )
    emit(report, as_json, f"copy to {report.target}: {report.summary()}")

"""`dbops backup` and `dbops list`: take backups and show them."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Annotated, Literal

import typer

from cli.app import (
    BackupUrl,
    ChunkMbOption,
    DatabaseUrl,
    JobsOption,
    JsonFlag,
    ObjectLockDaysOption,
    ObjectLockOption,
    Retries,
    app,
    emit,
    fail,
    run_flow,
    s3_options,
    say,
    use_database_url,
)
from tasks.core.errors import DbopsError
from tasks.core.parameters import PingUrl, describe


@app.command()
def backup(
    database_url: DatabaseUrl = None,
    to: BackupUrl = None,
    format: Annotated[
        Literal["plain", "custom", "parallel"],
        typer.Option(help="pg_dump format, or parallel: one object per table, N workers"),
    ] = "plain",
    jobs: JobsOption = 2,
    chunk_mb: ChunkMbOption = 128,
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
    copy_to: Annotated[
        list[str] | None,
        typer.Option(help="also copy the finished backup here, checked (repeatable)"),
    ] = None,
    object_lock: ObjectLockOption = None,
    object_lock_days: ObjectLockDaysOption = None,
    encrypt_to: Annotated[
        list[str] | None,
        typer.Option(
            help="encrypt with age to this public key or file of keys (repeatable); "
            "default $DBOPS_AGE_RECIPIENTS",
            show_default=False,
        ),
    ] = None,
    retries: Retries = 0,
    ping_url: Annotated[str | None, typer.Option(help=describe(PingUrl))] = None,
    as_json: JsonFlag = False,
) -> None:
    """Back up a database: pg_dump | compress | checksum | upload, then a manifest."""
    from flows.backup import backup_database

    use_database_url(database_url)
    if ping_url:  # like the database URL: in the environment, not stored with the run
        os.environ["DBOPS_PING_URL"] = ping_url
    try:
        s3 = s3_options(endpoint_url, sse, sse_kms_key_id, storage_class, tag)
    except DbopsError as exc:
        fail(str(exc))
    manifest = run_flow(
        backup_database,
        backup_url=to,
        format=format,
        jobs=jobs,
        chunk_mb=chunk_mb,
        compression=compression,
        level=level,
        labels=label or [],
        include_globals=globals_,
        s3=s3,
        retries=retries,
        copy_to=copy_to or None,
        object_lock=object_lock,
        object_lock_days=object_lock_days,
        encrypt_to=encrypt_to or None,
    )
    human = f"backup {manifest.backup_id} stored: {manifest.dump.name}"
    if copy_to:
        human += f", copied to {', '.join(copy_to)}"
    emit(manifest.model_dump(mode="json"), as_json, human)


@app.command("list")
def list_backups(
    to: BackupUrl = None,
    database: Annotated[str | None, typer.Option(help="only this database's backups")] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List the backups under BACKUP_URL, newest first (reads only; runs no flow)."""
    from tasks.backup.identity import in_the_future
    from tasks.backup.manifest import list_manifests
    from tasks.copies.locations import backup_locations, copies_present
    from tasks.core.settings import Settings

    try:
        settings = Settings.load(None, to, s3_options(endpoint_url, None, None, None, None))
        manifests = list_manifests(settings.destination(), database)
        places = backup_locations(settings.destination(), manifests, settings.s3)
    except DbopsError as exc:
        fail(str(exc))
    now = datetime.now(UTC)
    rows = [
        {
            "backup_id": m.backup_id,
            "database": m.database,
            "server": m.server_key,
            "server_address": f"{m.server.host}:{m.server.port}" if m.server else None,
            "started_at": m.started_at.isoformat(),
            "in_the_future": in_the_future(m.started_at, now),
            "format": m.format,
            "compression": m.compression,
            "size": m.stored_size,
            "dump": m.dump.name,
            "labels": m.labels,
            "encrypted_to": m.encryption.recipients if m.encryption else None,
            "verified": m.verification.ok if m.verification else None,
            "verified_at": m.verification.verified_at.isoformat() if m.verification else None,
            "verification": m.verification.detail if m.verification else None,
            "locations": [p.model_dump(mode="json") for p in places[m.backup_id]],
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
        if row["in_the_future"]:
            state = "FUTURE-DATED (clock?)"
        say(
            f"{row['backup_id']:<40} {row['server']:<20} {row['size']:>14,d}  {state:<21} "
            f"{row['dump']}  {labels}"
        )
        for place in places[m.backup_id][1:]:
            where = {True: "copy at", False: "copy MISSING at", None: "copy unknown at"}
            say(f"    {where[place.present]} {place.destination}  {place.problem}".rstrip())
    if any(copies_present(p) for p in places.values()):
        say(f"({len(rows)} backups under {settings.destination().url})")

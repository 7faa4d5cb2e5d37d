"""backup-database: pg_dump -> compress -> checksum -> store, then a manifest and a report."""

from __future__ import annotations

from typing import Annotated, Literal

from prefect import flow
from prefect.tasks import exponential_backoff
from pydantic import Field

from tasks.backup.compression import check_level
from tasks.backup.encryption import parse_recipients
from tasks.backup.manifest import Manifest
from tasks.backup.tasks import dump_database
from tasks.copies.tasks import check_targets, copy_to_destination
from tasks.core.errors import DbopsError, ParameterError
from tasks.core.parameters import (
    AgeRecipientList,
    ChunkMb,
    DatabaseUrl,
    Jobs,
    ObjectLock,
    ObjectLockDays,
    PingUrl,
    SlotWait,
    documented,
)
from tasks.core.settings import reject_inline_password, s3_with_lock
from tasks.operations.outcomes import backup_completed, outcome_hooks
from tasks.storage.destinations import S3Options


@flow(name="backup-database", **outcome_hooks("backup"))
@documented
def backup_database(
    database_url: DatabaseUrl = None,
    backup_url: Annotated[
        str | None, Field(description="s3://bucket/prefix or a directory; default BACKUP_URL")
    ] = None,
    format: Annotated[
        Literal["plain", "custom", "parallel"],
        Field(description="pg_dump format, or parallel: one object per table, loaded by N workers"),
    ] = "plain",
    compression: Annotated[
        Literal["gzip", "zstd", "none"], Field(description="compression of the dump")
    ] = "gzip",
    level: Annotated[int | None, Field(description="compression level; default per codec")] = None,
    labels: Annotated[list[str] | None, Field(description="labels, e.g. pre-migration")] = None,
    include_globals: Annotated[
        bool, Field(description="also store roles and tablespaces (pg_dumpall --globals-only)")
    ] = False,
    s3: Annotated[S3Options | None, Field(description="S3 options; default from AWS_*")] = None,
    retries: Annotated[int, Field(ge=0, le=10, description="retries of transient errors")] = 2,
    retry_delay_seconds: Annotated[float, Field(ge=0, description="first retry delay")] = 30,
    slot_wait_seconds: SlotWait = 3600,
    copy_to: Annotated[
        list[str] | None,
        Field(description="second destinations the finished backup is copied to (checked)"),
    ] = None,
    object_lock: ObjectLock = None,
    object_lock_days: ObjectLockDays = None,
    ping_url: PingUrl = None,
    encrypt_to: AgeRecipientList = None,
    jobs: Jobs = 2,
    chunk_mb: ChunkMb = 128,
) -> Manifest:
    """Dump a database and store it, compressed and checksummed, with its manifest."""
    reject_inline_password(database_url, "database_url")
    if format not in ("plain", "custom", "parallel"):
        raise ParameterError("format", f"{format!r} is unknown; use plain, custom or parallel")
    level = check_level(compression, level)
    parse_recipients(encrypt_to or [])  # a malformed key is refused before anything is written
    s3 = s3_with_lock(s3, object_lock, object_lock_days)
    if copy_to:
        check_targets(backup_url, s3, copy_to)
    manifest = dump_database.with_options(
        retries=retries, retry_delay_seconds=exponential_backoff(retry_delay_seconds)
    )(
        database_url,
        backup_url,
        s3,
        format,
        compression,
        level,
        labels or [],
        include_globals,
        slot_wait_seconds,
        encrypt_to,
        jobs,
        chunk_mb,
    )
    backup_completed(manifest, backup_url, s3)
    if copy_to:
        copy_after_backup(manifest, backup_url, s3, copy_to, retries)
    return manifest


def copy_after_backup(
    manifest: Manifest, backup_url: str | None, s3: S3Options | None, urls: list[str], retries: int
) -> None:
    """Every target gets its copy; the run fails after, naming the ones that failed."""
    failed = []
    for url in urls:
        report = copy_to_destination.with_options(retries=retries, retry_delay_seconds=10)(
            backup_url, s3, url, s3, manifest.backup_id
        )
        failed += [f"{report.target}: {f.error}" for f in report.failed]
    if failed:
        raise DbopsError(
            f"backup {manifest.backup_id} is stored, but its copy failed: " + "; ".join(failed)
        )

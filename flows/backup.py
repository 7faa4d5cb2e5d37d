"""backup-database: pg_dump -> compress -> checksum -> store, then a manifest and a report."""

from __future__ import annotations

from typing import Annotated, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from flows.parameters import DatabaseUrl, documented
from tasks.backup.compression import check_level
from tasks.backup.manifest import Manifest
from tasks.backup.pipeline import BackupRequest, run_backup
from tasks.backup.report import publish_backup_report
from tasks.core.artifacts import ProgressReporter
from tasks.core.errors import DbopsError, retry_transient
from tasks.core.postgres import ConnInfo
from tasks.core.settings import S3Options, Settings, reject_inline_password
from tasks.core.slots import database_slot
from tasks.storage.destinations import Destination


@task(name="dump-database", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def dump_database(
    database_url: str | None,
    backup_url: str | None,
    s3: S3Options | None,
    format: str,
    compression: str,
    level: int,
    labels: list[str],
    include_globals: bool,
    slot_wait_seconds: float = 3600,
) -> Manifest:
    logger = get_run_logger()
    # Resolved here, not in the flow, so the password never passes through Prefect.
    settings = Settings.load(database_url, backup_url, s3)
    info = ConnInfo.parse(settings.require_database_url())
    destination = Destination.from_url(settings.backup_url, settings.s3)
    logger.info("Backing up %s to %s", info.redacted(), destination.url)
    destination.check_writable()  # a missing bucket is reported before the server is touched
    with info.connect() as conn:
        size = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])
    progress = ProgressReporter(size, f"Dumping {info.dbname}")
    with database_slot(info, slot_wait_seconds):  # never beside maintenance of this database
        manifest = run_backup(
            BackupRequest(
                conn=info,
                destination=destination,
                format=format,
                compression=compression,
                level=level,
                labels=labels,
                include_globals=include_globals,
            ),
            progress=progress,
        )
    progress.done()
    publish_backup_report(manifest, destination.url_for(manifest.dump.name))
    logger.info(
        "Stored %s (%d bytes, sha256 %s)",
        destination.url_for(manifest.dump.name),
        manifest.dump.size,
        manifest.dump.sha256,
    )
    return manifest


@flow(name="backup-database")
@documented
def backup_database(
    database_url: DatabaseUrl = None,
    backup_url: Annotated[
        str | None, Field(description="s3://bucket/prefix or a directory; default BACKUP_URL")
    ] = None,
    format: Annotated[Literal["plain", "custom"], Field(description="pg_dump format")] = "plain",
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
    slot_wait_seconds: Annotated[
        float, Field(gt=0, description="how long to wait for other dbops jobs on this database")
    ] = 3600,
) -> dict:
    """Dump a database and store it, compressed and checksummed, with its manifest."""
    reject_inline_password(database_url, "database_url")
    if format not in ("plain", "custom"):
        raise DbopsError(f"unknown format {format!r}; use plain or custom")
    level = check_level(compression, level)
    manifest = dump_database.with_options(
        retries=retries, retry_delay_seconds=_backoff(retry_delay_seconds, retries)
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
    )
    return manifest.model_dump(mode="json")


def _backoff(first: float, retries: int) -> list[float]:
    return [first * (2**attempt) for attempt in range(max(retries, 1))]

"""backup-database: pg_dump -> compress -> checksum -> store, then a manifest and a report."""

from __future__ import annotations

from typing import Annotated, Literal

from prefect import flow
from prefect.tasks import exponential_backoff
from pydantic import Field

from tasks.backup.compression import check_level
from tasks.backup.manifest import Manifest
from tasks.backup.tasks import dump_database
from tasks.core.errors import ParameterError
from tasks.core.parameters import DatabaseUrl, PingUrl, SlotWait, documented
from tasks.core.settings import reject_inline_password
from tasks.operations.outcomes import backup_completed, outcome_hooks
from tasks.storage.destinations import S3Options


@flow(name="backup-database", **outcome_hooks("backup"))
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
    slot_wait_seconds: SlotWait = 3600,
    ping_url: PingUrl = None,
) -> Manifest:
    """Dump a database and store it, compressed and checksummed, with its manifest."""
    reject_inline_password(database_url, "database_url")
    if format not in ("plain", "custom"):
        raise ParameterError("format", f"{format!r} is unknown; use plain or custom")
    level = check_level(compression, level)
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
    )
    backup_completed(manifest, backup_url, s3)
    return manifest

"""backup-freshness: fail (non-zero exit, Failed run) when a database's newest verified backup
is older than a threshold, the way Barman's `last_backup_maximum_age` does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from tasks.backup.manifest import list_manifests
from tasks.core.errors import DbopsError, retry_transient
from tasks.core.parameters import documented
from tasks.core.settings import Settings
from tasks.retention.freshness import assess_freshness, check_limits
from tasks.retention.policy import BackupInfo
from tasks.storage.destinations import S3Options


@task(name="list-backups", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def list_backups(
    backup_url: str | None, s3: S3Options | None, database: str | None
) -> tuple[list[BackupInfo], str]:
    """Complete backups (with their verification sidecars) under the destination."""
    settings = Settings.load(None, backup_url, s3)
    destination = settings.destination()
    manifests = list_manifests(destination, database)
    return [BackupInfo.from_manifest(m) for m in manifests], destination.url


@flow(name="backup-freshness")
@documented
def backup_freshness(
    backup_url: Annotated[
        str | None, Field(description="s3://bucket/prefix or a directory; default BACKUP_URL")
    ] = None,
    database: Annotated[
        str | None,
        Field(description="the database that must have backups; default every one found"),
    ] = None,
    max_age_hours: Annotated[
        float, Field(description="the newest verified backup may be at most this old")
    ] = 192,
    max_backup_age_hours: Annotated[
        float | None,
        Field(description="the newest backup (verified or not) may be at most this old"),
    ] = None,
    s3: Annotated[S3Options | None, Field(description="S3 options; default from AWS_*")] = None,
    retries: Annotated[int, Field(ge=0, le=10, description="retries of transient errors")] = 2,
) -> dict:
    check_limits(max_age_hours, max_backup_age_hours)
    backups, location = list_backups.with_options(retries=retries, retry_delay_seconds=10)(
        backup_url, s3, database
    )
    report = assess_freshness(
        backups,
        datetime.now(UTC),
        max_age_hours,
        max_backup_age_hours,
        databases=[database] if database else [],
    )
    status = "fresh" if report.ok else "STALE"
    create_table_artifact(
        report.table() or [{"database": "-", "status": f"no backups under {location}"}],
        key="backup-freshness",
        description=f"Backup freshness of {location}: {status}",
    )
    get_run_logger().info("Backup freshness of %s: %s", location, status)
    if not report.databases:
        raise DbopsError(
            f"no backups under {location}; run `dbops backup` and `dbops verify latest`, "
            "or point --to / BACKUP_URL at the backups"
        )
    if not report.ok:
        raise DbopsError(f"backups are stale: {report.problems()}")
    return {"location": location, "ok": report.ok, **report.model_dump(mode="json")}

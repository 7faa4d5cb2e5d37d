"""backup-freshness: fail (non-zero exit, Failed run) when a database's newest verified backup
is older than a threshold, the way Barman's `last_backup_maximum_age` does."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from tasks.copies.locations import require_copies
from tasks.copies.tasks import find_copies
from tasks.core.errors import DbopsError, NotFoundError
from tasks.core.parameters import BackupUrl, Retries, S3Parameter, documented
from tasks.operations.outcomes import outcome_hooks
from tasks.retention.freshness import FreshnessReport, assess_freshness, check_limits
from tasks.retention.report import publish_freshness
from tasks.retention.tasks import list_backups


@flow(name="backup-freshness", **outcome_hooks("freshness", "stale"))
@documented
def backup_freshness(
    backup_url: BackupUrl = None,
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
    min_copies: Annotated[
        int,
        Field(
            ge=0,
            description="the newest verified backup must also exist, checked, in this many "
            "other destinations (dbops copy)",
        ),
    ] = 0,
    s3: S3Parameter = None,
    retries: Retries = 2,
) -> FreshnessReport:
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
    report.location = location
    if min_copies:
        places = find_copies.with_options(retries=retries, retry_delay_seconds=10)(
            backup_url, s3, database
        )
        require_copies(report.databases, places, min_copies)
    publish_freshness(report)
    get_run_logger().info("Backup freshness of %s: %s", location, "fresh" if report.ok else "STALE")
    if not report.databases:
        raise NotFoundError(
            f"no backups under {location}; run `dbops backup` and `dbops verify latest`, "
            "or point --to / BACKUP_URL at the backups"
        )
    if not report.ok:
        raise DbopsError(f"backups are stale: {report.problems()}")
    return report

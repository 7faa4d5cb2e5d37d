"""copy-backups: a second copy of backups at another destination, on its own schedule.

Each backup streams across with its SHA-256 checked against the manifest, the manifest is
written last at the target, and the copy is recorded beside the backup. A copy that fails
leaves no manifest at the target (nothing there looks complete) and fails the run once
the other backups have been copied.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from tasks.copies.report import CopyReport
from tasks.copies.tasks import copy_to_destination
from tasks.core.errors import DbopsError, ParameterError
from tasks.core.parameters import (
    BackupUrl,
    ObjectLock,
    ObjectLockDays,
    Retries,
    S3Parameter,
    documented,
)
from tasks.core.settings import s3_with_lock

CopyTo = Annotated[
    str, Field(description="where the second copy goes: s3://bucket/prefix or a directory")
]


@flow(name="copy-backups")
@documented
def copy_backups(
    copy_to: CopyTo,
    backup_url: BackupUrl = None,
    backup_id: Annotated[
        str | None,
        Field(
            description="one backup id, or `latest` (newest of each database); "
            "default: every backup the target lacks"
        ),
    ] = None,
    database: Annotated[str | None, Field(description="only this database's backups")] = None,
    s3: S3Parameter = None,
    object_lock: ObjectLock = None,
    object_lock_days: ObjectLockDays = None,
    retries: Retries = 2,
) -> CopyReport:
    """Copy backups to a second destination, checked against their manifests, and record it."""
    if not copy_to:
        raise ParameterError("copy_to", "is empty; give s3://bucket/prefix or a directory")
    target_s3 = s3_with_lock(s3, object_lock, object_lock_days)
    if object_lock and not copy_to.startswith("s3://"):
        raise ParameterError(
            "object_lock",
            f"cannot lock {copy_to}: a local directory has no Object Lock; copy to an S3 "
            "bucket with Object Lock enabled",
        )
    report = copy_to_destination.with_options(retries=retries, retry_delay_seconds=10)(
        backup_url, s3, copy_to, target_s3, backup_id, database
    )
    get_run_logger().info("Copy to %s: %s", report.target, report.summary())
    if report.failed:
        raise DbopsError(
            f"{len(report.failed)} of {len(report.failed) + len(report.copied)} copies to "
            f"{report.target} failed, nothing of them looks complete there: "
            + "; ".join(f"{f.backup_id}: {f.error}" for f in report.failed)
        )
    return report

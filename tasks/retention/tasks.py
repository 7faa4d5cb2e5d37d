"""Retention's Prefect tasks: read the destination, delete what a plan says."""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.backup.manifest import list_manifests
from tasks.core.errors import retry_transient
from tasks.core.settings import Settings
from tasks.retention.inventory import (
    Inventory,
    PruneResult,
    abort_incomplete_writes,
    apply_plan,
    stale_incomplete_writes,
    take_inventory,
)
from tasks.retention.plan import BackupInfo, RetentionPlan
from tasks.storage.destinations import IncompleteWrite, S3Options


@task(name="scan-backups", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def scan_backups(
    backup_url: str | None,
    s3: S3Options | None,
    database: str | None,
    uploads_older_than_hours: float | None,
    now: datetime,
) -> tuple[Inventory, list[IncompleteWrite]]:
    """Every backup (manifest + dump) under the destination, and incomplete writes to abort."""
    destination = Settings.load(None, backup_url, s3).destination()
    get_run_logger().info("Reading backups under %s", destination.url)
    inventory = take_inventory(destination, database)
    stale: list[IncompleteWrite] = []
    if uploads_older_than_hours is not None:
        older_than = timedelta(hours=uploads_older_than_hours)
        stale = stale_incomplete_writes(destination, older_than, now)
    return inventory, stale


@task(name="delete-backups", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def delete_backups(
    backup_url: str | None,
    s3: S3Options | None,
    plan: RetentionPlan,
    inventory: Inventory,
    stale: list[IncompleteWrite],
) -> PruneResult:
    """Dump first, globals and sidecar next, manifest last; then abort stale uploads."""
    logger = get_run_logger()
    destination = Settings.load(None, backup_url, s3).destination()
    result = apply_plan(destination, plan, inventory)
    for backup_id in result.deleted_backups:
        logger.info("Deleted backup %s", backup_id)
    result.aborted_uploads = abort_incomplete_writes(destination, stale)
    for key in result.aborted_uploads:
        logger.info("Aborted incomplete upload %s", key)
    return result


@task(name="list-backups", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def list_backups(
    backup_url: str | None, s3: S3Options | None, database: str | None
) -> tuple[list[BackupInfo], str]:
    """Complete backups (with their verification sidecars) under the destination."""
    destination = Settings.load(None, backup_url, s3).destination()
    manifests = list_manifests(destination, database)
    return [BackupInfo.from_manifest(m) for m in manifests], destination.url

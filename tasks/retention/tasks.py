"""Retention's Prefect tasks: read the destination, delete what a plan says."""

from __future__ import annotations

from datetime import datetime, timedelta

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.backup.manifest import list_manifests
from tasks.core.errors import retry_transient
from tasks.core.settings import Settings
from tasks.retention.inventory import (
    Abandoned,
    Inventory,
    PruneResult,
    apply_plan,
    clean_abandoned,
    find_abandoned,
    safe_age,
    take_inventory,
)
from tasks.retention.locks import hold_locked
from tasks.retention.plan import BackupInfo, RetentionPlan
from tasks.storage.destinations import S3Options


@task(name="scan-backups", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def scan_backups(
    backup_url: str | None,
    s3: S3Options | None,
    database: str | None,
    uploads_older_than_hours: float | None,
    now: datetime,
) -> tuple[Inventory, Abandoned]:
    """Every backup (manifest + dump) under the destination, and what killed runs left."""
    destination = Settings.load(None, backup_url, s3).destination()
    get_run_logger().info("Reading backups under %s", destination.url)
    inventory = take_inventory(destination, database)
    abandoned = Abandoned()
    if uploads_older_than_hours is not None:
        older_than = safe_age(inventory, timedelta(hours=uploads_older_than_hours))
        abandoned = find_abandoned(destination, inventory, older_than, now)
    return inventory, abandoned


@task(name="hold-locked-backups", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def hold_locked_backups(
    backup_url: str | None, s3: S3Options | None, plan: RetentionPlan, inventory: Inventory
) -> RetentionPlan:
    """Backups the plan would delete that S3 Object Lock still protects are kept instead."""
    destination = Settings.load(None, backup_url, s3).destination()
    held = hold_locked(destination, plan, inventory)
    if held:
        get_run_logger().info("%d backups under %s are locked: kept", held, destination.url)
    return plan


@task(name="delete-backups", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def delete_backups(
    backup_url: str | None,
    s3: S3Options | None,
    plan: RetentionPlan,
    inventory: Inventory,
    abandoned: Abandoned,
) -> PruneResult:
    """Dump first, globals and sidecar next, manifest last; then what killed runs left, which
    is cleaned even when the plan is refused (it is no backup, and no run owns it)."""
    logger = get_run_logger()
    destination = Settings.load(None, backup_url, s3).destination()
    result = PruneResult() if plan.refused else apply_plan(destination, plan, inventory)
    for backup_id in result.deleted_backups:
        logger.info("Deleted backup %s", backup_id)
    for refused in result.locked:
        logger.warning("Not deleted, S3 Object Lock refused: %s", refused)
    clean_abandoned(destination, abandoned)
    result.aborted_uploads = [write.key for write in abandoned.uploads]
    result.deleted_objects += [name for s in abandoned.started for name in s.present]
    for name in abandoned.names():
        logger.info("Cleaned %s, left by a run that never finished", name)
    return result


@task(name="list-backups", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def list_backups(
    backup_url: str | None, s3: S3Options | None, database: str | None
) -> tuple[list[BackupInfo], str]:
    """Complete backups (with their verification sidecars) under the destination."""
    destination = Settings.load(None, backup_url, s3).destination()
    manifests = list_manifests(destination, database)
    return [BackupInfo.from_manifest(m) for m in manifests], destination.url

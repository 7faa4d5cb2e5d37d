"""prune-backups: plan which backups to keep (and why), publish the plan, then delete the rest.

Retention never deletes the newest backup or the newest verified one, keeps
`pre-migration` backups for their own window, keeps at least `min_keep`, and
deletes nothing at all (and fails) when the newest backup is older than the
policy's window: then the dumps are failing and the old backups are all there is.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from tasks.core.artifacts import artifact_key
from tasks.core.errors import DbopsError, retry_transient
from tasks.core.parameters import documented
from tasks.core.settings import Settings
from tasks.retention.policy import (
    BackupInfo,
    Inventory,
    PruneResult,
    RetentionPlan,
    RetentionPolicy,
    abort_partial_writes,
    apply_plan,
    plan_retention,
    stale_partial_writes,
    take_inventory,
)
from tasks.storage.destinations import Destination, S3Options


def _destination(backup_url: str | None, s3: S3Options | None) -> Destination:
    settings = Settings.load(None, backup_url, s3)
    return settings.destination()


@task(name="scan-backups", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def scan_backups(
    backup_url: str | None,
    s3: S3Options | None,
    database: str | None,
    uploads_older_than_hours: float | None,
    now: datetime,
) -> tuple[Inventory, list[dict]]:
    """Every backup (manifest + dump) under the destination, and incomplete writes to abort."""
    destination = _destination(backup_url, s3)
    get_run_logger().info("Reading backups under %s", destination.url)
    inventory = take_inventory(destination, database)
    uploads = []
    if uploads_older_than_hours is not None:
        uploads = stale_partial_writes(destination, timedelta(hours=uploads_older_than_hours), now)
    return inventory, uploads


@task(name="delete-backups", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def delete_backups(
    backup_url: str | None,
    s3: S3Options | None,
    plan: RetentionPlan,
    inventory: Inventory,
    uploads: list[dict],
) -> PruneResult:
    """Dump first, globals and sidecar next, manifest last; then abort stale uploads."""
    logger = get_run_logger()
    destination = _destination(backup_url, s3)
    result = apply_plan(destination, plan, inventory)
    for backup_id in result.deleted_backups:
        logger.info("Deleted backup %s", backup_id)
    result.aborted_uploads = abort_partial_writes(destination, uploads)
    for key in result.aborted_uploads:
        logger.info("Aborted incomplete upload %s", key)
    return result


def publish_plan(plan: RetentionPlan, location: str, dry_run: bool) -> None:
    rows = plan.table()
    rows += [
        {"backup": name, "action": "delete", "why": "leftover of a half-deleted backup"}
        for name in plan.leftovers
    ]
    rows += [
        {"backup": key, "action": "abort", "why": "incomplete upload/partial write"}
        for key in plan.incomplete_uploads
    ]
    if not rows:
        rows = [{"backup": "-", "action": "-", "why": f"no backups under {location}"}]
    verb = "Dry run" if dry_run else "Prune"
    create_table_artifact(
        rows,
        key=f"prune-{artifact_key(location.rsplit('/', 1)[-1])}",
        description=f"{verb} of {location}: {plan.summary()}",
    )


@flow(name="prune-backups")
@documented
def prune_backups(
    backup_url: Annotated[
        str | None, Field(description="s3://bucket/prefix or a directory; default BACKUP_URL")
    ] = None,
    database: Annotated[
        str | None, Field(description="only this database's backups; default all")
    ] = None,
    keep_days: Annotated[
        float | None,
        Field(description="keep every backup younger than N days (default 7 if no rule given)"),
    ] = None,
    keep_last: Annotated[int | None, Field(description="keep the newest N backups")] = None,
    keep_daily: Annotated[
        int | None, Field(description="keep the newest backup of each of the last N days")
    ] = None,
    keep_weekly: Annotated[
        int | None, Field(description="keep the newest backup of each of the last N ISO weeks")
    ] = None,
    keep_monthly: Annotated[
        int | None, Field(description="keep the newest backup of each of the last N months")
    ] = None,
    keep_yearly: Annotated[
        int | None, Field(description="keep the newest backup of each of the last N years")
    ] = None,
    min_keep: Annotated[int, Field(description="never keep fewer than N backups")] = 1,
    keep_pre_migration_days: Annotated[
        float, Field(description="keep backups labelled pre-migration for N days")
    ] = 30,
    stale_after_days: Annotated[
        float | None,
        Field(
            description="delete nothing and fail when the newest backup is older than this; "
            "default keep_days, else the finest calendar rule's span"
        ),
    ] = None,
    timezone: Annotated[
        str, Field(description="IANA time zone of the calendar days/weeks/months")
    ] = "UTC",
    dry_run: Annotated[bool, Field(description="only plan: delete nothing")] = False,
    abort_uploads_older_than_hours: Annotated[
        float | None,
        Field(description="abort incomplete uploads older than N hours; null: leave them"),
    ] = 24,
    s3: Annotated[S3Options | None, Field(description="S3 options; default from AWS_*")] = None,
    retries: Annotated[int, Field(ge=0, le=10, description="retries of transient errors")] = 2,
) -> dict:
    policy = RetentionPolicy.build(
        keep_days=keep_days,
        keep_last=keep_last,
        keep_daily=keep_daily,
        keep_weekly=keep_weekly,
        keep_monthly=keep_monthly,
        keep_yearly=keep_yearly,
        min_keep=min_keep,
        keep_pre_migration_days=keep_pre_migration_days,
        stale_after_days=stale_after_days,
        timezone=timezone,
    )
    if abort_uploads_older_than_hours is not None and abort_uploads_older_than_hours < 0:
        raise DbopsError(
            f"--abort-uploads-older-than-hours {abort_uploads_older_than_hours:g} is negative; "
            "use 0 or more hours"
        )
    location = _destination(backup_url, s3).url
    now = datetime.now(UTC)
    inventory, uploads = scan_backups.with_options(retries=retries, retry_delay_seconds=10)(
        backup_url, s3, database, abort_uploads_older_than_hours, now
    )
    plan = plan_retention(
        [BackupInfo.from_manifest(m) for m in inventory.manifests],
        policy,
        now,
        leftovers=inventory.leftovers,
        ignored=inventory.ignored,
    )
    plan.incomplete_uploads = [u["key"] for u in uploads]
    publish_plan(plan, location, dry_run)
    get_run_logger().info("Retention plan for %s: %s", location, plan.summary())
    document = {"location": location, "dry_run": dry_run, **plan.model_dump(mode="json")}
    if plan.refused and not dry_run:
        raise DbopsError(f"prune refused, nothing deleted: {plan.refused}")
    if dry_run:
        return document
    result = delete_backups.with_options(retries=retries, retry_delay_seconds=10)(
        backup_url, s3, plan, inventory, uploads
    )
    return {**document, **asdict(result)}

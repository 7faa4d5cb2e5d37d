"""prune-backups: plan which backups to keep (and why), publish the plan, then delete the rest.

Retention never deletes the newest backup or the newest verified one, keeps
`pre-migration` backups for their own window, keeps at least `min_keep`, and
deletes nothing at all (and fails) when the newest backup is older than the
policy's window: then the dumps are failing and the old backups are all there is.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from tasks.core.errors import DbopsError
from tasks.core.parameters import BackupUrl, Retries, S3Parameter, documented
from tasks.core.settings import Settings
from tasks.operations.outcomes import outcome_hooks, prune_finished
from tasks.retention.inventory import PruneResult
from tasks.retention.plan import BackupInfo, RetentionPlan, plan_retention
from tasks.retention.policy import MIN_ABANDON_HOURS, RetentionPolicy, check_abandon_hours
from tasks.retention.report import publish_plan
from tasks.retention.tasks import delete_backups, hold_locked_backups, scan_backups


class PruneReport(RetentionPlan, PruneResult):
    """The plan, where it applies, and what was deleted (nothing on a dry run)."""

    location: str
    dry_run: bool


@flow(name="prune-backups", **outcome_hooks("prune"))
@documented
def prune_backups(
    backup_url: BackupUrl = None,
    database: Annotated[
        str | None, Field(description="only this database's backups; default all")
    ] = None,
    policy: Annotated[
        RetentionPolicy | None,
        Field(description="what to keep; rules combine; default: the guide's 7 days"),
    ] = None,
    dry_run: Annotated[bool, Field(description="only plan: delete nothing")] = False,
    abort_uploads_older_than_hours: Annotated[
        float | None,
        Field(
            description="abort incomplete uploads and clean unfinished backups older than N "
            f"hours (at least {MIN_ABANDON_HOURS:g}, more than your longest backup takes); "
            "null: leave them"
        ),
    ] = 24,
    s3: S3Parameter = None,
    retries: Retries = 2,
) -> PruneReport:
    policy = (policy or RetentionPolicy()).resolved()
    check_abandon_hours(abort_uploads_older_than_hours)
    location = Settings.load(None, backup_url, s3).destination().url
    now = datetime.now(UTC)
    inventory, abandoned = scan_backups.with_options(retries=retries, retry_delay_seconds=10)(
        backup_url, s3, database, abort_uploads_older_than_hours, now
    )
    plan = plan_retention(
        [BackupInfo.from_manifest(m) for m in inventory.manifests],
        policy,
        now,
        leftovers=inventory.leftovers,
        ignored=inventory.ignored,
    )
    plan = hold_locked_backups.with_options(retries=retries, retry_delay_seconds=10)(
        backup_url, s3, plan, inventory
    )
    plan.incomplete_uploads = [write.key for write in abandoned.uploads]
    plan.abandoned = [name for started in abandoned.started for name in started.present]
    plan.unreadable = inventory.unreadable
    publish_plan(plan, location, dry_run)
    get_run_logger().info("Retention plan for %s: %s", location, plan.summary())
    report = PruneReport(location=location, dry_run=dry_run, **dict(plan))
    if dry_run:
        return report
    result = delete_backups.with_options(retries=retries, retry_delay_seconds=10)(
        backup_url, s3, plan, inventory, abandoned
    )
    if plan.refused:
        cleaned = len(abandoned.names())
        raise DbopsError(
            f"prune refused, nothing deleted: {plan.refused}"
            + (f" (cleaned {cleaned} objects of unfinished writes)" if cleaned else "")
        )
    report = report.model_copy(update=dict(result))
    prune_finished(report)
    return report

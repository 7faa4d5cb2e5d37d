"""What a person reads in the Prefect UI about retention: the plan and the freshness table."""

from __future__ import annotations

from prefect.artifacts import create_table_artifact

from tasks.core.artifacts import artifact_key
from tasks.retention.freshness import FreshnessReport
from tasks.retention.plan import RetentionPlan


def publish_plan(plan: RetentionPlan, location: str, dry_run: bool) -> None:
    rows = plan.table()
    for names, action, why in (
        (plan.leftovers, "delete", "leftover of a half-deleted backup"),
        (plan.incomplete_uploads, "abort", "incomplete upload/partial write"),
        (plan.abandoned, "delete", "left by a backup run that never finished"),
        (plan.unreadable, "keep", "unreadable: its backup is left alone"),
    ):
        rows += [{"backup": name, "action": action, "why": why} for name in names]
    if not rows:
        rows = [{"backup": "-", "action": "-", "why": f"no backups under {location}"}]
    verb = "Dry run" if dry_run else "Prune"
    create_table_artifact(
        rows,
        key=f"prune-{artifact_key(location.rsplit('/', 1)[-1])}",
        description=f"{verb} of {location}: {plan.summary()}",
    )


def publish_freshness(report: FreshnessReport) -> None:
    status = "fresh" if report.ok else "STALE"
    create_table_artifact(
        report.table() or [{"database": "-", "status": f"no backups under {report.location}"}],
        key="backup-freshness",
        description=f"Backup freshness of {report.location}: {status}",
    )

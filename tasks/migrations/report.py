"""What a migration run shows: the plan and the report artifacts."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from tasks.core.artifacts import artifact_key
from tasks.migrations.files import NO_TRANSACTION_MARKER
from tasks.migrations.outcomes import MigrationSummary
from tasks.migrations.plan import MigrationPlan


def publish_plan(plan: MigrationPlan) -> None:
    rows: list[dict[str, Any]] = [
        {
            "migration": m.id,
            "layout": m.layout,
            "statements": m.statements,
            "transaction": "yes" if m.transactional else f"no ({NO_TRANSACTION_MARKER})",
            "sha256": m.sha256[:16],
            "out of order": "yes" if m.id in plan.out_of_order else "",
        }
        for m in plan.pending
    ]
    if plan.mode == "command":
        rows = [{"migration": f"external command: {plan.command}"}]
    create_table_artifact(
        rows or [{"migration": "nothing pending: the database is up to date"}],
        key=artifact_key(f"migration-plan-{plan.database}"),
        description=f"Migration plan for {plan.database} (target {plan.target_version})",
    )


def publish_report(summary: MigrationSummary) -> None:
    lines = [
        f"# Migration of `{summary.database}`: {summary.status}",
        "",
        f"- mode: {summary.mode}",
        f"- target: {summary.target_version}",
    ]
    if summary.backup:
        lines.append(f"- pre-migration backup: `{summary.backup.backup_id}` ({summary.backup.url})")
    lines += [f"- applied: `{a.id}` in {a.seconds} s" for a in summary.applied or []]
    lines += [f"- undone by the restore: `{m}`" for m in summary.undone or []]
    lines += [f"- unfinished record removed: `{m}`" for m in summary.repaired or []]
    if summary.database_state:
        lines.append(f"- database: {summary.database_state}")
    if summary.command:
        lines.append(f"- command: `{summary.command.command}` exited 0")
    lines += [
        f"- check {'passed' if c.ok else 'FAILED'}: {c.name} {c.detail}"
        for c in summary.checks or []
    ]
    if summary.error:
        lines += ["", f"**{summary.error}**"]
    try:
        create_markdown_artifact(
            "\n".join(lines),
            key=artifact_key(f"migration-{summary.database}"),
            description=f"Migration of {summary.database}",
        )
    except Exception:  # noqa: BLE001 - a report must never hide the real outcome
        get_run_logger().warning("could not publish the migration report artifact")

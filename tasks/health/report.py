"""The health report: one model for the flow's result and `--json`, a markdown summary and a
table per check in the Prefect UI."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from enum import StrEnum
from typing import Any

from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel

from tasks.core.artifacts import artifact_key, publish_table
from tasks.health.model import HealthCheck, HealthStatus, worst

ICON = {HealthStatus.OK: "✅", HealthStatus.WARNING: "⚠️", HealthStatus.CRITICAL: "🛑"}
FINDINGS_IN_SUMMARY = 5


def jsonable(value: Any) -> Any:
    """Numbers and times from the catalog as JSON values (artifacts and --json)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, StrEnum):
        return str(value)  # a plain string, so dict reprs in human output stay unchanged
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.datetime | dt.date | dt.timedelta):
        return str(value)
    return value


class HealthReport(BaseModel):
    """The result of health-report: the worst status, and every check in report order."""

    database: str
    status: HealthStatus
    checks: list[HealthCheck]

    @classmethod
    def of(cls, database: str, checks: list[HealthCheck]) -> HealthReport:
        plain = [
            c.model_copy(update={"findings": jsonable(c.findings), "details": jsonable(c.details)})
            for c in checks
        ]
        return cls(database=database, status=worst(c.status for c in checks), checks=plain)

    @property
    def critical(self) -> list[HealthCheck]:
        return [c for c in self.checks if c.status == HealthStatus.CRITICAL]


def md(text: Any) -> str:
    """A value safe inside a markdown table cell or list item."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("`", "'")


def _finding_line(finding: dict[str, Any]) -> str:
    parts = [f"{k}: {md(v)}" for k, v in finding.items() if v not in (None, "", [])][:8]
    return "- " + "; ".join(parts)


def summary_markdown(report: HealthReport) -> str:
    lines = [
        f"# Health of `{md(report.database)}`: {ICON[report.status]} {report.status}",
        "",
        "| check | status | summary |",
        "|---|---|---|",
    ]
    lines += [
        f"| {md(c.title)} | {ICON[c.status]} {c.status} | {md(c.summary)} |"
        for c in sorted(report.checks, key=lambda c: -c.status.rank)
    ]
    for c in report.checks:
        if c.status == HealthStatus.OK:
            continue
        lines += ["", f"## {ICON[c.status]} {md(c.title)}", "", md(c.summary), ""]
        lines += [_finding_line(f) for f in c.findings[:FINDINGS_IN_SUMMARY]]
        if len(c.findings) > FINDINGS_IN_SUMMARY:
            lines.append(f"- … {len(c.findings) - FINDINGS_IN_SUMMARY} more in the table")
        if c.advice:
            lines += ["", f"**What to do:** {md(c.advice)}"]
    return "\n".join(lines) + "\n"


def publish_report(report: HealthReport) -> None:
    database = report.database
    create_markdown_artifact(
        summary_markdown(report),
        key=artifact_key(f"health-{database}"),
        description=f"Health report of {database}",
    )
    for c in report.checks:
        rows = c.findings or c.details or [{"status": c.status, "summary": c.summary}]
        publish_table(
            [
                {k: v if not isinstance(v, list | dict) else str(v) for k, v in row.items()}
                for row in rows
            ],
            key=f"health-{database}-{c.name}",
            description=f"{c.title}: {c.status} — {c.summary}",
        )

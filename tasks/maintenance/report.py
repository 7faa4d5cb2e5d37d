"""The maintenance report: one model for the flow's result and `--json`, one table artifact
with every table or index, what was done, how long it took, and sizes before and after."""

from __future__ import annotations

from typing import Any

from prefect.states import Completed, Failed, State
from pydantic import BaseModel, Field

from tasks.core.artifacts import most_telling, publish_table
from tasks.maintenance.outcome import ItemStatus, Outcome


class MaintenanceReport(BaseModel):
    """The result of vacuum-analyze, analyze and reindex."""

    database: str
    mode: str
    dry_run: bool
    summary: str
    items: list[dict[str, Any]]
    failures: list[str] = Field(default_factory=list, exclude=True)

    @property
    def failure_message(self) -> str:
        return f"{len(self.failures)} of {len(self.items)} not processed: " + ", ".join(
            self.failures[:5]
        )


def maintenance_report(
    kind: str, database: str, outcomes: list[Outcome], dry_run: bool
) -> MaintenanceReport:
    """Publish the run's table artifact and return its report."""
    rows = [o.row() for o in outcomes]
    done = sum(o.state is ItemStatus.DONE for o in outcomes)
    failed = [o for o in outcomes if o.failed]
    summary = (
        f"{kind} of {database}: {done} done, {len(failed)} failed, "
        f"{len(outcomes) - done - len(failed)} skipped or planned"
    )
    shown = [
        o.row() for o in most_telling(outcomes, lambda o: o.failed, lambda o: o.seconds or 0.0)
    ]
    publish_table(
        shown or [{"target": "-", "status": "nothing needed doing"}],
        key=f"{kind}-{database}",
        description=summary
        if len(shown) == len(rows)
        else f"{summary}; showing {len(shown)} of {len(rows)}: every failure, then the slowest "
        "(the run's result and --json list all)",
    )
    return MaintenanceReport(
        database=database,
        mode=kind,
        dry_run=dry_run,
        summary=summary,
        items=rows,
        failures=[f"{o.target} ({o.status})" for o in failed],
    )


def ended(report: MaintenanceReport) -> State:
    """The run's final state: Failed (the report as its data) when an item was not processed,
    so the failure notification fires."""
    if report.failures:
        return Failed(message=report.failure_message, data=report)
    return Completed(message=report.summary, data=report)

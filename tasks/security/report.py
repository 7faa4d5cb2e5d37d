"""What the security flows show in the Prefect UI: one table each, never a password."""

from __future__ import annotations

from tasks.core.artifacts import publish_table
from tasks.security.blocking import TerminationReport
from tasks.security.readonly import ReadonlyResult
from tasks.security.rotation import RotationResult


def publish_readonly(result: ReadonlyResult) -> None:
    publish_table(
        [
            {"check": "checked by", "result": result.checked_by},
            *(c.model_dump() for c in result.checks),
        ],
        key=f"readonly-{result.database}-{result.role}",
        description=f"Read-only role {result.role!r} in {result.database} "
        f"({'created' if result.created else 'already existed; grants refreshed'})",
    )


def publish_rotation(result: RotationResult) -> None:
    publish_table(
        [{"item": k, "value": str(v)} for k, v in result.model_dump().items()],
        key=f"rotate-password-{result.database}-{result.role}",
        description=f"Password of {result.role!r} rotated; restart the app to pick it up",
    )


def publish_termination(report: TerminationReport) -> None:
    publish_table(
        [s.model_dump(mode="json") for s in report.sessions]
        or [{"pid": "-", "action": "no session blocks others that long"}],
        key="terminate-blocking",
        description=f"Sessions blocking others for more than {report.min_blocked_seconds:g} s",
    )

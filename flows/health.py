"""health-report: connections, locks, indexes, queries, wraparound, sequences, cache, bloat,
pool settings; one markdown summary and a table per check in the Prefect UI.

The run ends Failed when a check is critical, so a Prefect automation or the
on_failure webhook notification fires; the report is returned either way.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State
from pydantic import Field

from tasks.core.parameters import DatabaseUrl, documented
from tasks.core.settings import reject_inline_password
from tasks.health.checks import CHECKS, select_checks
from tasks.health.model import HealthStatus, HealthThresholds
from tasks.health.report import publish_report
from tasks.health.tasks import health_checks
from tasks.operations.outcomes import outcome_hooks


@flow(name="health-report", **outcome_hooks("health"))
@documented
def health_report(
    database_url: DatabaseUrl = None,
    thresholds: Annotated[
        HealthThresholds | None, Field(description="warning/critical thresholds of every check")
    ] = None,
    checks: Annotated[
        list[str] | None, Field(description=f"only these checks; of: {', '.join(CHECKS)}")
    ] = None,
    app_instances: Annotated[
        int, Field(ge=1, description="app instances sharing the database (pool check)")
    ] = 1,
    connection_limit: Annotated[
        int | None,
        Field(ge=1, description="the app's pool size per instance; default from DATABASE_URL"),
    ] = None,
    top_n: Annotated[int, Field(ge=1, le=100, description="rows per list")] = 10,
    fail_on_critical: Annotated[
        bool, Field(description="end the run Failed when a check is critical")
    ] = True,
    retries: Annotated[int, Field(ge=0, le=10, description="retries of connection errors")] = 1,
) -> State:
    """Check a database like PgHero; the run fails when something is critical."""
    reject_inline_password(database_url, "database_url")
    select_checks(checks)
    report = health_checks.with_options(retries=retries, retry_delay_seconds=10)(
        database_url,
        thresholds or HealthThresholds(),
        checks,
        app_instances,
        connection_limit,
        top_n,
    )
    logger = get_run_logger()
    for c in report.checks:
        log = logger.info if c.status == HealthStatus.OK else logger.warning
        log("%s: %s, %s", c.name, c.status, c.summary)
    publish_report(report)
    critical = report.critical
    if critical and fail_on_critical:
        named = ", ".join(f"{c.name} ({c.summary})" for c in critical)
        return Failed(message=f"{len(critical)} critical check(s): {named}", data=report)
    return Completed(message=f"health {report.status}", data=report)

"""health-report: connections, locks, indexes, queries, wraparound, sequences, cache, bloat,
pool settings; one markdown summary and a table per check in the Prefect UI.

The run ends Failed when a check is critical, so a Prefect automation or the
on_failure webhook notification fires; the report is returned either way.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed
from pydantic import Field

from tasks.core.artifacts import artifact_key, publish_table
from tasks.core.errors import retry_transient
from tasks.core.notify import FAILURE_HOOKS
from tasks.core.parameters import DatabaseUrl, documented
from tasks.core.settings import Settings, reject_inline_password
from tasks.health.checks import (
    CHECKS,
    STATUS_ORDER,
    HealthThresholds,
    PoolSettings,
    run_checks,
    select_checks,
    worst,
)

ICON = {"ok": "✅", "warning": "⚠️", "critical": "🛑"}
FINDINGS_IN_SUMMARY = 5


def jsonable(value: Any) -> Any:
    """Numbers and times from the catalog as JSON values (artifacts and --json)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.datetime | dt.date | dt.timedelta):
        return str(value)
    return value


@task(name="run-health-checks", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def health_checks(
    database_url: str | None,
    thresholds: HealthThresholds,
    checks: list[str] | None,
    app_instances: int,
    connection_limit: int | None,
    top_n: int,
) -> tuple[str, list[dict[str, Any]]]:
    info = Settings.load(database_url).connection()
    pool = PoolSettings.from_conninfo(info, connection_limit, app_instances)
    get_run_logger().info("Checking %s", info.redacted())
    results = run_checks(info, thresholds, pool, checks, top_n)
    return info.dbname, [jsonable(r.as_dict()) for r in results]


def md(text: Any) -> str:
    """A value safe inside a markdown table cell or list item."""
    return " ".join(str(text).split()).replace("|", "\\|").replace("`", "'")


def _finding_line(finding: dict[str, Any]) -> str:
    parts = [f"{k}: {md(v)}" for k, v in finding.items() if v not in (None, "", [])][:8]
    return "- " + "; ".join(parts)


def summary_markdown(database: str, results: list[dict[str, Any]]) -> str:
    status = worst([r["status"] for r in results])
    lines = [
        f"# Health of `{md(database)}`: {ICON[status]} {status}",
        "",
        "| check | status | summary |",
        "|---|---|---|",
    ]
    lines += [
        f"| {md(r['title'])} | {ICON[r['status']]} {r['status']} | {md(r['summary'])} |"
        for r in sorted(results, key=lambda r: -STATUS_ORDER[r["status"]])
    ]
    for r in results:
        if r["status"] == "ok":
            continue
        lines += ["", f"## {ICON[r['status']]} {md(r['title'])}", "", md(r["summary"]), ""]
        lines += [_finding_line(f) for f in r["findings"][:FINDINGS_IN_SUMMARY]]
        if len(r["findings"]) > FINDINGS_IN_SUMMARY:
            lines.append(f"- … {len(r['findings']) - FINDINGS_IN_SUMMARY} more in the table")
        if r["advice"]:
            lines += ["", f"**What to do:** {md(r['advice'])}"]
    return "\n".join(lines) + "\n"


def publish_report(database: str, results: list[dict[str, Any]]) -> None:
    create_markdown_artifact(
        summary_markdown(database, results),
        key=artifact_key(f"health-{database}"),
        description=f"Health report of {database}",
    )
    for r in results:
        rows = r["findings"] or r["details"] or [{"status": r["status"], "summary": r["summary"]}]
        publish_table(
            [
                {k: v if not isinstance(v, list | dict) else str(v) for k, v in row.items()}
                for row in rows
            ],
            key=f"health-{database}-{r['name']}",
            description=f"{r['title']}: {r['status']} — {r['summary']}",
        )


@flow(name="health-report", **FAILURE_HOOKS)
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
) -> Any:
    """Check a database like PgHero; the run fails when something is critical."""
    reject_inline_password(database_url, "database_url")
    select_checks(checks)
    database, results = health_checks.with_options(retries=retries, retry_delay_seconds=10)(
        database_url,
        thresholds or HealthThresholds(),
        checks,
        app_instances,
        connection_limit,
        top_n,
    )
    logger = get_run_logger()
    for r in results:
        log = logger.info if r["status"] == "ok" else logger.warning
        log("%s: %s, %s", r["name"], r["status"], r["summary"])
    publish_report(database, results)
    status = worst([r["status"] for r in results])
    report = {"database": database, "status": status, "checks": results}
    critical = [r for r in results if r["status"] == "critical"]
    message = ", ".join(f"{r['name']} ({r['summary']})" for r in critical)
    if critical and fail_on_critical:
        return Failed(message=f"{len(critical)} critical check(s): {message}", data=report)
    return Completed(message=f"health {status}", data=report)

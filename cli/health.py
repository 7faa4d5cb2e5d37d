"""`dbops health`: the health report; exit 1 when a check is critical."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.app import (
    DatabaseUrl,
    JsonFlag,
    app,
    emit,
    fail,
    say,
    use_database_url,
)
from tasks.core.errors import DbopsError


def parse_thresholds(pairs: list[str] | None) -> Any:
    from pydantic import ValidationError

    from tasks.core.settings import parse_tags
    from tasks.health.model import HealthThresholds

    given = parse_tags(",".join(pairs or []))
    unknown = sorted(set(given) - set(HealthThresholds.model_fields))
    if unknown:
        raise DbopsError(
            f"unknown threshold(s) {unknown}; known: {', '.join(HealthThresholds.model_fields)}"
        )
    try:
        return HealthThresholds(**given)  # type: ignore[arg-type]
    except ValidationError as exc:
        first = exc.errors()[0]
        raise DbopsError(
            f"threshold {first['loc'][0]}={given[str(first['loc'][0])]!r}: {first['msg']}"
        ) from None


@app.command()
def health(
    database_url: DatabaseUrl = None,
    check: Annotated[
        list[str] | None, typer.Option("--check", help="only this check (repeatable)")
    ] = None,
    threshold: Annotated[
        list[str] | None,
        typer.Option(help="NAME=VALUE, e.g. long_query_warning_seconds=30 (repeatable)"),
    ] = None,
    app_instances: Annotated[
        int, typer.Option(min=1, help="app instances sharing the database")
    ] = 1,
    connection_limit: Annotated[
        int | None, typer.Option(help="the app's pool per instance; default from DATABASE_URL")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Health report like PgHero's; exit code 1 when a check is critical.

    The report is printed even then, so this does not use run_flow.
    """
    use_database_url(database_url)
    try:
        thresholds = parse_thresholds(threshold)
    except DbopsError as exc:
        fail(str(exc))
    from flows.health import health_report
    from tasks.health.report import ICON, HealthReport

    try:
        state = health_report(
            thresholds=thresholds,
            checks=check,
            app_instances=app_instances,
            connection_limit=connection_limit,
            return_state=True,
        )
    except DbopsError as exc:
        fail(str(exc))
    report = state.result(raise_on_failure=False)
    if not isinstance(report, HealthReport):
        message = str(report) if isinstance(report, BaseException) else state.message
        fail((message or state.name).strip().splitlines()[0])
    lines = [f"health of {report.database}: {report.status}"]
    for c in report.checks:
        lines.append(f"  {ICON[c.status]} {c.status:<8} {c.name:<26} {c.summary}")
        for finding in c.findings[:5]:
            named = {k: v for k, v in finding.items() if k in NAMED_KEYS}
            lines.append(f"        {named or finding}")
    emit(report.model_dump(mode="json"), as_json, "\n".join(lines))
    if not state.is_completed():
        say(f"error: {state.message}")
        raise typer.Exit(1)


NAMED_KEYS = (
    "schema",
    "table",
    "index",
    "sequence",
    "constraint",
    "slot",
    "pid",
    "blocked_pid",
    "blocking_pid",
    "database",
    "query",
    "extension",
    "problem",
    "scope",
)

"""`dbops vacuum`, `analyze`, `reindex`: targeted maintenance with a report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.app import (
    DatabaseUrl,
    JsonFlag,
    app,
    emit,
    run_flow,
    say,
    use_database_url,
)

if TYPE_CHECKING:
    from tasks.maintenance.report import MaintenanceReport

TimeBudget = Annotated[
    float | None,
    typer.Option("--time-budget", help="minutes; start no new table/index after that"),
]
LockTimeout = Annotated[
    float, typer.Option("--lock-timeout", help="seconds to wait for a lock, then skip")
]
DryRun = Annotated[bool, typer.Option("--dry-run", help="only show what would be done")]
Tables = Annotated[
    list[str] | None, typer.Option("--table", help="only this table, schema.table (repeat)")
]


def maintenance_lines(report: MaintenanceReport) -> str:
    lines = [report.summary + (" (dry run)" if report.dry_run else "")]
    for item in report.items:
        sizes = ""
        if "size_mb_before" in item:
            sizes = f"  {item['size_mb_before']} -> {item.get('size_mb_after', '?')} MB"
        dead = ""
        if "dead_tuples_before" in item:
            dead = f"  dead {item['dead_tuples_before']} -> {item.get('dead_tuples_after', '?')}"
        lines.append(
            f"  {item['action']:<27} {item['target']}: {item['status']} "
            f"({item['seconds']} s){dead}{sizes}  [{item['reason']}]"
        )
    return "\n".join(lines)


def _run(flow_fn: Any, database_url: str | None, as_json: bool, **parameters: Any) -> None:
    """Run a maintenance flow and print its report."""
    use_database_url(database_url)
    report = run_flow(flow_fn, **parameters)
    emit(report.model_dump(mode="json"), as_json, maintenance_lines(report))


@app.command()
def vacuum(
    database_url: DatabaseUrl = None,
    all_: Annotated[bool, typer.Option("--all", help="every table, like vacuumdb -z")] = False,
    table: Tables = None,
    full: Annotated[
        bool, typer.Option("--full", help="VACUUM FULL: rewrites and LOCKS each table")
    ] = False,
    time_budget: TimeBudget = None,
    lock_timeout: LockTimeout = 5.0,
    dry_run: DryRun = False,
    as_json: JsonFlag = False,
) -> None:
    """VACUUM (ANALYZE) the tables that need it, biggest payoff first (--all: every table)."""
    from flows.maintenance import FULL_WARNING, vacuum_analyze

    if full:
        say(f"warning: {FULL_WARNING}")
    _run(
        vacuum_analyze,
        database_url,
        as_json,
        all_tables=all_,
        tables=table,
        full=full,
        time_budget_minutes=time_budget,
        lock_timeout_seconds=lock_timeout,
        dry_run=dry_run,
    )


@app.command()
def analyze(
    database_url: DatabaseUrl = None,
    all_: Annotated[bool, typer.Option("--all", help="every table, like `ANALYZE;`")] = False,
    table: Tables = None,
    time_budget: TimeBudget = None,
    lock_timeout: LockTimeout = 5.0,
    dry_run: DryRun = False,
    as_json: JsonFlag = False,
) -> None:
    """ANALYZE the tables never analyzed or much changed since (--all: every table)."""
    from flows.maintenance import analyze as analyze_flow

    _run(
        analyze_flow,
        database_url,
        as_json,
        all_tables=all_,
        tables=table,
        time_budget_minutes=time_budget,
        lock_timeout_seconds=lock_timeout,
        dry_run=dry_run,
    )


@app.command()
def reindex(
    database_url: DatabaseUrl = None,
    index: Annotated[
        list[str] | None, typer.Option("--index", help="only this index, schema.index (repeat)")
    ] = None,
    bloat_threshold: Annotated[
        float, typer.Option(help="rebuild indexes with more estimated bloat (%)")
    ] = 30.0,
    min_size_mb: Annotated[
        float, typer.Option(help="ignore indexes wasting less than this (MB)")
    ] = 10.0,
    time_budget: TimeBudget = None,
    lock_timeout: LockTimeout = 5.0,
    dry_run: DryRun = False,
    as_json: JsonFlag = False,
) -> None:
    """REINDEX INDEX CONCURRENTLY invalid and bloated indexes; drop leftover _ccnew copies."""
    from flows.maintenance import reindex as reindex_flow

    _run(
        reindex_flow,
        database_url,
        as_json,
        indexes=index,
        bloat_threshold_pct=bloat_threshold,
        min_index_mb=min_size_mb,
        time_budget_minutes=time_budget,
        lock_timeout_seconds=lock_timeout,
        dry_run=dry_run,
    )

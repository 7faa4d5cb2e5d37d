"""vacuum-analyze, analyze and reindex: the guide's maintenance tasks, targeted and reported.

Each run publishes a table artifact: every table or index, what was done, how
long it took, dead tuples and size before and after. A run ends Failed when a
table or index could not be processed (lock not granted, error), so that the
failure notification fires; its report is still returned.
"""

from __future__ import annotations

from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed, State
from pydantic import Field

from tasks.core.artifacts import publish_table
from tasks.core.errors import retry_transient
from tasks.core.notify import FAILURE_HOOKS
from tasks.core.parameters import DatabaseUrl, documented
from tasks.core.postgres import ConnInfo
from tasks.core.settings import Settings, reject_inline_password
from tasks.core.slots import database_slot
from tasks.maintenance.vacuum import (
    MB,
    IndexCandidate,
    Mode,
    Outcome,
    TableCandidate,
    VacuumThresholds,
    index_plan_rows,
    plan_rows,
    reindex_candidates,
    run_reindex,
    run_table_maintenance,
    vacuum_candidates,
)

TimeBudget = Annotated[
    float | None,
    Field(gt=0, description="start no new table/index after this many minutes; default none"),
]
LockTimeout = Annotated[
    float,
    Field(gt=0, le=600, description="skip a table/index whose lock is not granted in time"),
]
DryRun = Annotated[bool, Field(description="only report what would be done")]
SlotWait = Annotated[
    float, Field(gt=0, description="how long to wait for other dbops jobs on this database")
]
FULL_WARNING = (
    "VACUUM FULL rewrites each table under an ACCESS EXCLUSIVE lock: every read and write of "
    "that table waits until it finishes, and it needs free disk space as large as the table. "
    "Tables are processed one at a time; a table whose lock is not granted within "
    "lock_timeout is skipped."
)


def _info(database_url: str | None) -> ConnInfo:
    # Resolved inside tasks only, so the password never passes through Prefect.
    return Settings.load(database_url).connection()


@task(name="plan-table-maintenance", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def plan_table_maintenance(
    database_url: str | None,
    mode: Mode,
    all_tables: bool,
    tables: list[str] | None,
    thresholds: VacuumThresholds,
) -> tuple[str, list[TableCandidate]]:
    info = _info(database_url)
    with info.connect() as conn:
        plan = vacuum_candidates(conn, thresholds, mode, all_tables, tables)
    get_run_logger().info("%d table(s) of %s to process", len(plan), info.redacted())
    return info.dbname, plan


@task(name="run-table-maintenance", cache_policy=NO_CACHE)
def table_maintenance(
    database_url: str | None,
    plan: list[TableCandidate],
    mode: Mode,
    full: bool,
    lock_timeout_seconds: float,
    time_budget_seconds: float | None,
    slot_wait_seconds: float,
) -> list[Outcome]:
    logger = get_run_logger()
    info = _info(database_url)
    with database_slot(info, slot_wait_seconds):  # never beside a backup of this database
        outcomes = run_table_maintenance(
            info, plan, mode, full, lock_timeout_seconds, time_budget_seconds
        )
    for outcome in outcomes:
        logger.info(
            "%s %s: %s (%.1f s)", outcome.action, outcome.target, outcome.status, outcome.seconds
        )
    return outcomes


@task(name="plan-reindex", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def plan_reindex(
    database_url: str | None,
    indexes: list[str] | None,
    bloat_threshold_pct: float,
    min_index_mb: float,
    include_invalid: bool,
    cleanup_leftovers: bool,
) -> tuple[str, list[IndexCandidate]]:
    info = _info(database_url)
    with info.connect() as conn:
        plan = reindex_candidates(
            conn,
            bloat_threshold_pct=bloat_threshold_pct,
            min_bytes=int(min_index_mb * MB),
            include_invalid=include_invalid,
            cleanup_leftovers=cleanup_leftovers,
            indexes=indexes,
        )
    return info.dbname, plan


@task(name="run-reindex", cache_policy=NO_CACHE)
def reindex_indexes(
    database_url: str | None,
    plan: list[IndexCandidate],
    lock_timeout_seconds: float,
    time_budget_seconds: float | None,
    slot_wait_seconds: float,
) -> list[Outcome]:
    logger = get_run_logger()
    info = _info(database_url)
    with database_slot(info, slot_wait_seconds):  # never beside a backup of this database
        outcomes = run_reindex(info, plan, lock_timeout_seconds, time_budget_seconds)
    for outcome in outcomes:
        logger.info(
            "%s %s: %s (%.1f s)", outcome.action, outcome.target, outcome.status, outcome.seconds
        )
    return outcomes


def finish(kind: str, database: str, outcomes: list[Outcome], extra: dict[str, Any]) -> State:
    """Publish the run's table artifact; Failed (with the report as data) if anything failed."""
    rows = [o.row() for o in outcomes]
    done = sum(o.status == "done" for o in outcomes)
    failed = [o for o in outcomes if o.failed]
    description = (
        f"{kind} of {database}: {done} done, {len(failed)} failed, "
        f"{len(outcomes) - done - len(failed)} skipped or planned"
    )
    publish_table(
        rows or [{"target": "-", "status": "nothing needed doing"}],
        key=f"{kind}-{database}",
        description=description,
    )
    report = {"database": database, **extra, "summary": description, "items": rows}
    if failed:
        names = ", ".join(f"{o.target} ({o.status})" for o in failed[:5])
        return Failed(
            message=f"{len(failed)} of {len(outcomes)} not processed: {names}", data=report
        )
    return Completed(message=description, data=report)


@flow(name="vacuum-analyze", **FAILURE_HOOKS)
@documented
def vacuum_analyze(
    database_url: DatabaseUrl = None,
    all_tables: Annotated[
        bool, Field(description="every table, like `vacuumdb -z`, not only those that need it")
    ] = False,
    tables: Annotated[
        list[str] | None, Field(description="only these tables (schema.table)")
    ] = None,
    full: Annotated[
        bool, Field(description="VACUUM FULL: rewrites and LOCKS each table; explicit only")
    ] = False,
    thresholds: Annotated[
        VacuumThresholds | None, Field(description="when a table needs VACUUM or ANALYZE")
    ] = None,
    time_budget_minutes: TimeBudget = None,
    lock_timeout_seconds: LockTimeout = 5.0,
    dry_run: DryRun = False,
    retries: Annotated[int, Field(ge=0, le=10, description="retries of connection errors")] = 1,
    slot_wait_seconds: SlotWait = 3600,
) -> Any:
    """VACUUM (ANALYZE) the tables with many dead tuples, ANALYZE the ones with stale
    statistics; biggest payoff first."""
    return _table_flow(
        "vacuum",
        database_url,
        dict(all_tables=all_tables, tables=tables, thresholds=thresholds or VacuumThresholds()),
        dict(
            full=full,
            lock_timeout_seconds=lock_timeout_seconds,
            time_budget_seconds=time_budget_minutes * 60 if time_budget_minutes else None,
            slot_wait_seconds=slot_wait_seconds,
        ),
        dry_run,
        retries,
    )


@flow(name="analyze", **FAILURE_HOOKS)
@documented
def analyze(
    database_url: DatabaseUrl = None,
    all_tables: Annotated[
        bool, Field(description="every table, like the guide's `ANALYZE;`")
    ] = False,
    tables: Annotated[
        list[str] | None, Field(description="only these tables (schema.table)")
    ] = None,
    thresholds: Annotated[
        VacuumThresholds | None, Field(description="when a table's statistics are stale")
    ] = None,
    time_budget_minutes: TimeBudget = None,
    lock_timeout_seconds: LockTimeout = 5.0,
    dry_run: DryRun = False,
    retries: Annotated[int, Field(ge=0, le=10, description="retries of connection errors")] = 1,
    slot_wait_seconds: SlotWait = 3600,
) -> Any:
    """ANALYZE the tables never analyzed or changed much since their last ANALYZE."""
    return _table_flow(
        "analyze",
        database_url,
        dict(all_tables=all_tables, tables=tables, thresholds=thresholds or VacuumThresholds()),
        dict(
            full=False,
            lock_timeout_seconds=lock_timeout_seconds,
            time_budget_seconds=time_budget_minutes * 60 if time_budget_minutes else None,
            slot_wait_seconds=slot_wait_seconds,
        ),
        dry_run,
        retries,
    )


def _table_flow(
    mode: Mode,
    database_url: str | None,
    choose: dict[str, Any],
    run: dict[str, Any],
    dry_run: bool,
    retries: int,
) -> State:
    """What both table flows do: plan, then process (or only show) the plan, then report."""
    reject_inline_password(database_url, "database_url")
    if run["full"]:
        get_run_logger().warning(FULL_WARNING)
    database, plan = plan_table_maintenance.with_options(retries=retries, retry_delay_seconds=10)(
        database_url, mode, **choose
    )
    if dry_run:
        outcomes = plan_rows(plan, mode, run["full"])
    else:
        outcomes = table_maintenance(database_url, plan, mode, **run)
    kind = "vacuum-full" if run["full"] else mode
    return finish(kind, database, outcomes, {"mode": kind, "dry_run": dry_run})


@flow(name="reindex", **FAILURE_HOOKS)
@documented
def reindex(
    database_url: DatabaseUrl = None,
    indexes: Annotated[
        list[str] | None, Field(description="only these indexes (schema.index)")
    ] = None,
    bloat_threshold_pct: Annotated[
        float, Field(ge=0, le=100, description="rebuild indexes with more estimated bloat")
    ] = 30.0,
    min_index_mb: Annotated[
        float, Field(ge=0, description="ignore indexes wasting less than this")
    ] = 10.0,
    include_invalid: Annotated[bool, Field(description="rebuild invalid indexes")] = True,
    cleanup_leftovers: Annotated[
        bool, Field(description="drop _ccnew/_ccold copies of interrupted REINDEX runs")
    ] = True,
    time_budget_minutes: TimeBudget = None,
    lock_timeout_seconds: LockTimeout = 5.0,
    dry_run: DryRun = False,
    retries: Annotated[int, Field(ge=0, le=10, description="retries of connection errors")] = 1,
    slot_wait_seconds: SlotWait = 3600,
) -> Any:
    """REINDEX INDEX CONCURRENTLY invalid and bloated indexes (writes go on meanwhile)."""
    reject_inline_password(database_url, "database_url")
    database, plan = plan_reindex.with_options(retries=retries, retry_delay_seconds=10)(
        database_url,
        indexes,
        bloat_threshold_pct,
        min_index_mb,
        include_invalid,
        cleanup_leftovers,
    )
    if dry_run:
        outcomes = index_plan_rows(plan)
    else:
        outcomes = reindex_indexes(
            database_url,
            plan,
            lock_timeout_seconds,
            time_budget_minutes * 60 if time_budget_minutes else None,
            slot_wait_seconds,
        )
    return finish("reindex", database, outcomes, {"mode": "reindex", "dry_run": dry_run})

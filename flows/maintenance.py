"""vacuum-analyze, analyze and reindex: the guide's maintenance tasks, targeted and reported.

Each run publishes a table artifact: every table or index, what was done, how
long it took, dead tuples and size before and after. A run ends Failed when a
table or index could not be processed (lock not granted, error), so that the
failure notification fires; its report is still returned.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.states import State
from pydantic import Field

from tasks.core.parameters import DatabaseUrl, SlotWait, documented
from tasks.core.settings import reject_inline_password
from tasks.maintenance.outcome import RunLimits
from tasks.maintenance.reindex import index_plan_rows
from tasks.maintenance.report import ended, maintenance_report
from tasks.maintenance.tasks import maintain_tables, plan_reindex, reindex_indexes
from tasks.maintenance.vacuum import Mode, TableJob, VacuumThresholds
from tasks.operations.outcomes import outcome_hooks

TimeBudget = Annotated[
    float | None,
    Field(gt=0, description="start no new table/index after this many minutes; default none"),
]
LockTimeout = Annotated[
    float,
    Field(gt=0, le=600, description="skip a table/index whose lock is not granted in time"),
]
DryRun = Annotated[bool, Field(description="only report what would be done")]
Retries = Annotated[int, Field(ge=0, le=10, description="retries of connection errors")]
AllTables = Annotated[
    bool, Field(description="every table, like `vacuumdb -z`, not only those that need it")
]
Tables = Annotated[list[str] | None, Field(description="only these tables (schema.table)")]
FULL_WARNING = (
    "VACUUM FULL rewrites each table under an ACCESS EXCLUSIVE lock: every read and write of "
    "that table waits until it finishes, and it needs free disk space as large as the table. "
    "Tables are processed one at a time; a table whose lock is not granted within "
    "lock_timeout is skipped."
)


@flow(name="vacuum-analyze", **outcome_hooks("vacuum"))
@documented
def vacuum_analyze(
    database_url: DatabaseUrl = None,
    all_tables: AllTables = False,
    tables: Tables = None,
    full: Annotated[
        bool, Field(description="VACUUM FULL: rewrites and LOCKS each table; explicit only")
    ] = False,
    thresholds: Annotated[
        VacuumThresholds | None, Field(description="when a table needs VACUUM or ANALYZE")
    ] = None,
    time_budget_minutes: TimeBudget = None,
    lock_timeout_seconds: LockTimeout = 5.0,
    dry_run: DryRun = False,
    retries: Retries = 1,
    slot_wait_seconds: SlotWait = 3600,
) -> State:
    """VACUUM (ANALYZE) the tables with many dead tuples, ANALYZE the ones with stale
    statistics; biggest payoff first."""
    reject_inline_password(database_url, "database_url")
    if full:
        get_run_logger().warning(FULL_WARNING)
    job = TableJob(
        mode=Mode.VACUUM,
        all_tables=all_tables,
        tables=tables,
        thresholds=thresholds or VacuumThresholds(),
        full=full,
    )
    limits = RunLimits.of(lock_timeout_seconds, time_budget_minutes, slot_wait_seconds)
    report = maintain_tables(database_url, job, limits, dry_run, retries)
    return ended(report)


@flow(name="analyze", **outcome_hooks("analyze"))
@documented
def analyze(
    database_url: DatabaseUrl = None,
    all_tables: Annotated[
        bool, Field(description="every table, like the guide's `ANALYZE;`")
    ] = False,
    tables: Tables = None,
    thresholds: Annotated[
        VacuumThresholds | None, Field(description="when a table's statistics are stale")
    ] = None,
    time_budget_minutes: TimeBudget = None,
    lock_timeout_seconds: LockTimeout = 5.0,
    dry_run: DryRun = False,
    retries: Retries = 1,
    slot_wait_seconds: SlotWait = 3600,
) -> State:
    """ANALYZE the tables never analyzed or changed much since their last ANALYZE."""
    reject_inline_password(database_url, "database_url")
    job = TableJob(
        mode=Mode.ANALYZE,
        all_tables=all_tables,
        tables=tables,
        thresholds=thresholds or VacuumThresholds(),
    )
    limits = RunLimits.of(lock_timeout_seconds, time_budget_minutes, slot_wait_seconds)
    return ended(maintain_tables(database_url, job, limits, dry_run, retries))


@flow(name="reindex", **outcome_hooks("reindex"))
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
    retries: Retries = 1,
    slot_wait_seconds: SlotWait = 3600,
) -> State:
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
        limits = RunLimits.of(lock_timeout_seconds, time_budget_minutes, slot_wait_seconds)
        outcomes = reindex_indexes(database_url, plan, limits)
    return ended(maintenance_report("reindex", database, outcomes, dry_run))

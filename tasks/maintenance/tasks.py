"""The maintenance flows' Prefect tasks: planning is retried on connection errors; running
takes the database's slot, so it never runs beside a backup of the same database."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.core.errors import retry_transient
from tasks.core.postgres import ConnInfo
from tasks.core.settings import Settings
from tasks.core.slots import database_slot
from tasks.core.statistics import MB
from tasks.maintenance.outcome import Outcome, RunLimits
from tasks.maintenance.reindex import IndexCandidate, reindex_candidates, run_reindex
from tasks.maintenance.report import MaintenanceReport, maintenance_report
from tasks.maintenance.vacuum import (
    TableCandidate,
    TableJob,
    plan_rows,
    run_table_maintenance,
    vacuum_candidates,
)


def _info(database_url: str | None) -> ConnInfo:
    # Resolved inside tasks only, so the password never passes through Prefect.
    return Settings.load(database_url).connection()


def _log(outcomes: list[Outcome]) -> list[Outcome]:
    logger = get_run_logger()
    for o in outcomes:
        logger.info("%s %s: %s (%.1f s)", o.action, o.target, o.status, o.seconds)
    return outcomes


@task(name="plan-table-maintenance", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def plan_table_maintenance(
    database_url: str | None, job: TableJob
) -> tuple[str, list[TableCandidate]]:
    info = _info(database_url)
    with info.connect() as conn:
        plan = vacuum_candidates(conn, job.thresholds, job.mode, job.all_tables, job.tables)
    get_run_logger().info("%d table(s) of %s to process", len(plan), info.redacted())
    return info.dbname, plan


@task(name="run-table-maintenance", cache_policy=NO_CACHE)
def table_maintenance(
    database_url: str | None, plan: list[TableCandidate], job: TableJob, limits: RunLimits
) -> list[Outcome]:
    info = _info(database_url)
    with database_slot(info, limits.slot_wait_seconds):
        outcomes = run_table_maintenance(
            info,
            plan,
            job.mode,
            job.full,
            limits.lock_timeout_seconds,
            limits.time_budget_seconds,
        )
    return _log(outcomes)


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
    database_url: str | None, plan: list[IndexCandidate], limits: RunLimits
) -> list[Outcome]:
    info = _info(database_url)
    with database_slot(info, limits.slot_wait_seconds):
        outcomes = run_reindex(info, plan, limits.lock_timeout_seconds, limits.time_budget_seconds)
    return _log(outcomes)


def maintain_tables(
    database_url: str | None, job: TableJob, limits: RunLimits, dry_run: bool, retries: int
) -> MaintenanceReport:
    """What vacuum-analyze and analyze share: plan, process (or only show) the plan, report."""
    database, plan = plan_table_maintenance.with_options(retries=retries, retry_delay_seconds=10)(
        database_url, job
    )
    if dry_run:
        outcomes = plan_rows(plan, job.mode, job.full)
    else:
        outcomes = table_maintenance(database_url, plan, job, limits)
    return maintenance_report(job.kind, database, outcomes, dry_run)

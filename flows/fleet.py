"""backup-fleet: back up many databases at once, each as its own backup run.

With `deployment` set (e.g. "backup-database/on-demand"), each database becomes a run of that
deployment, picked up by whichever worker is free, on any machine: Prefect distributes, dbops
writes no scheduler of its own. Without it, the backups run here as subflows. One database
failing never stops the others; the run fails at the end, naming them.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed
from pydantic import Field

from flows.backup import backup_database
from tasks.backup.fleet import FleetBackup, FleetStatus, FleetSummary, fleet_targets
from tasks.backup.report import publish_fleet_report
from tasks.backup.tasks import backup_one
from tasks.core.errors import DbopsError
from tasks.core.parameters import documented
from tasks.operations.outcomes import outcome_hooks


@flow(name="backup-fleet", **outcome_hooks("fleet"))
@documented
def backup_fleet(
    databases: Annotated[
        list[str] | None,
        Field(description="secret://BLOCK names or password-less URLs, one per database"),
    ] = None,
    databases_variable: Annotated[
        str | None, Field(description="name of a Prefect Variable holding that list instead")
    ] = None,
    backup_url: Annotated[str | None, Field(description="default BACKUP_URL")] = None,
    deployment: Annotated[
        str | None,
        Field(description="run each backup as a run of this deployment (spreads over workers)"),
    ] = None,
    max_parallel: Annotated[int, Field(ge=1, le=64, description="backups at the same time")] = 2,
    timeout_seconds: Annotated[float, Field(gt=0, description="per backup")] = 6 * 3600,
    retries: Annotated[
        int, Field(ge=0, le=10, description="retries of transient errors, local mode")
    ] = 2,
) -> FleetSummary:
    """Back up many databases, each as its own backup run."""
    logger = get_run_logger()
    targets = fleet_targets(databases, databases_variable)
    logger.info("Backing up %d databases, %d at a time", len(targets), max_parallel)

    pending, results = list(targets), []
    active: dict[PrefectFuture[FleetBackup], str] = {}
    while pending or active:
        while pending and len(active) < max_parallel:
            url = pending.pop(0)
            future = backup_one.submit(
                url, backup_url, deployment, timeout_seconds, retries, backup_database
            )
            active[future] = url
        done = next(as_completed(list(active)))
        url = active.pop(done)
        try:
            results.append(done.result())
        except Exception as exc:  # noqa: BLE001 - one database failing never stops the rest
            results.append(FleetBackup(database=url, status=FleetStatus.FAILED, error=str(exc)))
    publish_fleet_report(results)
    failed = [r.database for r in results if r.status is not FleetStatus.OK]
    if failed:
        raise DbopsError(f"{len(failed)} of {len(targets)} backups failed: {', '.join(failed)}")
    return FleetSummary(backups=results)

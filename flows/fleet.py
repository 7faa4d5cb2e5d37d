"""backup-fleet: back up many databases at once, each as its own backup run.

With `deployment` set (e.g. "backup-database/on-demand"), each database becomes a run of that
deployment, picked up by whichever worker is free, on any machine: Prefect distributes, dbops
writes no scheduler of its own. Without it, the backups run here as subflows. One database
failing never stops the others; the run fails at the end, naming them.
"""

from __future__ import annotations

import time
from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment
from prefect.futures import as_completed
from prefect.variables import Variable
from pydantic import Field

from flows.backup import backup_database
from tasks.core.artifacts import publish_table
from tasks.core.errors import DbopsError
from tasks.core.parameters import documented
from tasks.core.settings import reject_inline_password


@task(name="backup-one", cache_policy=NO_CACHE, task_run_name="backup {database_url}")
def backup_one(
    database_url: str,
    backup_url: str | None,
    deployment: str | None,
    timeout_seconds: float,
    retries: int,
) -> dict:
    started = time.monotonic()
    if deployment:
        parameters = {"database_url": database_url}
        if backup_url:
            parameters["backup_url"] = backup_url
        run = run_deployment(deployment, parameters=parameters, timeout=timeout_seconds)
        # run_deployment never raises on a failed run: the state says what happened. Its
        # result lives with the worker that ran it, so the run's name is what we report.
        if run.state is None or not run.state.is_completed():
            name = run.state.name if run.state else "unknown"
            raise DbopsError(f"{deployment} run {run.name} ended {name}: {run.state.message}")
        return {
            "database": database_url,
            "flow_run": run.name,
            "backup_id": "",
            "size": 0,
            "seconds": round(time.monotonic() - started, 1),
        }
    manifest = backup_database(database_url=database_url, backup_url=backup_url, retries=retries)
    return {
        "database": database_url,
        "flow_run": "",
        "backup_id": manifest["backup_id"],
        "size": manifest["dump"]["size"],
        "seconds": round(time.monotonic() - started, 1),
    }


@flow(name="backup-fleet")
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
) -> list[dict]:
    """Back up many databases, each as its own backup run."""
    logger = get_run_logger()
    targets = list(databases or [])
    if databases_variable:
        value = Variable.get(databases_variable)
        if not isinstance(value, list):
            raise DbopsError(
                f"Prefect Variable {databases_variable!r} must hold a JSON list of database URLs"
            )
        targets += [str(item) for item in value]
    if not targets:
        raise DbopsError("no databases given; pass databases or databases_variable")
    for url in targets:
        reject_inline_password(url, "databases")
    logger.info("Backing up %d databases, %d at a time", len(targets), max_parallel)

    pending, results = list(targets), []
    active: dict = {}  # future -> database
    while pending or active:
        while pending and len(active) < max_parallel:
            url = pending.pop(0)
            active[backup_one.submit(url, backup_url, deployment, timeout_seconds, retries)] = url
        done = next(as_completed(list(active)))
        url = active.pop(done)
        try:
            results.append({**done.result(), "status": "ok", "error": ""})
        except Exception as exc:  # noqa: BLE001 - one database failing never stops the rest
            results.append(
                {"database": url, "status": "failed", "backup_id": "", "error": str(exc)}
            )
    publish_table(results, key="backup-fleet", description=f"Backup of {len(targets)} databases")
    failed = [r["database"] for r in results if r["status"] != "ok"]
    if failed:
        raise DbopsError(f"{len(failed)} of {len(targets)} backups failed: {', '.join(failed)}")
    return results

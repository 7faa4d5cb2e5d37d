"""The backup's Prefect task: the one path every backup takes (nightly, fleet, pre-migration).

It takes the database's concurrency slot, so no backup ever runs beside
maintenance, a restore or a migration of the same database, whoever started it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.deployments import run_deployment

from tasks.backup.encryption import Recipients, backup_recipients
from tasks.backup.fleet import FleetBackup
from tasks.backup.manifest import Manifest
from tasks.backup.parallel import run_parallel_backup
from tasks.backup.pipeline import BackupRequest, run_backup
from tasks.backup.report import publish_backup_report
from tasks.core.artifacts import ProgressReporter
from tasks.core.errors import DbopsError, retry_transient
from tasks.core.settings import Settings
from tasks.core.slots import database_slot
from tasks.storage.destinations import S3Options


def take_backup(
    settings: Settings,
    format: str,
    compression: str,
    level: int,
    labels: list[str],
    include_globals: bool = False,
    slot_wait_seconds: float = 3600,
    recipients: Recipients | None = None,
    jobs: int = 2,
    chunk_mb: int = 128,
) -> Manifest:
    """Dump, store and report one backup under the database's slot (age-encrypted to
    `recipients` when given; the parallel format by `jobs` workers)."""
    logger = get_run_logger()
    info = settings.connection()
    destination = settings.destination()
    logger.info("Backing up %s to %s", info.redacted(), destination.url)
    destination.check_writable()  # a missing bucket is reported before the server is touched
    with info.connect() as conn:
        size = int(conn.execute("SELECT pg_database_size(current_database())").fetchone()[0])  # type: ignore[index]
    progress = ProgressReporter(size, f"Dumping {info.dbname}")
    with database_slot(info, slot_wait_seconds):  # never beside another heavy job on it
        run = run_parallel_backup if format == "parallel" else run_backup
        manifest = run(
            BackupRequest(
                conn=info,
                destination=destination,
                format=format,
                compression=compression,
                level=level,
                labels=labels,
                include_globals=include_globals,
                recipients=recipients,
                jobs=jobs,
                chunk_bytes=chunk_mb * 1024 * 1024,
            ),
            progress=progress,
        )
    progress.done()
    location = destination.url_for(manifest.dump.name)
    publish_backup_report(manifest, location)
    logger.info(
        "Stored %s (%d bytes, sha256 %s)", location, manifest.stored_size, manifest.dump.sha256
    )
    if manifest.encryption is not None:
        logger.info("Encrypted with age to %s", ", ".join(manifest.encryption.recipients))
    return manifest


@task(name="dump-database", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def dump_database(
    database_url: str | None,
    backup_url: str | None,
    s3: S3Options | None,
    format: str,
    compression: str,
    level: int,
    labels: list[str],
    include_globals: bool,
    slot_wait_seconds: float = 3600,
    encrypt_to: list[str] | None = None,
    jobs: int = 2,
    chunk_mb: int = 128,
) -> Manifest:
    """Settings are loaded here, not in the flow, so a password never passes through Prefect.
    `encrypt_to` holds public keys or paths of files of them (else DBOPS_AGE_RECIPIENTS)."""
    settings = Settings.load(database_url, backup_url, s3)
    recipients = backup_recipients(encrypt_to, settings.age_recipients)
    return take_backup(
        settings,
        format,
        compression,
        level,
        labels,
        include_globals,
        slot_wait_seconds,
        recipients,
        jobs,
        chunk_mb,
    )


@task(name="backup-one", cache_policy=NO_CACHE, task_run_name="backup {database_url}")
def backup_one(
    database_url: str,
    backup_url: str | None,
    deployment: str | None,
    timeout_seconds: float,
    retries: int,
    backup_flow: Callable[..., Manifest],
) -> FleetBackup:
    """One database of a fleet: a run of `deployment` on any worker, or `backup_flow` here."""
    started = time.monotonic()
    if not deployment:
        manifest = backup_flow(database_url=database_url, backup_url=backup_url, retries=retries)
        return FleetBackup(
            database=database_url,
            backup_id=manifest.backup_id,
            size=manifest.stored_size,
            seconds=round(time.monotonic() - started, 1),
        )
    parameters = {"database_url": database_url}
    if backup_url:
        parameters["backup_url"] = backup_url
    run = run_deployment(deployment, parameters=parameters, timeout=timeout_seconds)
    # run_deployment never raises on a failed run: the state says what happened. Its
    # result lives with the worker that ran it, so the run's name is what we report.
    if run.state is None or not run.state.is_completed():
        name = run.state.name if run.state else "unknown"
        message = run.state.message if run.state else None
        raise DbopsError(f"{deployment} run {run.name} ended {name}: {message}")
    return FleetBackup(
        database=database_url, flow_run=run.name, seconds=round(time.monotonic() - started, 1)
    )

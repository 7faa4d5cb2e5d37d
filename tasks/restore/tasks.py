"""The restore side's Prefect tasks: a restore into a database, a restore test, its record.

Settings are loaded inside the tasks, so a password never passes through
Prefect parameters; only transient failures are retried.
"""

from __future__ import annotations

import contextlib

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks.application.commands import ApplicationHooks
from tasks.application.window import ApplicationWindow
from tasks.backup.catalog import resolve_source, with_identity
from tasks.core.errors import retry_transient
from tasks.core.postgres import maintenance_conn
from tasks.core.settings import Settings
from tasks.core.slots import database_slot
from tasks.restore.progress import watched
from tasks.restore.restore import RestoreResult, run_restore
from tasks.restore.restore_test import VerificationRecord, verify_restore, write_verification
from tasks.restore.swap import drop, leftovers
from tasks.restore.table_names import TableRequest
from tasks.restore.tables import TableRestoreResult, restore_tables
from tasks.storage.destinations import S3Options


@task(name="restore-backup", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def restore_backup(
    source: str,
    database_url: str | None,
    backup_url: str | None,
    s3: S3Options | None,
    clean: bool,
    from_database: str | None,
    slot_wait_seconds: float = 3600,
    from_server: str | None = None,
    application: ApplicationHooks | None = None,
    identity: str | None = None,
    jobs: int = 2,
) -> RestoreResult:
    """Under the target's slot: never beside a backup, maintenance or migration of it.
    The application is stopped and started around the swap (or the whole restore)."""
    logger = get_run_logger()
    settings = Settings.load(database_url, backup_url, s3)
    target = settings.connection()
    window = ApplicationWindow(application, logger.info, logger.warning, [target.password])
    whose = from_database or target.dbname
    backup = resolve_source(
        source, settings.backup_url, settings.s3, whose, from_server=from_server, home=target
    )
    backup = with_identity(backup, identity or settings.age_identity)  # before any work
    logger.info("Restoring %s into %s", backup.url, target.redacted())
    if backup.manifest is None:
        logger.warning("%s has no dbops manifest: its checksum cannot be verified", backup.url)
    backup, progress = watched(backup, f"Restoring {target.dbname}")
    with database_slot(target, slot_wait_seconds), window.around_restore():
        result = run_restore(
            backup,
            target,
            clean=clean,
            log=logger.info,
            around_swap=window.around_swap(),
            jobs=jobs,
        )
    progress.done()
    result.application = window.report
    logger.info(
        "Restored %d tables in %.1f s (checksum verified: %s)",
        result.tables,
        result.seconds,
        result.checksum_verified,
    )
    return result


@task(name="restore-tables", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def restore_some_tables(
    source: str,
    request: TableRequest,
    database_url: str | None,
    backup_url: str | None,
    s3: S3Options | None,
    from_database: str | None,
    slot_wait_seconds: float = 3600,
    from_server: str | None = None,
    identity: str | None = None,
) -> TableRestoreResult:
    """Under the target's slot, like a whole restore: a few tables beside the live ones."""
    logger = get_run_logger()
    settings = Settings.load(database_url, backup_url, s3)
    target = settings.connection()
    backup = resolve_source(
        source,
        settings.backup_url,
        settings.s3,
        from_database or target.dbname,
        from_server=from_server,
        home=target,
    )
    backup = with_identity(backup, identity or settings.age_identity)
    with database_slot(target, slot_wait_seconds):
        result = restore_tables(backup, target, request, log=logger.info)
    logger.info("Restored %d tables in %.1f s", len(result.tables), result.seconds)
    return result


@task(name="restore-test", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def restore_test(
    source: str,
    database_url: str | None,
    verify_database_url: str | None,
    backup_url: str | None,
    s3: S3Options | None,
    database: str | None,
    smoke_queries: list[str],
    from_server: str | None = None,
    identity: str | None = None,
) -> tuple[VerificationRecord, str]:
    """Restore into a scratch database and check; returns the record and the backup's place.

    `latest` means the DATABASE_URL server's backups when it has some, or `from_server`'s.
    """
    logger = get_run_logger()
    settings = Settings.load(database_url, backup_url, s3, verify_database_url)
    server = settings.scratch_server()
    whose = database
    home = settings.connection() if settings.database_url else None
    if whose is None and home is not None:
        whose = home.dbname
    backup = resolve_source(
        source, settings.backup_url, settings.s3, whose, from_server=from_server, home=home
    )
    # A missing or wrong identity is the surroundings' fault: raised, nothing recorded.
    backup = with_identity(backup, identity or settings.age_identity)
    logger.info("Verifying %s in a scratch database on %s", backup.url, server.redacted())
    # A restore test loads its source's server like a restore does: it waits for the source
    # database's slot when that database is the one DATABASE_URL names.
    source_db = (
        home if home and backup.manifest and backup.manifest.database == home.dbname else None
    )
    with database_slot(source_db) if source_db else contextlib.nullcontext():
        checked, progress = watched(backup, f"Verifying {backup.dump_name}")
        record = verify_restore(checked, server, smoke_queries)
        progress.done()
    logger.info("Verification of %s: %s", backup.url, "OK" if record.ok else record.detail)
    return record, backup.destination.url


@task(name="record-verification", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def record_verification(record: VerificationRecord, location: str, s3: S3Options | None) -> str:
    """Write the sidecar next to the backup; returns where."""
    settings = Settings.load(None, location, s3)
    return write_verification(settings.destination(), record)


class LeftoverDatabases(BaseModel):
    """Scratch and set-aside databases of killed runs on one server."""

    server: str
    found: list[str]
    dropped: list[str]


@task(name="clean-up-leftover-databases", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def clean_up_leftovers(database_url: str | None, drop_them: bool) -> LeftoverDatabases:
    """List `__dbops_restore_`/`__dbops_old_`/`__dbops_verify_`/`__dbops_rehearse_` databases;
    drop them if asked."""
    logger = get_run_logger()
    info = Settings.load(database_url).connection()
    with maintenance_conn(info) as admin:
        found = leftovers(admin)
        for name in found:
            logger.info("Leftover of a killed dbops run: database %r", name)
        dropped = []
        for name in found if drop_them else []:
            drop(admin, name)
            dropped.append(name)
            logger.info("Dropped %r", name)
    return LeftoverDatabases(server=info.redacted(), found=found, dropped=dropped)

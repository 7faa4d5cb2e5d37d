"""restore-database: a backup (or `latest`) into a target database, checked end to end."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from tasks.backup.catalog import resolve_source
from tasks.core.artifacts import publish_table
from tasks.core.errors import retry_transient
from tasks.core.parameters import documented
from tasks.core.settings import Settings, reject_inline_password
from tasks.restore.restore import RestoreResult, run_restore
from tasks.storage.destinations import S3Options


@task(name="restore-backup", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def restore_backup(
    source: str,
    database_url: str | None,
    backup_url: str | None,
    s3: S3Options | None,
    clean: bool,
    from_database: str | None,
) -> RestoreResult:
    logger = get_run_logger()
    settings = Settings.load(database_url, backup_url, s3)
    target = settings.connection()
    backup = resolve_source(
        source, settings.backup_url, settings.s3, from_database or target.dbname
    )
    logger.info("Restoring %s into %s", backup.url, target.redacted())
    if backup.manifest is None:
        logger.warning("%s has no dbops manifest: its checksum cannot be verified", backup.url)
    result = run_restore(backup, target, clean=clean)
    logger.info(
        "Restored %d tables in %.1f s (checksum verified: %s)",
        result.tables,
        result.seconds,
        result.checksum_verified,
    )
    return result


@flow(name="restore-database")
@documented
def restore_database(
    source: Annotated[
        str, Field(description="`latest`, a backup id, an s3:// URL or a path to a dump")
    ] = "latest",
    database_url: Annotated[
        str | None,
        Field(description="target: secret://BLOCK or a URL without password; default DATABASE_URL"),
    ] = None,
    backup_url: Annotated[
        str | None, Field(description="where to look for `latest`/ids; default BACKUP_URL")
    ] = None,
    clean: Annotated[
        bool, Field(description="replace a non-empty target database (drop and recreate)")
    ] = False,
    from_database: Annotated[
        str | None, Field(description="with `latest`: whose backups; default the target's name")
    ] = None,
    s3: Annotated[S3Options | None, Field(description="S3 options; default from AWS_*")] = None,
    retries: Annotated[int, Field(ge=0, le=10, description="retries of transient errors")] = 1,
) -> dict:
    """Restore a backup into a database, checking its SHA-256 and row counts."""
    reject_inline_password(database_url, "database_url")
    result = restore_backup.with_options(retries=retries, retry_delay_seconds=10)(
        source, database_url, backup_url, s3, clean, from_database
    )
    publish_table(
        [{"item": key, "value": str(value)} for key, value in asdict(result).items()],
        key=f"restore-{result.target.rsplit('/', 1)[-1]}",
        description=f"Restore of {result.source}",
    )
    return asdict(result)

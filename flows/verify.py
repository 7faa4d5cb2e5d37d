"""verify-backup: restore a backup into a scratch database, check it, record the result.

The run Fails when the backup does not pass, so a weekly schedule turns an
unrestorable backup into an alert; the result is also written next to the
backup (`<backup_id>.verified.json`) for retention and `dbops list`.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import Field

from tasks.backup.catalog import resolve_source
from tasks.core.artifacts import artifact_key
from tasks.core.errors import DbopsError, retry_transient
from tasks.core.parameters import DatabaseUrl, documented
from tasks.core.settings import Settings, reject_inline_password
from tasks.restore.restore_test import (
    VerificationRecord,
    verification_markdown,
    verify_restore,
    write_verification,
)
from tasks.storage.destinations import S3Options


@task(name="restore-test", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def restore_test(
    source: str,
    database_url: str | None,
    verify_database_url: str | None,
    backup_url: str | None,
    s3: S3Options | None,
    database: str | None,
    smoke_queries: list[str],
) -> tuple[VerificationRecord, str]:
    """Restore into a scratch database and check; returns the record and the backup's place."""
    logger = get_run_logger()
    settings = Settings.load(database_url, backup_url, s3, verify_database_url)
    server = settings.scratch_server()
    whose = database
    if whose is None and settings.database_url:
        whose = settings.connection().dbname
    backup = resolve_source(source, settings.backup_url, settings.s3, whose)
    logger.info("Verifying %s in a scratch database on %s", backup.url, server.redacted())
    record = verify_restore(backup, server, smoke_queries)
    logger.info("Verification of %s: %s", backup.url, "OK" if record.ok else record.detail)
    return record, backup.destination.url


@task(name="record-verification", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def record_verification(record: VerificationRecord, location: str, s3: S3Options | None) -> str:
    settings = Settings.load(None, location, s3)
    return write_verification(settings.destination(), record)


@flow(name="verify-backup")
@documented
def verify_backup(
    source: Annotated[
        str, Field(description="`latest`, a backup id, an s3:// URL or a path to a dump")
    ] = "latest",
    database_url: DatabaseUrl = None,
    verify_database_url: Annotated[
        str | None,
        Field(
            description="server for the scratch database (secret://BLOCK or no password); "
            "default VERIFY_DATABASE_URL, else the DATABASE_URL server"
        ),
    ] = None,
    backup_url: Annotated[
        str | None, Field(description="where to look for `latest`/ids; default BACKUP_URL")
    ] = None,
    database: Annotated[
        str | None,
        Field(description="with `latest`: whose backups; default DATABASE_URL's database"),
    ] = None,
    smoke_queries: Annotated[
        list[str] | None,
        Field(
            description="read-only SQL run in the restored copy; fails on an error, no rows, "
            "or a false/NULL first value"
        ),
    ] = None,
    s3: Annotated[S3Options | None, Field(description="S3 options; default from AWS_*")] = None,
    retries: Annotated[int, Field(ge=0, le=10, description="retries of transient errors")] = 1,
) -> dict:
    reject_inline_password(database_url, "database_url")
    reject_inline_password(verify_database_url, "verify_database_url")
    record, location = restore_test.with_options(retries=retries, retry_delay_seconds=10)(
        source, database_url, verify_database_url, backup_url, s3, database, smoke_queries or []
    )
    if record.backup_id is not None:
        record.recorded_at = record_verification(record, location, s3)
    create_markdown_artifact(
        verification_markdown(record),
        key=f"verify-{artifact_key(record.database or 'backup')}",
        description=f"Restore test of {record.backup_id or record.dump}",
    )
    if not record.ok:
        raise DbopsError(
            f"backup {record.backup_id or record.dump_url} FAILED verification: {record.detail}"
        )
    return record.model_dump(mode="json")

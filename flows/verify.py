"""verify-backup: restore a backup into a scratch database, check it, record the result.

The run Fails when the backup does not pass, so a weekly schedule turns an
unrestorable backup into an alert; the result is also written next to the
backup (`<backup_id>.verified.json`) for retention and `dbops list`.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.core.errors import BackupCheck, BackupFaultError
from tasks.core.parameters import AgeIdentityFile, DatabaseUrl, FromServer, documented
from tasks.core.settings import reject_inline_key, reject_inline_password
from tasks.operations.outcomes import outcome_hooks, verify_finished
from tasks.restore.report import publish_verification_report
from tasks.restore.restore_test import VerificationRecord
from tasks.restore.tasks import record_verification, restore_test
from tasks.storage.destinations import S3Options


@flow(name="verify-backup", **outcome_hooks("verify", "errored"))
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
    from_server: FromServer = None,
    retries: Annotated[int, Field(ge=0, le=10, description="retries of transient errors")] = 1,
    identity: AgeIdentityFile = None,
) -> VerificationRecord:
    """Restore a backup into a scratch database, check it, and record the result beside it."""
    reject_inline_password(database_url, "database_url")
    reject_inline_key(identity)
    reject_inline_password(verify_database_url, "verify_database_url")
    record, location = restore_test.with_options(retries=retries, retry_delay_seconds=10)(
        source,
        database_url,
        verify_database_url,
        backup_url,
        s3,
        database,
        smoke_queries or [],
        from_server,
        identity=identity,
    )
    if record.backup_id is not None:
        record.recorded_at = record_verification(record, location, s3)
    publish_verification_report(record)
    verify_finished(record)
    if not record.ok:
        raise BackupFaultError(
            f"backup {record.backup_id or record.dump_url} FAILED verification: {record.detail}",
            record.failed_check or BackupCheck.RESTORE,
        )
    return record

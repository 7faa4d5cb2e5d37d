"""restore-tables: some tables of a backup into a database, beside what is there."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.core.parameters import (
    AgeIdentityFile,
    BackupUrl,
    DatabaseUrl,
    FromServer,
    Retries,
    S3Parameter,
    SlotWait,
    documented,
)
from tasks.core.settings import reject_inline_key, reject_inline_password
from tasks.restore.report import publish_table_restore_report
from tasks.restore.table_names import TableRequest
from tasks.restore.tables import TableRestoreResult
from tasks.restore.tasks import restore_some_tables


@flow(name="restore-tables")
@documented
def restore_tables(
    source: Annotated[
        str, Field(description="`latest`, a backup id, an s3:// URL or a path to a dump")
    ] = "latest",
    tables: Annotated[
        list[str] | None,
        Field(description="SCHEMA.TABLE to restore (a partitioned one with its partitions)"),
    ] = None,
    schemas: Annotated[
        list[str] | None, Field(description="restore every table of these schemas")
    ] = None,
    into_schema: Annotated[
        str | None,
        Field(description="put the restored tables into this schema (created if missing)"),
    ] = None,
    as_table: Annotated[
        str | None,
        Field(description="the one restored table's new name (same schema unless into_schema)"),
    ] = None,
    database_url: DatabaseUrl = None,
    backup_url: BackupUrl = None,
    from_database: Annotated[
        str | None, Field(description="with `latest`: whose backups; default the target's name")
    ] = None,
    s3: S3Parameter = None,
    from_server: FromServer = None,
    retries: Retries = 1,
    slot_wait_seconds: SlotWait = 3600,
    identity: AgeIdentityFile = None,
) -> TableRestoreResult:
    """Restore some tables of a backup into an existing database without touching anything
    else there; an existing table is never overwritten."""
    reject_inline_password(database_url, "database_url")
    reject_inline_key(identity)
    request = TableRequest(
        tables=tables or [], schemas=schemas or [], into_schema=into_schema, as_table=as_table
    )
    result = restore_some_tables.with_options(retries=retries, retry_delay_seconds=10)(
        source,
        request,
        database_url,
        backup_url,
        s3,
        from_database,
        slot_wait_seconds,
        from_server,
        identity=identity,
    )
    publish_table_restore_report(result)
    return result

"""restore-database: a backup (or `latest`) into a target database, checked end to end."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.application.commands import AppHooksParameter
from tasks.application.hooks import APPLICATION_HOOKS, merged
from tasks.core.parameters import AgeIdentityFile, FromServer, Jobs, SlotWait, documented
from tasks.core.settings import reject_inline_key, reject_inline_password
from tasks.operations.outcomes import outcome_hooks, restore_completed
from tasks.restore.report import publish_restore_report
from tasks.restore.restore import RestoreResult
from tasks.restore.tasks import restore_backup
from tasks.storage.destinations import S3Options


@flow(name="restore-database", **merged(APPLICATION_HOOKS, outcome_hooks("restore", notify=False)))
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
        bool,
        Field(description="replace a non-empty target database (restored aside, then swapped in)"),
    ] = False,
    from_database: Annotated[
        str | None, Field(description="with `latest`: whose backups; default the target's name")
    ] = None,
    s3: Annotated[S3Options | None, Field(description="S3 options; default from AWS_*")] = None,
    from_server: FromServer = None,
    retries: Annotated[int, Field(ge=0, le=10, description="retries of transient errors")] = 1,
    slot_wait_seconds: SlotWait = 3600,
    application: AppHooksParameter = None,
    identity: AgeIdentityFile = None,
    jobs: Jobs = 2,
) -> RestoreResult:
    """Restore a backup into a database, checking its SHA-256 and row counts."""
    reject_inline_password(database_url, "database_url")
    reject_inline_key(identity)
    if application is not None:
        application.check_restore()
    result = restore_backup.with_options(retries=retries, retry_delay_seconds=10)(
        source,
        database_url,
        backup_url,
        s3,
        clean,
        from_database,
        slot_wait_seconds,
        from_server,
        application,
        identity=identity,
        jobs=jobs,
    )
    publish_restore_report(result)
    restore_completed(result, database_url)
    return result

"""backup-missing: what the absence automation of prefect.yaml runs when a database's
`dbops.backup.completed` did not come within its window (26 h for a nightly backup)."""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.core.parameters import documented
from tasks.operations.outcomes import backup_missing, outcome_hooks


@flow(name="backup-missing", **outcome_hooks("alert"))
@documented
def backup_missing_alert(
    resource_id: Annotated[str, Field(description="the silent resource, from the automation")] = "",
    database: Annotated[str, Field(description="its database")] = "",
    server: Annotated[str, Field(description="its server")] = "",
    last_backup_id: Annotated[str, Field(description="the last backup seen")] = "",
    hours: Annotated[float, Field(gt=0, description="the window that passed in silence")] = 26,
) -> str:
    """Report a database whose backups stopped: log, event `dbops.backup.missing`, webhook."""
    return backup_missing(resource_id, database, server, last_backup_id, hours)

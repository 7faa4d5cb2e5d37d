"""What a fleet backup works on and reports: the list of databases, one outcome per database."""

from __future__ import annotations

from enum import StrEnum

from prefect.variables import Variable
from pydantic import BaseModel

from tasks.core.errors import ParameterError
from tasks.core.settings import reject_inline_password


class FleetStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"


class FleetBackup(BaseModel):
    """One database's backup: `flow_run` when a deployment ran it, `backup_id` when run here."""

    database: str
    status: FleetStatus = FleetStatus.OK
    flow_run: str = ""
    backup_id: str = ""
    size: int = 0
    seconds: float = 0.0
    error: str = ""


class FleetSummary(BaseModel):
    backups: list[FleetBackup]


def fleet_targets(databases: list[str] | None, databases_variable: str | None) -> list[str]:
    """The databases given directly, then those in the Prefect Variable; never a password."""
    targets = list(databases or [])
    if databases_variable:
        value = Variable.get(databases_variable)
        if not isinstance(value, list):
            raise ParameterError(
                "databases_variable",
                f"names Prefect Variable {databases_variable!r}, which must hold a JSON list of "
                "database URLs",
            )
        targets += [str(item) for item in value]
    if not targets:
        raise ParameterError("databases", "is empty; pass databases or databases_variable")
    for url in targets:
        reject_inline_password(url, "databases")
    return targets

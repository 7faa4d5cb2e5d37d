"""Prefect events: what happened to a database, in a resource model automations can match.

Every dbops outcome is one event `dbops.<noun>.<verb>` (`dbops.backup.completed`,
`dbops.verify.failed`, ...) about one resource, the database on its server:

    prefect.resource.id   dbops.database.<server>.<database>
    dbops.server          the server's key (system identifier, else host:port)
    dbops.database        the database name
    dbops.backup-id       the backup concerned, when there is one

The payload holds sizes, durations and checksums: numbers and names only, never a URL
with a password or a query result. Emitting never raises: an event is a report, and a
backup that worked must not fail because the Prefect API is busy.
"""

from __future__ import annotations

import re
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

PREFIX = "dbops"
UNKNOWN = "unknown"
# Events name resources; Prefect matches ids with `*` wildcards, so ids carry no spaces.
_UNSAFE = re.compile(r"[^A-Za-z0-9_.:/@~-]")
_CREDENTIALS = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


class Subject(BaseModel):
    """The database an event is about."""

    database: str = Field(UNKNOWN, description="the database name")
    server: str = Field(UNKNOWN, description="the server's key: system identifier or host:port")
    backup_id: str | None = Field(None, description="the backup concerned, if any")

    @property
    def resource_id(self) -> str:
        return resource_id(self.server, self.database)

    def resource(self) -> dict[str, str]:
        resource = {
            "prefect.resource.id": self.resource_id,
            "prefect.resource.name": self.database,
            "prefect.resource.role": "database",
            "dbops.server": self.server,
            "dbops.database": self.database,
        }
        if self.backup_id:
            resource["dbops.backup-id"] = self.backup_id
        return resource


def resource_id(server: str | None, database: str | None) -> str:
    """`dbops.database.<server>.<database>`: what automations match (`dbops.database.*`)."""
    return ".".join(
        [PREFIX, "database", _UNSAFE.sub("_", server or UNKNOWN), database or UNKNOWN]
    ).replace(" ", "_")


def event_name(noun: str, verb: str) -> str:
    return f"{PREFIX}.{noun}.{verb}"


def clean_payload(value: Any) -> Any:
    """Plain JSON values; any `scheme://user:password@` inside a string loses its password."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    if isinstance(value, dict):
        return {str(k): clean_payload(v) for k, v in value.items() if v is not None}
    if isinstance(value, list | tuple | set):
        return [clean_payload(v) for v in value]
    if isinstance(value, str):
        return _CREDENTIALS.sub(r"\1***@", value)
    if isinstance(value, int | float | bool) or value is None:
        return value
    return clean_payload(str(value))


def emit_dbops_event(
    noun: str, verb: str, subject: Subject, payload: dict[str, Any] | None = None
) -> UUID | None:
    """Emit `dbops.<noun>.<verb>` about `subject`; returns the event id, None when not sent."""
    from prefect.events import emit_event
    from prefect.logging import get_logger

    logger = get_logger("dbops.events")
    name = event_name(noun, verb)
    body = clean_payload({**(payload or {}), "backup_id": subject.backup_id})
    try:
        event = emit_event(event=name, resource=subject.resource(), payload=body)
    except Exception as exc:  # noqa: BLE001 - an event is a report, never a reason to fail
        logger.warning("could not emit %s: %s", name, type(exc).__name__)
        return None
    if event is None:
        return None
    logger.debug("emitted %s about %s", name, subject.resource_id)
    return event.id

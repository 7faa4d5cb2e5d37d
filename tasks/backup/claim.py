"""Backup ids unique by construction: an id is claimed with a create-if-absent write.

No check-then-write: two backups that start in the same second both try to
create `<id>.started.json`; the store lets exactly one succeed (a local hard
link, S3's `If-None-Match: *`), and the other takes the next id (`-2`, `-3`...).
The claim stays with the backup and names the objects it will write, so a run
killed before its manifest leaves objects that prune can recognise as its own.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from tasks.backup.identity import ServerIdentity
from tasks.backup.manifest import CLAIM_SUFFIX, ManifestError, new_backup_id
from tasks.core.errors import DbopsError, first_line
from tasks.storage.destinations import Destination, ObjectReader

MAX_ATTEMPTS = 50


class Claim(BaseModel):
    """What a started backup will write; without a manifest, the leftovers of a killed run."""

    backup_id: str
    database: str
    server: ServerIdentity | None = None
    started_at: datetime
    objects: list[str] = Field(description="the objects the backup writes, manifest excluded")

    @property
    def name(self) -> str:
        return self.backup_id + CLAIM_SUFFIX


def claim_backup_id(
    destination: Destination,
    database: str,
    when: datetime,
    suffixes: list[str],
    server: ServerIdentity | None,
) -> Claim:
    """Create the first free `<id>.started.json`; the id is then this backup's alone."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        backup_id = new_backup_id(database, when, attempt)
        claim = Claim(
            backup_id=backup_id,
            database=database,
            server=server,
            started_at=when,
            objects=[backup_id + suffix for suffix in suffixes],
        )
        if destination.create_if_absent(claim.name, claim.model_dump_json(indent=2).encode()):
            return claim
    raise DbopsError(
        f"{MAX_ATTEMPTS} backups of {database!r} already claimed this second under "
        f"{destination.url}; try again"
    )


def read_claim(destination: ObjectReader, name: str) -> Claim:
    data = destination.read_bytes(name)
    try:
        return Claim.model_validate_json(data)
    except ValueError as exc:
        raise ManifestError(
            f"{destination.url_for(name)} is not a valid dbops claim: {first_line(exc)}"
        ) from None

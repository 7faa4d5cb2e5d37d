"""Backup ids unique by construction: an id is claimed with a create-if-absent write.

No check-then-write: two backups that start in the same second both try to
create `<id>.started.json`; the store lets exactly one succeed (a local hard
link, S3's `If-None-Match: *`), and the other takes the next id (`-2`, `-3`...).
The claim stays with the backup and names the objects it will write, so a run
killed before its manifest leaves objects that prune can recognise as its own.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from datetime import datetime

import botocore.exceptions
from pydantic import BaseModel, Field

from tasks.backup.identity import ServerIdentity
from tasks.backup.manifest import CLAIM_SUFFIX, ManifestError, new_backup_id
from tasks.core.errors import DbopsError, first_line
from tasks.storage.destinations import (
    PARTIAL_MARK,
    Destination,
    LocalDestination,
    S3Destination,
    _explain_s3_error,
)

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
        if create_if_absent(destination, claim.name, claim.model_dump_json(indent=2).encode()):
            return claim
    raise DbopsError(
        f"{MAX_ATTEMPTS} backups of {database!r} already claimed this second under "
        f"{destination.url}; try again"
    )


def read_claim(destination: Destination, name: str) -> Claim:
    data = destination.read_bytes(name)
    try:
        return Claim.model_validate_json(data)
    except ValueError as exc:
        raise ManifestError(
            f"{destination.url_for(name)} is not a valid dbops claim: {first_line(exc)}"
        ) from None


def create_if_absent(destination: Destination, name: str, data: bytes) -> bool:
    """Write `name` only if no object has that name; False when one has."""
    if isinstance(destination, LocalDestination):
        return _create_local(destination, name, data)
    if isinstance(destination, S3Destination):
        return _create_s3(destination, name, data)
    raise DbopsError(f"{destination.url} cannot create objects exclusively")


def _create_local(destination: LocalDestination, name: str, data: bytes) -> bool:
    destination.check_writable()
    final = destination.root / name
    temp = destination.root / f".{name}{PARTIAL_MARK}{uuid.uuid4().hex}"
    try:
        with open(temp, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        try:
            os.link(temp, final)  # atomic, and fails when `final` exists: never replaces
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()


def _create_s3(destination: S3Destination, name: str, data: bytes) -> bool:
    try:
        destination.client.put_object(
            Bucket=destination.bucket,
            Key=destination.key(name),
            Body=data,
            IfNoneMatch="*",
            **destination._write_args(),
        )
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False  # taken; a conflict is a concurrent claim of the same name
        if code == "NotImplemented":
            raise DbopsError(
                f"{destination.url} does not support conditional writes (If-None-Match), "
                "which dbops needs to give every backup its own id; use a store that does"
            ) from None
        raise _explain_s3_error(exc, destination.bucket) from None
    except botocore.exceptions.BotoCoreError as exc:
        raise _explain_s3_error(exc, destination.bucket) from None
    return True

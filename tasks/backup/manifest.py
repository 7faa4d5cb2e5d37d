"""The manifest: what makes a dump a backup. Written last; a dump without one is ignored."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks.backup.identity import ServerIdentity, server_key
from tasks.core.errors import DbopsError, first_line
from tasks.storage.destinations import Destination

MANIFEST_SUFFIX = ".manifest.json"
# The verification result lives in a sidecar next to the manifest, which stays immutable.
VERIFIED_SUFFIX = ".verified.json"
# Claimed (create-if-absent) before the first byte of a backup is written: it makes the id
# unique, and without a manifest it marks a backup whose run never finished.
CLAIM_SUFFIX = ".started.json"
FORMAT_VERSION = 1
TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"
BACKUP_ID = re.compile(r"^(?P<database>.+)_(?P<stamp>\d{8}_\d{6})(?:-(?P<n>\d+))?$")
# Kept as they are in a backup id; every other character (`~` and `.` included) becomes ~XX
# per UTF-8 byte, so two database names never share an id (`a b` -> a~20, `a_b` stays a_b)
# and an id never contains a dot: an object's backup id is its name up to the first dot.
_PLAIN = re.compile(r"[A-Za-z0-9_-]")


class ObjectInfo(BaseModel):
    """One stored object of a backup and how to check it."""

    name: str
    size: int
    sha256: str
    raw_size: int | None = Field(None, description="bytes before compression")


class Verification(BaseModel):
    """A restore test's outcome; the sidecar may hold more fields, which are ignored here."""

    verified_at: datetime
    ok: bool
    detail: str = ""


class Manifest(BaseModel):
    format_version: int = FORMAT_VERSION
    backup_id: str
    database: str
    source: str = Field(description="the server, without any password")
    server: ServerIdentity | None = Field(
        None, description="the server's identity; None in manifests written before it existed"
    )
    server_version: str
    pg_dump_version: str
    format: Literal["plain", "custom"]
    compression: Literal["gzip", "zstd", "none"]
    compression_level: int
    dump: ObjectInfo
    globals: ObjectInfo | None = None
    started_at: datetime
    finished_at: datetime
    duration_seconds: float
    row_counts: dict[str, int]
    roles: list[str] = Field(
        default_factory=list,
        description="roles the dump's objects are owned by or granted to (a verify server "
        "needs them); empty in manifests written before it existed",
    )
    labels: list[str] = Field(default_factory=list)
    stages: dict[str, Any] = Field(default_factory=dict)
    verification: Verification | None = None
    dbops_version: str = ""

    @property
    def manifest_name(self) -> str:
        return self.backup_id + MANIFEST_SUFFIX

    @property
    def server_key(self) -> str:
        return server_key(self.server)

    @property
    def claim_name(self) -> str:
        return self.backup_id + CLAIM_SUFFIX

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


class ManifestError(DbopsError):
    """A manifest that exists but cannot be read as one (another version, edited, truncated)."""


def dump_suffix(fmt: str, compression: str) -> str:
    if fmt == "custom":
        return ".dump"
    return ".sql" + {"gzip": ".gz", "zstd": ".zst", "none": ""}[compression]


def encode_database(database: str) -> str:
    return "".join(
        c if _PLAIN.fullmatch(c) else "".join(f"~{b:02x}" for b in c.encode()) for c in database
    )


def backup_id_of(name: str) -> str:
    return name.split(".", 1)[0]


def database_of_id(backup_id: str) -> str | None:
    """The encoded database name in an id, or None when it is not a dbops id."""
    match = BACKUP_ID.match(backup_id)
    return match.group("database") if match else None


def new_backup_id(database: str, when: datetime, attempt: int = 1) -> str:
    """`<encoded name>_<UTC stamp>`, then `-2`, `-3`... when that id is already claimed."""
    stamp = when.astimezone(UTC).strftime(TIMESTAMP_FORMAT)
    return f"{encode_database(database)}_{stamp}" + (f"-{attempt}" if attempt > 1 else "")


def read_manifest(destination: Destination, name: str) -> Manifest:
    """The manifest; ManifestError when unreadable, storage errors as they are (not skipped)."""
    data = destination.read_bytes(name)
    try:
        return Manifest.model_validate_json(data)
    except (ValueError, json.JSONDecodeError) as exc:
        problem = first_line(exc)
        raise ManifestError(
            f"{destination.url_for(name)} is not a valid dbops manifest: {problem}"
        ) from None


def list_manifests(
    destination: Destination, database: str | None = None, server: str | None = None
) -> list[Manifest]:
    """Every complete backup under the destination (of `database` on `server`), newest first.

    A manifest whose dump object is missing is not a backup; one that cannot be parsed is
    skipped here (prune protects its objects); a storage error is raised, not skipped.
    """
    objects = {obj.name for obj in destination.list()}
    manifests = []
    for name in sorted(objects):
        if not name.endswith(MANIFEST_SUFFIX):
            continue
        try:
            manifest = read_manifest(destination, name)
        except ManifestError:
            continue
        if manifest.dump.name not in objects:
            continue
        if database and manifest.database != database:
            continue
        if server and manifest.server_key != server:
            continue
        sidecar = manifest.backup_id + VERIFIED_SUFFIX
        if sidecar in objects:
            manifest.verification = read_verification(destination, sidecar) or manifest.verification
        manifests.append(manifest)
    manifests.sort(key=lambda m: (m.started_at, m.backup_id), reverse=True)
    return manifests


def read_verification(
    destination: Destination, name: str, strict: bool = False
) -> Verification | None:
    """The sidecar's result. Lenient (listing): None when missing or unreadable, never
    'verified'. Strict (prune): an unreadable sidecar or a storage error is raised."""
    try:
        return Verification.model_validate_json(destination.read_bytes(name))
    except ValueError as exc:
        if strict:
            raise ManifestError(
                f"verification record {destination.url_for(name)} is unreadable "
                f"({first_line(exc)}); repair or delete it (the backup then counts as unverified)"
            ) from None
        return None
    except DbopsError:
        if strict:
            raise
        return None


def write_manifest(destination: Destination, manifest: Manifest) -> None:
    destination.write_bytes(manifest.manifest_name, manifest.to_json().encode())

"""The manifest: what makes a dump a backup. Written last; a dump without one is ignored."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks.core.errors import DbopsError
from tasks.storage.destinations import Destination

MANIFEST_SUFFIX = ".manifest.json"
# The verification result lives in a sidecar next to the manifest, which stays immutable.
VERIFIED_SUFFIX = ".verified.json"
FORMAT_VERSION = 1
TIMESTAMP_FORMAT = "%Y%m%d_%H%M%S"
BACKUP_ID = re.compile(r"^(?P<database>.+)_(?P<stamp>\d{8}_\d{6})$")


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
    labels: list[str] = Field(default_factory=list)
    stages: dict[str, Any] = Field(default_factory=dict)
    verification: Verification | None = None
    dbops_version: str = ""

    @property
    def manifest_name(self) -> str:
        return self.backup_id + MANIFEST_SUFFIX

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)


def dump_suffix(fmt: str, compression: str) -> str:
    if fmt == "custom":
        return ".dump"
    return ".sql" + {"gzip": ".gz", "zstd": ".zst", "none": ""}[compression]


def new_backup_id(database: str, when: datetime) -> str:
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", database)
    return f"{safe}_{when.astimezone(UTC).strftime(TIMESTAMP_FORMAT)}"


def read_manifest(destination: Destination, name: str) -> Manifest:
    try:
        return Manifest.model_validate_json(destination.read_bytes(name))
    except (ValueError, json.JSONDecodeError) as exc:
        raise DbopsError(
            f"{destination.url_for(name)} is not a valid dbops manifest: {exc}"
        ) from None


def list_manifests(destination: Destination, database: str | None = None) -> list[Manifest]:
    """Every complete backup under the destination, newest first.

    A manifest whose dump object is missing is not a backup either.
    """
    objects = {obj.name: obj for obj in destination.list()}
    manifests = []
    for name in objects:
        if not name.endswith(MANIFEST_SUFFIX):
            continue
        try:
            manifest = read_manifest(destination, name)
        except DbopsError:
            continue
        if manifest.dump.name not in objects:
            continue
        if database and manifest.database != database:
            continue
        sidecar = manifest.backup_id + VERIFIED_SUFFIX
        if sidecar in objects:
            manifest.verification = read_verification(destination, sidecar) or manifest.verification
        manifests.append(manifest)
    manifests.sort(key=lambda m: (m.started_at, m.backup_id), reverse=True)
    return manifests


def read_verification(destination: Destination, name: str) -> Verification | None:
    """The sidecar's result, or None when it is missing or unreadable (never 'verified')."""
    try:
        return Verification.model_validate_json(destination.read_bytes(name))
    except (DbopsError, ValueError):
        return None


def write_manifest(destination: Destination, manifest: Manifest) -> None:
    destination.write_bytes(manifest.manifest_name, manifest.to_json().encode())

"""Copy records: which other destinations hold a backup, kept beside the backup itself.

A copy is recorded in a new object `<id>.copy-<destination hash>.json` at the source,
written create-if-absent once the copy's manifest is in place: no existing backup object
is ever rewritten (so Object Lock costs nothing), and prune deletes the records with
their backup. The hash names the destination, so copying twice to one place records once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime

from pydantic import BaseModel, Field

from tasks.backup.manifest import Manifest, ManifestError, ObjectInfo
from tasks.core.errors import first_line
from tasks.storage.destinations import ObjectReader

COPY_MARK = ".copy-"
COPY_SUFFIX = ".json"


class CopyRecord(BaseModel):
    """One finished, checked copy of a backup at another destination."""

    backup_id: str
    destination: str = Field(description="where the copy is (URL or directory)")
    copied_at: datetime
    objects: list[str] = Field(description="the objects copied, each checked by its SHA-256")
    bytes: int = 0

    @property
    def name(self) -> str:
        return record_name(self.backup_id, self.destination)


def destination_hash(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:16]


def record_name(backup_id: str, destination_url: str) -> str:
    return f"{backup_id}{COPY_MARK}{destination_hash(destination_url)}{COPY_SUFFIX}"


def is_record(name: str) -> bool:
    return COPY_MARK in name and name.endswith(COPY_SUFFIX)


def records_by_backup(names: Iterable[str]) -> dict[str, set[str]]:
    """The names carrying a copy mark, by the backup id before it: one pass over a listing,
    however many backups then look theirs up."""
    found: dict[str, set[str]] = {}
    for name in names:
        if COPY_MARK in name:
            found.setdefault(name.split(COPY_MARK, 1)[0], set()).add(name)
    return found


def backup_objects(manifest: Manifest) -> list[ObjectInfo]:
    """Every data object a manifest names with its checksum (dump, globals, any later kind)."""
    found: list[ObjectInfo] = []
    for name in type(manifest).model_fields:
        value = getattr(manifest, name)
        values = value if isinstance(value, list) else [value]
        found += [v for v in values if isinstance(v, ObjectInfo)]
    return found


def read_records(
    destination: ObjectReader, names: Iterable[str], backup_id: str
) -> list[CopyRecord]:
    """The copies recorded for `backup_id`, from the object names a listing gave (or its
    `records_by_backup` entry)."""
    prefix = backup_id + COPY_MARK
    records = []
    for name in sorted(n for n in names if n.startswith(prefix) and n.endswith(COPY_SUFFIX)):
        try:
            records.append(CopyRecord.model_validate_json(destination.read_bytes(name)))
        except ValueError as exc:
            raise ManifestError(
                f"copy record {destination.url_for(name)} is unreadable ({first_line(exc)}); "
                "delete it and copy the backup again"
            ) from None
    return records

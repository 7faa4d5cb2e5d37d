"""Reading a destination's backups and deleting what a retention plan says.

Only backups with a manifest are counted or touched; a backup's objects are
deleted dump first and manifest last, so a prune that dies half-way leaves at
worst a manifest without its dump, which no reader takes for a backup and the
next prune finishes deleting. Reading fails closed: a storage error or an
unreadable verification record stops the prune before anything is deleted,
and nothing that shares an id with an unreadable manifest is ever touched.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TypeVar

import botocore.exceptions
from pydantic import BaseModel, Field

from tasks.backup.claim import Claim, read_claim
from tasks.backup.manifest import (
    CLAIM_SUFFIX,
    MANIFEST_SUFFIX,
    VERIFIED_SUFFIX,
    Manifest,
    ManifestError,
    backup_id_of,
    database_of_id,
    encode_database,
    metadata_reads,
    read_concurrently,
    read_manifest,
    read_verification,
)
from tasks.copies.records import backup_objects, records_by_backup
from tasks.core.errors import DbopsError, TransientError
from tasks.retention.plan import RetentionPlan
from tasks.storage.destinations import Destination, IncompleteWrite, ObjectReader, StoredObject
from tasks.storage.object_lock import ObjectLockedError

T = TypeVar("T")


@dataclass
class Started:
    """A claimed backup that never got its manifest: running, or killed."""

    claim: Claim
    since: datetime  # when the store received the claim (not the backing-up host's clock)
    present: list[str]  # its objects that exist, in deletion order: the claim last


@dataclass
class Inventory:
    """The backups under a destination, plus leftovers of half-deleted ones."""

    manifests: list[Manifest]
    leftovers: list[str]
    ignored: list[str]  # objects no manifest or claim names: not backups, never touched
    unreadable: list[str] = field(default_factory=list)  # manifests/claims: ids left alone
    started: list[Started] = field(default_factory=list)


def _mine(name: str, database: str | None) -> bool:
    return not database or database_of_id(backup_id_of(name)) == encode_database(database)


def take_inventory(destination: Destination, database: str | None = None) -> Inventory:
    """Read every manifest once; a manifest whose dump is gone is a leftover, not a backup."""
    listing = destination.list()
    with metadata_reads(destination, listing) as source:
        return _inventory(source, listing, database)


def _inventory(
    source: ObjectReader, listing: list[StoredObject], database: str | None
) -> Inventory:
    stored = {obj.name: obj for obj in listing}
    objects = set(stored)
    inventory = Inventory([], [], [])
    named: set[str] = set()
    protected: set[str] = set()  # ids of unreadable manifests and claims

    def protect(name: str) -> None:
        inventory.unreadable.append(name)
        protected.add(backup_id_of(name))

    copies = records_by_backup(objects)
    manifest_names = sorted(n for n in objects if n.endswith(MANIFEST_SUFFIX))
    loaded = read_concurrently(lambda n: read_manifest(source, n), manifest_names)
    for name, manifest in loaded.items():
        if isinstance(manifest, ManifestError):
            protect(name)
            continue
        own = backup_object_names(manifest, copies)
        if not all(backup_id_of(n) == manifest.backup_id for n in own):
            protect(name)  # names objects outside its backup: never acted on
            continue
        named.update(own)
        if database and manifest.database != database:
            continue
        if manifest.dump.name not in objects:
            inventory.leftovers.extend(n for n in own if n in objects)
            continue
        inventory.manifests.append(manifest)
    sidecars = [m.backup_id + VERIFIED_SUFFIX for m in inventory.manifests]
    records = read_concurrently(
        lambda n: read_verification(source, n, strict=True),
        [n for n in sidecars if n in objects],
    )
    for manifest, sidecar in zip(inventory.manifests, sidecars, strict=True):
        record = records.get(sidecar)
        if isinstance(record, ManifestError):
            raise record  # fails closed: nothing is deleted beside an unreadable record
        if sidecar in records:
            manifest.verification = record
    for name in sorted(n for n in objects if n.endswith(CLAIM_SUFFIX) and n not in named):
        if backup_id_of(name) in protected or not _mine(name, database):
            continue
        claim = _read(read_claim, source, name, protect)
        if claim is None:
            continue
        own = [n for n in claim.objects if backup_id_of(n) == claim.backup_id and n in objects]
        named.update([*own, name])
        inventory.started.append(Started(claim, stored[name].modified, [*own, name]))
    named |= {n for n in objects if backup_id_of(n) in protected}
    for name in sorted(objects - named):
        if name.endswith(VERIFIED_SUFFIX) and _mine(name, database):
            inventory.leftovers.append(name)
    inventory.ignored = sorted(
        n for n in objects - named if not n.endswith((VERIFIED_SUFFIX, MANIFEST_SUFFIX))
    )
    inventory.manifests.sort(key=lambda m: (m.started_at, m.backup_id), reverse=True)
    return inventory


def _read(
    read: Callable[[ObjectReader, str], T],
    destination: ObjectReader,
    name: str,
    protect: Callable[[str], None],
) -> T | None:
    """The parsed object, or None when it cannot be parsed (then its id is protected)."""
    try:
        return read(destination, name)
    except ManifestError:
        protect(name)
        return None


def backup_object_names(manifest: Manifest, copies: dict[str, set[str]] | None = None) -> list[str]:
    """A backup's objects in deletion order: the manifest, its completion mark, goes last.
    Its copy records are those `copies` (`records_by_backup` of a listing) names for its id."""
    names = [info.name for info in backup_objects(manifest)]  # the dump first
    names.append(manifest.backup_id + VERIFIED_SUFFIX)
    names += sorted((copies or {}).get(manifest.backup_id, ()))
    names += [manifest.claim_name, manifest.manifest_name]
    return names


class PruneResult(BaseModel):
    deleted_backups: list[str] = Field(default_factory=list)
    deleted_objects: list[str] = Field(default_factory=list)
    aborted_uploads: list[str] = Field(default_factory=list)
    locked: list[str] = Field(
        default_factory=list, description="deletions S3 Object Lock refused: the backup stays"
    )


def apply_plan(destination: Destination, plan: RetentionPlan, inventory: Inventory) -> PruneResult:
    """Delete what the plan marks for deletion; a refused plan deletes nothing."""
    if plan.refused:
        raise DbopsError(f"prune refused: {plan.refused}")
    present = {obj.name for obj in destination.list()}
    copies = records_by_backup(present)
    by_id = {m.backup_id: m for m in inventory.manifests}
    result = PruneResult()
    for item in plan.delete:
        try:
            for name in backup_object_names(by_id[item.backup_id], copies):
                if name in present:
                    _delete(destination, name)
                    result.deleted_objects.append(name)
        except ObjectLockedError as exc:
            # Not deleted, not a failure: the lock is doing its job; the rest goes on.
            result.locked.append(f"{item.backup_id}: {exc}")
            continue
        result.deleted_backups.append(item.backup_id)
    for name in plan.leftovers:
        _delete(destination, name)
        result.deleted_objects.append(name)
    return result


def _delete(destination: Destination, name: str) -> None:
    try:
        destination.delete(name)
    except ObjectLockedError:
        raise
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        error = TransientError if isinstance(exc, botocore.exceptions.BotoCoreError) else DbopsError
        raise error(
            f"deleting {destination.url_for(name)} failed ({type(exc).__name__}); "
            "run prune again to finish: a backup missing its dump is no longer listed"
        ) from None
    except OSError as exc:
        raise DbopsError(
            f"deleting {destination.url_for(name)} failed: {exc.strerror}; "
            "fix the permissions and run prune again"
        ) from None


@dataclass
class Abandoned:
    """What killed runs left, old enough that no running backup can own it."""

    uploads: list[IncompleteWrite] = field(default_factory=list)
    started: list[Started] = field(default_factory=list)

    def names(self) -> list[str]:
        return [w.key for w in self.uploads] + [n for s in self.started for n in s.present]


def safe_age(inventory: Inventory, older_than: timedelta) -> timedelta:
    """At least twice the longest backup recorded here: a running backup is never touched."""
    longest = max((m.duration_seconds for m in inventory.manifests), default=0.0)
    return max(older_than, timedelta(seconds=2 * longest))


def find_abandoned(
    destination: Destination, inventory: Inventory, older_than: timedelta, now: datetime
) -> Abandoned:
    """Incomplete writes, and claimed backups without a manifest, older than `older_than`."""
    return Abandoned(
        uploads=stale_incomplete_writes(destination, older_than, now),
        started=[s for s in inventory.started if now - s.since >= older_than],
    )


def stale_incomplete_writes(
    destination: Destination, older_than: timedelta, now: datetime
) -> list[IncompleteWrite]:
    """Incomplete writes older than `older_than`: they cost storage and no listing shows them."""
    return [w for w in destination.incomplete_writes() if now - w.since >= older_than]


def clean_abandoned(destination: Destination, abandoned: Abandoned) -> list[str]:
    """Abort stale uploads, delete what killed runs left (their claim last); names cleaned."""
    for write in abandoned.uploads:
        destination.abort_incomplete_write(write)
    for started in abandoned.started:
        for name in started.present:
            _delete(destination, name)
    return abandoned.names()

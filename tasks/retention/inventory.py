"""Reading a destination's backups and deleting what a retention plan says.

Only backups with a manifest are counted or touched; a backup's objects are
deleted dump first and manifest last, so a prune that dies half-way leaves at
worst a manifest without its dump, which no reader takes for a backup and the
next prune finishes deleting.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import botocore.exceptions
from pydantic import BaseModel, Field

from tasks.backup.manifest import (
    MANIFEST_SUFFIX,
    VERIFIED_SUFFIX,
    Manifest,
    read_manifest,
    read_verification,
)
from tasks.core.errors import DbopsError, TransientError
from tasks.retention.plan import RetentionPlan
from tasks.storage.destinations import Destination, IncompleteWrite


@dataclass
class Inventory:
    """The backups under a destination, plus leftovers of half-deleted ones."""

    manifests: list[Manifest]
    leftovers: list[str]
    ignored: list[str]  # dumps without a manifest: not backups, never touched


def take_inventory(destination: Destination, database: str | None = None) -> Inventory:
    """Read every manifest once; a manifest whose dump is gone is a leftover, not a backup."""
    objects = {obj.name for obj in destination.list()}
    manifests: list[Manifest] = []
    leftovers: list[str] = []
    named: set[str] = set()
    for name in sorted(objects):
        if not name.endswith(MANIFEST_SUFFIX):
            continue
        try:
            manifest = read_manifest(destination, name)
        except DbopsError:
            continue  # not ours to judge: never deleted
        own = _backup_objects(manifest)
        if not all(n.startswith(manifest.backup_id + ".") for n in own):
            continue  # a manifest naming objects outside its backup: never acted on
        named.update(own)
        if database and manifest.database != database:
            continue
        if manifest.dump.name not in objects:
            leftovers.extend(n for n in own if n in objects)
            continue
        sidecar = manifest.backup_id + VERIFIED_SUFFIX
        if sidecar in objects:
            manifest.verification = read_verification(destination, sidecar)
        manifests.append(manifest)
    for name in sorted(objects):
        if name.endswith(VERIFIED_SUFFIX) and name not in named:
            backup_id = name[: -len(VERIFIED_SUFFIX)]
            if not database or backup_id.startswith(f"{database}_"):
                leftovers.append(name)
    ignored = sorted(
        n for n in objects if n not in named and not n.endswith((VERIFIED_SUFFIX, MANIFEST_SUFFIX))
    )
    manifests.sort(key=lambda m: (m.started_at, m.backup_id), reverse=True)
    return Inventory(manifests, leftovers, ignored)


def _backup_objects(manifest: Manifest) -> list[str]:
    """A backup's objects in deletion order: the manifest, its completion mark, goes last."""
    names = [manifest.dump.name]
    if manifest.globals is not None:
        names.append(manifest.globals.name)
    names += [manifest.backup_id + VERIFIED_SUFFIX, manifest.manifest_name]
    return names


class PruneResult(BaseModel):
    deleted_backups: list[str] = Field(default_factory=list)
    deleted_objects: list[str] = Field(default_factory=list)
    aborted_uploads: list[str] = Field(default_factory=list)


def apply_plan(destination: Destination, plan: RetentionPlan, inventory: Inventory) -> PruneResult:
    """Delete what the plan marks for deletion; a refused plan deletes nothing."""
    if plan.refused:
        raise DbopsError(f"prune refused: {plan.refused}")
    by_id = {m.backup_id: m for m in inventory.manifests}
    result = PruneResult()
    for item in plan.delete:
        for name in _backup_objects(by_id[item.backup_id]):
            _delete(destination, name)
            result.deleted_objects.append(name)
        result.deleted_backups.append(item.backup_id)
    for name in plan.leftovers:
        _delete(destination, name)
        result.deleted_objects.append(name)
    return result


def _delete(destination: Destination, name: str) -> None:
    try:
        destination.delete(name)
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


def stale_incomplete_writes(
    destination: Destination, older_than: timedelta, now: datetime
) -> list[IncompleteWrite]:
    """Incomplete writes older than `older_than`: they cost storage and no listing shows them."""
    return [w for w in destination.incomplete_writes() if now - w.since >= older_than]


def abort_incomplete_writes(destination: Destination, stale: list[IncompleteWrite]) -> list[str]:
    for write in stale:
        destination.abort_incomplete_write(write)
    return [write.key for write in stale]

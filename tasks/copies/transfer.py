"""Copying one backup to another destination: streamed, checked, manifest last, then recorded.

Each object streams from the source to the target in CHUNK_SIZE pieces (no temp file, no
whole object in memory) while its SHA-256 and size are computed; a mismatch with the
manifest raises inside the target's write, so the write is aborted and nothing of that
object appears. The claim goes first (create-if-absent: the id is the backup's at the
target too), the manifest last: a copy that fails half way leaves no manifest, which no
reader takes for a backup and the target's prune cleans as an unfinished backup.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from tasks.backup.manifest import Manifest, ObjectInfo
from tasks.copies.records import CopyRecord, backup_objects
from tasks.core.errors import DbopsError, ParameterError
from tasks.core.streams import CHUNK_SIZE, HashingReader
from tasks.restore.readback import check_stored
from tasks.storage.destinations import Destination


@dataclass
class CopyOutcome:
    record: CopyRecord
    already_there: bool  # the target had this backup's manifest already: nothing copied


def refuse_same_place(source: Destination, target: Destination, parameter: str = "copy_to") -> None:
    """A copy onto its own source would rewrite the backup it copies: one line, nothing written."""
    if source.same_place(target):
        raise ParameterError(
            parameter,
            f"{target.url} is where the backups already are; give another bucket, prefix or "
            "directory for the second copy",
        )


def check_copy_targets(source: Destination, targets: list[Destination]) -> None:
    """Before a backup starts: no target is the source, each can be written (and locked)."""
    for target in targets:
        refuse_same_place(source, target)
        target.check_writable()


def copy_backup(
    source: Destination, target: Destination, manifest: Manifest, now: datetime | None = None
) -> CopyOutcome:
    """Copy claim, data objects and manifest (last) to `target`, then record the copy."""
    refuse_same_place(source, target)
    now = now or datetime.now(UTC)
    objects = backup_objects(manifest)
    already = target.exists(manifest.manifest_name)
    if already:
        _same_backup(target, manifest.manifest_name, source.read_bytes(manifest.manifest_name))
    else:
        if source.exists(manifest.claim_name):
            _claim(source, target, manifest.claim_name)
        for info in objects:
            copy_object(source, target, info)
        manifest_bytes = source.read_bytes(manifest.manifest_name)
        if not target.create_if_absent(manifest.manifest_name, manifest_bytes):
            _same_backup(target, manifest.manifest_name, manifest_bytes)
    record = CopyRecord(
        backup_id=manifest.backup_id,
        destination=target.url,
        copied_at=now,
        objects=[info.name for info in objects] + [manifest.manifest_name],
        bytes=sum(info.size for info in objects),
    )
    # Create-if-absent: an earlier record of the same place stays as it was.
    source.create_if_absent(record.name, record.model_dump_json(indent=2).encode())
    return CopyOutcome(record, already)


def copy_object(source: Destination, target: Destination, info: ObjectInfo) -> None:
    """Stream one object across, checking size and SHA-256 before the target's write ends."""
    where = source.url_for(info.name)
    with source.open_read(info.name) as raw, target.open_write(info.name) as out:
        hashing = HashingReader(raw)
        while chunk := hashing.read(CHUNK_SIZE):
            out.write(chunk)
        check_stored(where, hashing, info, "; the copy was not written")


def _claim(source: Destination, target: Destination, name: str) -> None:
    data = source.read_bytes(name)
    if not target.create_if_absent(name, data):
        _same_backup(target, name, data)  # a copy that failed before: same claim, go on


def _same_backup(target: Destination, name: str, expected: bytes) -> None:
    if target.read_bytes(name) != expected:
        raise DbopsError(
            f"{target.url_for(name)} belongs to another backup with the same id; "
            "copy to another prefix or directory"
        )

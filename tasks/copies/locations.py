"""Where each backup exists: its own destination, and every recorded copy still in place.

A copy counts only while its manifest is still at the other destination (that place's
own retention may have deleted it); each other destination is listed once, however many
backups name it. A destination that cannot be read is reported as unknown, not absent.
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from tasks.backup.manifest import Manifest, metadata_reads
from tasks.copies.records import read_records, records_by_backup
from tasks.core.errors import DbopsError, first_line
from tasks.retention.freshness import DatabaseFreshness
from tasks.storage.destinations import Destination, S3Options


class Location(BaseModel):
    destination: str
    present: bool | None = Field(description="None: the destination could not be read")
    copied_at: datetime | None = Field(None, description="None for the backup's own place")
    problem: str = ""


def backup_locations(
    source: Destination, manifests: list[Manifest], s3: S3Options | None = None
) -> dict[str, list[Location]]:
    """backup id -> where it is, its own destination first."""
    listing = source.list()
    names = records_by_backup(obj.name for obj in listing)
    with metadata_reads(source, listing) as reader:
        recorded = {
            m.backup_id: read_records(reader, names.get(m.backup_id, ()), m.backup_id)
            for m in manifests
        }
    listings: dict[str, set[str] | str] = {}
    found: dict[str, list[Location]] = {}
    for manifest in manifests:
        places = [Location(destination=source.url, present=True)]
        for record in recorded[manifest.backup_id]:
            listing = listings.get(record.destination)
            if listing is None:
                listing = listings[record.destination] = _listing(record.destination, s3)
            if isinstance(listing, str):
                places.append(
                    Location(
                        destination=record.destination,
                        present=None,
                        copied_at=record.copied_at,
                        problem=listing,
                    )
                )
                continue
            places.append(
                Location(
                    destination=record.destination,
                    present=manifest.manifest_name in listing and manifest.dump.name in listing,
                    copied_at=record.copied_at,
                )
            )
        found[manifest.backup_id] = places
    return found


def copies_present(places: list[Location]) -> int:
    """The checked copies still in place, beside the backup itself."""
    return sum(1 for place in places[1:] if place.present)


def require_copies(
    databases: list[DatabaseFreshness], places: dict[str, list[Location]], min_copies: int
) -> None:
    """The newest verified backup of each database must exist in `min_copies` other places."""
    for row in databases:
        if not row.newest_verified:
            continue  # already a problem of its own
        row.copies = copies_present(places.get(row.newest_verified, []))
        if row.copies < min_copies:
            row.ok = False
            problem = (
                f"{row.database}: newest verified backup {row.newest_verified} has {row.copies} "
                f"checked copies elsewhere, {min_copies} required "
                f"(`dbops copy --to URL {row.newest_verified}`)"
            )
            row.problem = "; ".join(filter(None, [row.problem, problem]))


def _listing(url: str, s3: S3Options | None) -> set[str] | str:
    try:
        return {obj.name for obj in Destination.from_url(url, s3).list()}
    except DbopsError as exc:
        return first_line(exc)

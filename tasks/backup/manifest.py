"""The manifest: what makes a dump a backup. Written last; a dump without one is ignored."""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, Field

from tasks.backup.encryption import Encryption
from tasks.backup.identity import ServerIdentity, server_key
from tasks.core.errors import DbopsError, first_line
from tasks.core.settings import metadata_cache_dir
from tasks.storage.destinations import Destination, ObjectReader, StoredObject
from tasks.storage.metadata_cache import MetadataCache, cached_reads

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


class BatchedTable(BaseModel):
    """One small table's section of a batch object (`tasks/backup/batches.py`), in order."""

    table: str = Field(description="the table, as in row_counts")
    relation: list[str] = Field(description="[schema, table], unambiguous")
    columns: list[str] = Field(default_factory=list, description="the COPY column list")
    rows: int = Field(description="rows in this section, counted from the stream")
    raw_size: int = Field(description="bytes of this section's COPY text")


class DataObject(ObjectInfo):
    """One object of a parallel backup: a table's rows (or a chunk of them) in COPY text
    format, or, with no table, the rest of pg_dump's data section (sequences, large objects)."""

    table: str | None = Field(None, description="the table, as in row_counts; None: the rest")
    relation: list[str] | None = Field(None, description="[schema, table], unambiguous")
    columns: list[str] = Field(default_factory=list, description="the COPY column list")
    rows: int | None = Field(None, description="rows in this object, counted from the stream")
    chunk: str | None = Field(None, description="the ctid range of a chunk of a large table")
    tables: list[BatchedTable] = Field(
        default_factory=list, description="a batch object's small tables, in stored order"
    )


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
    format: Literal["plain", "custom", "parallel"]
    compression: Literal["gzip", "zstd", "none"]
    compression_level: int
    dump: ObjectInfo
    globals: ObjectInfo | None = None
    objects: list[DataObject] = Field(
        default_factory=list,
        description="a parallel backup's data objects; its `dump` is then the schema archive",
    )
    jobs: int | None = Field(None, description="workers that took a parallel backup")
    encoding: str | None = Field(
        None, description="a parallel backup's data objects are text in this encoding"
    )
    encryption: Encryption | None = Field(
        None, description="age: every object is encrypted to these recipients (fingerprints)"
    )
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
    def stored_size(self) -> int:
        """Bytes stored of the dump and, in a parallel backup, every data object."""
        return self.dump.size + sum(obj.size for obj in self.objects)

    @property
    def raw_size(self) -> int:
        """Bytes before compression, as far as recorded."""
        return (self.dump.raw_size or 0) + sum(obj.raw_size or 0 for obj in self.objects)

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
    if fmt == "parallel":
        return ".schema.dump"
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


def read_manifest(destination: ObjectReader, name: str) -> Manifest:
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
    listing = destination.list()
    objects = {obj.name for obj in listing}
    names = [n for n in sorted(objects) if n.endswith(MANIFEST_SUFFIX) and is_of(n, database)]

    with metadata_reads(destination, listing) as source:

        def load(name: str) -> Manifest | None:
            manifest = read_manifest(source, name)
            sidecar = manifest.backup_id + VERIFIED_SUFFIX
            if sidecar in objects:
                manifest.verification = read_verification(source, sidecar) or manifest.verification
            return manifest

        loaded = read_concurrently(load, names)
    manifests = []
    for manifest in loaded.values():
        if isinstance(manifest, ManifestError) or manifest is None:
            continue
        if manifest.dump.name not in objects:
            continue
        if database and manifest.database != database:
            continue
        if server and manifest.server_key != server:
            continue
        manifests.append(manifest)
    manifests.sort(key=lambda m: (m.started_at, m.backup_id), reverse=True)
    return manifests


@contextlib.contextmanager
def metadata_reads(
    destination: Destination, listing: list[StoredObject]
) -> Iterator[MetadataCache]:
    """Where every listing reader reads manifests and records: through the metadata cache of
    `destination` (DBOPS_CACHE_DIR), hits only for objects unchanged since they were read."""
    with cached_reads(destination, listing, metadata_cache_dir()) as cache:
        yield cache


T = TypeVar("T")
READERS = 8  # S3 round trips at once; boto3's default pool holds 10 connections


def read_concurrently(
    read: Callable[[str], T], names: Iterable[str]
) -> dict[str, T | ManifestError]:
    """Many small reads at once, in the given order: listing 2,000 backups costs round trips,
    not bytes. An unparsable object is its ManifestError in the result; a storage error is
    raised."""

    def one(name: str) -> T | ManifestError:
        try:
            return read(name)
        except ManifestError as exc:
            return exc

    names = list(names)
    if len(names) < 2:
        return {name: one(name) for name in names}
    with ThreadPoolExecutor(max_workers=READERS, thread_name_prefix="read") as pool:
        return dict(zip(names, pool.map(one, names), strict=True))


def is_of(name: str, database: str | None) -> bool:
    """Whether an object's id names `database` (ids that are not dbops ids are kept)."""
    if not database:
        return True
    encoded = database_of_id(backup_id_of(name))
    return encoded is None or encoded == encode_database(database)


def read_verification(
    destination: ObjectReader, name: str, strict: bool = False
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

"""Finding backups: `latest`, a backup id, a manifest, or a dump written by other tools."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tasks.backup.manifest import MANIFEST_SUFFIX, Manifest, list_manifests, read_manifest
from tasks.core.errors import DbopsError
from tasks.storage.destinations import Destination, S3Options

FOREIGN_SUFFIXES = {
    ".sql.gz": ("plain", "gzip"),
    ".sql.zst": ("plain", "zstd"),
    ".sql": ("plain", "none"),
    ".dump": ("custom", "none"),
    ".gz": ("plain", "gzip"),
}


@dataclass
class BackupSource:
    """What to restore from. Without a manifest there is no checksum to check."""

    destination: Destination
    dump_name: str
    format: str
    compression: str
    manifest: Manifest | None = None

    @property
    def url(self) -> str:
        return self.destination.url_for(self.dump_name)


def _split(source: str) -> tuple[str, str]:
    if source.startswith("s3://"):
        head, _, name = source.rstrip("/").rpartition("/")
        if head == "s3:/":
            raise DbopsError(f"{source!r} names a bucket, not a backup; give the object's URL")
        return head, name
    path = os.path.abspath(os.path.expanduser(source.removeprefix("file://")))
    return os.path.dirname(path), os.path.basename(path)


def resolve_source(
    source: str,
    backup_url: str,
    s3: S3Options | None = None,
    database: str | None = None,
) -> BackupSource:
    """Turn what the user typed into a dump object, with its manifest when there is one."""
    if not source:
        raise DbopsError("no backup given; pass a path, an s3:// URL, a backup id or `latest`")
    if source == "latest":
        destination = Destination.from_url(backup_url, s3)
        manifests = list_manifests(destination, database)
        if not manifests:
            where = f" of database {database!r}" if database else ""
            raise DbopsError(
                f"no backup{where} found under {destination.url}; "
                "run `dbops backup` first or pass --to / BACKUP_URL"
            )
        return _from_manifest(destination, manifests[0])
    if "/" not in source and "://" not in source and not os.path.exists(source):
        destination = Destination.from_url(backup_url, s3)
        name = source
    else:
        directory, name = _split(source)
        destination = Destination.from_url(directory, s3)
    if name.endswith(MANIFEST_SUFFIX):
        return _from_manifest(destination, read_manifest(destination, name))
    if destination.exists(name + MANIFEST_SUFFIX):  # a backup id
        return _from_manifest(destination, read_manifest(destination, name + MANIFEST_SUFFIX))
    for suffix, (fmt, compression) in FOREIGN_SUFFIXES.items():
        if name.endswith(suffix):
            backup_id = name[: -len(suffix)]
            if destination.exists(backup_id + MANIFEST_SUFFIX):
                manifest = read_manifest(destination, backup_id + MANIFEST_SUFFIX)
                if manifest.dump.name == name:
                    return _from_manifest(destination, manifest)
            if not destination.exists(name):
                raise DbopsError(
                    f"{destination.url_for(name)} does not exist; `dbops list` shows the backups"
                )
            return BackupSource(destination, name, fmt, compression)
    raise DbopsError(
        f"{source!r} is not a backup: expected `latest`, a backup id, a .manifest.json, "
        "or a .sql, .sql.gz, .sql.zst or .dump file"
    )


def _from_manifest(destination: Destination, manifest: Manifest) -> BackupSource:
    if not destination.exists(manifest.dump.name):
        raise DbopsError(
            f"backup {manifest.backup_id} is incomplete: {destination.url_for(manifest.dump.name)} "
            "is missing"
        )
    compression = "none" if manifest.format == "custom" else manifest.compression
    return BackupSource(destination, manifest.dump.name, manifest.format, compression, manifest)

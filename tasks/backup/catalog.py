"""Finding backups: `latest`, a backup id, a manifest, or a dump written by other tools."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from tasks.backup.encryption import AGE_SUFFIX, AgeIdentity, Encryption, require_identity
from tasks.backup.identity import group_by_server, identify_server, in_the_future
from tasks.backup.manifest import (
    MANIFEST_SUFFIX,
    Manifest,
    backup_id_of,
    list_manifests,
    read_manifest,
)
from tasks.core.errors import DbopsError, NotFoundError, ParameterError
from tasks.core.postgres import ConnInfo
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
    encryption: Encryption | None = None  # age-encrypted objects: read with `identity`
    identity: AgeIdentity | None = None

    @property
    def url(self) -> str:
        return self.destination.url_for(self.dump_name)


def with_identity(source: BackupSource, reference: str | None) -> BackupSource:
    """The source with the identity that decrypts it (a file or secret://BLOCK), checked
    against its recipients; a plain backup as it is. Called before any work is done."""
    if source.encryption is None:
        return source
    identity = require_identity(source.encryption, reference, source.url)
    return dataclasses.replace(source, identity=identity)


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
    from_server: str | None = None,
    home: ConnInfo | None = None,
    verified_only: bool = False,
) -> BackupSource:
    """Turn what the user typed into a dump object, with its manifest when there is one.

    `latest` is the newest backup of `database` from one server: `from_server` when given,
    else the server `home` is on when it has backups of it, else the only server that has;
    with `verified_only`, the newest that passed a restore test (`dbops verify`).
    """
    if not source:
        raise DbopsError("no backup given; pass a path, an s3:// URL, a backup id or `latest`")
    if source == "latest":
        destination = Destination.from_url(backup_url, s3)
        manifest = choose_latest(
            destination, database, from_server, home, verified_only=verified_only
        )
        return _from_manifest(destination, manifest)
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
    owner = backup_id_of(name)
    if owner != name and destination.exists(owner + MANIFEST_SUFFIX):
        manifest = read_manifest(destination, owner + MANIFEST_SUFFIX)
        if manifest.format == "parallel" and name in {
            o.name for o in [manifest.dump, *manifest.objects]
        }:
            return _from_manifest(destination, manifest)  # any of its objects: the whole backup
    plain_name = name.removesuffix(AGE_SUFFIX)  # `age -d` gives what the rest names
    for suffix, (fmt, compression) in FOREIGN_SUFFIXES.items():
        if plain_name.endswith(suffix):
            backup_id = plain_name[: -len(suffix)]
            if destination.exists(backup_id + MANIFEST_SUFFIX):
                manifest = read_manifest(destination, backup_id + MANIFEST_SUFFIX)
                if manifest.dump.name == name:
                    return _from_manifest(destination, manifest)
            if not destination.exists(name):
                raise DbopsError(
                    f"{destination.url_for(name)} does not exist; `dbops list` shows the backups"
                )
            encryption = Encryption() if name != plain_name else None
            return BackupSource(destination, name, fmt, compression, encryption=encryption)
    raise DbopsError(
        f"{source!r} is not a backup: expected `latest`, a backup id, a .manifest.json, "
        "or a .sql, .sql.gz, .sql.zst or .dump file (each may end in .age)"
    )


def _from_manifest(destination: Destination, manifest: Manifest) -> BackupSource:
    if not destination.exists(manifest.dump.name):
        raise DbopsError(
            f"backup {manifest.backup_id} is incomplete: {destination.url_for(manifest.dump.name)} "
            "is missing"
        )
    # A parallel backup's dump is its schema archive; its data objects say their compression.
    compression = "none" if manifest.format in ("custom", "parallel") else manifest.compression
    return BackupSource(
        destination,
        manifest.dump.name,
        manifest.format,
        compression,
        manifest,
        encryption=manifest.encryption,
    )


def choose_latest(
    destination: Destination,
    database: str | None,
    from_server: str | None = None,
    home: ConnInfo | None = None,
    now: datetime | None = None,
    verified_only: bool = False,
) -> Manifest:
    """The newest trustworthy backup of one (server, database); refuses to guess between
    servers and never takes a backup dated in the future. `verified_only`: only backups whose
    restore test passed."""
    now = now or datetime.now(UTC)
    where = f" of database {database!r}" if database else ""
    manifests = list_manifests(destination, database)
    if not manifests:
        raise NotFoundError(
            f"no backup{where} found under {destination.url}; "
            "run `dbops backup` first or pass --to / BACKUP_URL"
        )
    if verified_only:
        manifests = [m for m in manifests if m.verification and m.verification.ok]
        if not manifests:
            raise NotFoundError(
                f"no verified backup{where} under {destination.url}: a rehearsal restores only "
                "a backup that passed a restore test; run `dbops verify latest` first, or name "
                "a backup"
            )
    dated = [m for m in manifests if not in_the_future(m.started_at, now)]
    if not dated:
        raise NotFoundError(
            f"every backup{where} under {destination.url} is dated in the future "
            f"(e.g. {manifests[0].backup_id}), so none can be trusted as latest; fix the clock "
            "of the host that took it, then name a backup id"
        )
    groups = group_by_server(dated, lambda m: m.server_key, lambda m: m.database)
    servers = {server for server, _ in groups}
    if from_server:
        if from_server not in servers:
            raise ParameterError(
                "from_server",
                f"{from_server!r} has no backup{where} under {destination.url}; "
                f"servers with backups: {_describe(groups)}",
            )
        return _newest(groups, from_server)
    if len(servers) > 1:
        home_key = _home_server(home)
        if home_key in servers:
            return _newest(groups, home_key)
        raise ParameterError(
            "from_server",
            f"must be given: backups{where} under {destination.url} come from "
            f"{len(servers)} servers ({_describe(groups)})"
            + (", none of them the target's" if home is not None else "")
            + "; choose one by its system identifier",
        )
    return dated[0]


def _newest(groups: dict[tuple[str, str], list[Manifest]], server: str) -> Manifest:
    return max(
        (g[0] for (s, _), g in groups.items() if s == server),
        key=lambda m: (m.started_at, m.backup_id),
    )


def _describe(groups: dict[tuple[str, str], list[Manifest]]) -> str:
    servers = sorted({server for server, _ in groups})
    described = []
    for server in servers:
        newest = _newest(groups, server)
        label = newest.server.label if newest.server else server
        described.append(f"{label} newest {newest.backup_id}")
    return ", ".join(described)


def _home_server(home: ConnInfo | None) -> str | None:
    """The server key of the target; None when there is none or it cannot be reached."""
    if home is None:
        return None
    try:
        return identify_server(home).key
    except DbopsError:
        return None

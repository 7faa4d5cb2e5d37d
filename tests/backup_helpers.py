"""Shared by the retention/verify/freshness tests: backups with chosen times, and the CLI.

Backups in the past cannot come from a real pg_dump, so `make_backup` writes the
same objects a backup has (a gzip dump with its real SHA-256, optional globals,
the manifest last, optional verification sidecar) through the real Destination,
on a local directory or moto's S3 server.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
from datetime import datetime, timedelta

import typer
from click.testing import Result
from typer.testing import CliRunner

from tasks.backup.identity import ServerIdentity
from tasks.backup.manifest import (
    MANIFEST_SUFFIX,
    VERIFIED_SUFFIX,
    Manifest,
    ObjectInfo,
    Verification,
    new_backup_id,
    write_manifest,
)
from tasks.core.settings import s3_options_from_env
from tasks.storage.destinations import Destination
from tests.conftest import run_cli


def _object(destination: Destination, name: str, payload: bytes) -> ObjectInfo:
    data = gzip.compress(payload)
    destination.write_bytes(name, data)
    return ObjectInfo(
        name=name, size=len(data), sha256=hashlib.sha256(data).hexdigest(), raw_size=len(payload)
    )


def make_backup(
    destination: Destination,
    database: str,
    started_at: datetime,
    labels: tuple[str, ...] = (),
    verified: bool | None = None,
    with_globals: bool = False,
    server: ServerIdentity | None = None,
) -> Manifest:
    """Dump first, manifest last, as a real backup is written (`server` None: an old one)."""
    backup_id = new_backup_id(database, started_at)
    dump = _object(destination, backup_id + ".sql.gz", f"-- dump of {backup_id}\n".encode())
    globals_info = None
    if with_globals:
        globals_info = _object(destination, backup_id + ".globals.sql.gz", b"-- roles\n")
    manifest = Manifest(
        backup_id=backup_id,
        database=database,
        source=f"postgresql://app@db.example:5432/{database}",
        server_version="18.0",
        pg_dump_version="18.0",
        format="plain",
        compression="gzip",
        compression_level=6,
        dump=dump,
        globals=globals_info,
        started_at=started_at,
        finished_at=started_at + timedelta(seconds=5),
        duration_seconds=5.0,
        row_counts={"public.t": 1},
        labels=list(labels),
        server=server,
    )
    write_manifest(destination, manifest)
    if verified is not None:
        record = Verification(verified_at=started_at + timedelta(hours=1), ok=verified)
        destination.write_bytes(backup_id + VERIFIED_SUFFIX, record.model_dump_json().encode())
    return manifest


def location(kind: str, tmp_path, request) -> tuple[str, Destination]:
    """A backup location: a local directory, or a prefix in a new bucket on moto's S3."""
    if kind == "local":
        url = str(tmp_path / "backups")
    else:
        url = f"s3://{request.getfixturevalue('bucket')}/backups"
    return url, Destination.from_url(url, s3_options_from_env())


def object_names(destination: Destination) -> set[str]:
    return {obj.name for obj in destination.list()}


def backup_objects(manifest: Manifest) -> set[str]:
    names = {manifest.dump.name, manifest.backup_id + MANIFEST_SUFFIX}
    if manifest.globals:
        names.add(manifest.globals.name)
    return names


def cli_app() -> typer.Typer:
    import cli

    return cli.app


def invoke_dbops(*args: str, env: dict[str, str | None] | None = None) -> Result:
    """`dbops ARGS` in this process (flows run against the session's Prefect harness). The
    variables the CLI may set (DATABASE_URL, VERIFY_DATABASE_URL) are restored afterwards."""
    restored: dict[str, str | None] = {"DATABASE_URL": None, "VERIFY_DATABASE_URL": None}
    restored.update({k: os.environ.get(k) for k in restored})
    return CliRunner().invoke(cli_app(), list(args), env={**restored, **(env or {})})


def run_dbops(
    *args: str, env: dict[str, str] | None = None, api_url: str | None = None
) -> subprocess.CompletedProcess[str]:
    """The real `dbops` console script in a subprocess."""
    return run_cli(*args, env=env, api_url=api_url)

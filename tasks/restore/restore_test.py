"""Restore tests: a backup is known to restore only once it has been restored.

The backup goes into a scratch database (created here, dropped in a finally)
through the same streaming restore that users run, which checks the size and
SHA-256 of the stored object, reads the whole archive, and compares per-table
row counts with the manifest; then optional smoke queries run read-only. The
result is written to a sidecar `<backup_id>.verified.json` next to the
manifest, which itself stays immutable (it is the backup's completion mark).

A failure that is the backup's fault (corrupt, truncated, not restorable,
wrong row counts, a smoke query failing) becomes a failed verification with
its reason. A failure of the surroundings (server unreachable, no CREATEDB
right, no psql) is raised instead and records nothing about the backup.

The verify server may be a separate server without the application's roles.
The roles the dump names (recorded in its manifest) are created there as
NOLOGIN roles without privileges when dbops may create roles, and left there
(dropping them could break a concurrent verification); when it may not, that
is the surroundings' fault: raised, nothing recorded.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field

from tasks.backup.catalog import BackupSource
from tasks.backup.manifest import VERIFIED_SUFFIX, ObjectInfo
from tasks.core.errors import (
    BackupCheck,
    BackupFaultError,
    DbopsError,
    SurroundingsError,
    first_line,
)
from tasks.core.postgres import ConnInfo, maintenance_conn, server_version
from tasks.restore.readback import read_back
from tasks.restore.restore import restore_command, run_restore
from tasks.restore.swap import drop, helper_name
from tasks.storage.destinations import Destination

SMOKE_TIMEOUT = "60s"


class SmokeResult(BaseModel):
    query: str
    ok: bool
    value: str = Field("", description="first column of the first row, or the error")


class VerificationRecord(BaseModel):
    """The sidecar's content; `verified_at`, `ok` and `detail` are what list_manifests reads."""

    verified_at: datetime
    ok: bool
    detail: str = ""
    backup_id: str | None = None
    database: str | None = None
    dump: str = ""
    dump_url: str = ""
    sha256: str | None = None
    backup_server: str | None = Field(None, description="the backed-up server's key")
    server: str = Field("", description="the scratch database's URL, without password")
    failed_check: BackupCheck | None = None
    checksum_verified: bool = False
    archive_read: bool = False
    row_counts_match: bool = False
    globals_checked: bool | None = None
    tables: int = 0
    rows: int = 0
    bytes_read: int = 0
    restore_seconds: float = 0.0
    smoke: list[SmokeResult] = Field(default_factory=list)
    roles_created: list[str] = Field(
        default_factory=list, description="roles created NOLOGIN on the verify server"
    )
    recorded_at: str | None = Field(None, description="where the sidecar was written")
    dbops_version: str = ""


def sidecar_name(backup_id: str) -> str:
    return backup_id + VERIFIED_SUFFIX


def check_globals(
    destination: Destination, info: ObjectInfo, source: BackupSource | None = None
) -> None:
    """The roles/tablespaces object: present, size and SHA-256 as written, a whole gzip stream
    (decrypted with the source's identity when the backup is encrypted)."""
    where = destination.url_for(info.name)
    if not destination.exists(info.name):
        raise BackupFaultError(f"globals object {where} is missing", BackupCheck.GLOBALS)
    encrypted = source is not None and source.encryption is not None
    try:
        read_back(destination, info, "gzip", encrypted, source.identity if source else None)
    except BackupFaultError as exc:
        raise BackupFaultError(f"globals object {exc}", BackupCheck.GLOBALS) from None


def run_smoke_queries(target: ConnInfo, queries: list[str]) -> list[SmokeResult]:
    """Each query runs read-only in its own transaction; it fails on an error, on no rows,
    or when the first value is false or NULL (so `SELECT count(*) > 0 FROM t` is a check)."""
    results = []
    with target.connect() as conn:
        for query in queries:
            try:
                with conn.transaction():
                    conn.execute("SET TRANSACTION READ ONLY")
                    conn.execute(f"SET LOCAL statement_timeout = '{SMOKE_TIMEOUT}'")
                    cursor = conn.execute(query)  # type: ignore[call-overload]
                    row = cursor.fetchone() if cursor.description else ()
            except psycopg.Error as exc:
                results.append(SmokeResult(query=query, ok=False, value=first_line(exc)))
                continue
            if row is None:
                results.append(SmokeResult(query=query, ok=False, value="returned no rows"))
            elif row == ():
                results.append(SmokeResult(query=query, ok=True, value="(no result set)"))
            else:
                value = row[0]
                ok = value is not None and value is not False
                results.append(SmokeResult(query=query, ok=ok, value=str(value)[:200]))
    return results


def verify_restore(
    source: BackupSource, server: ConnInfo, smoke_queries: list[str] | None = None
) -> VerificationRecord:
    """Restore `source` into a scratch database on `server`, check it, drop the scratch."""
    from tasks import __version__

    manifest = source.manifest
    record = VerificationRecord(
        verified_at=datetime.now(UTC),
        ok=False,
        dump=source.dump_name,
        dump_url=source.url,
        server=server.redacted(),
        dbops_version=__version__,
    )
    if manifest is None:
        record.failed_check = BackupCheck.MANIFEST
        record.detail = (
            f"{source.url} has no dbops manifest, so its checksum and row counts cannot be "
            "checked: it is not a verifiable backup"
        )
        return record
    record.backup_id = manifest.backup_id
    record.database = manifest.database
    record.sha256 = manifest.dump.sha256
    record.backup_server = manifest.server_key
    scratch = server.with_dbname(helper_name(manifest.database, "verify"))
    record.server = scratch.redacted()
    started = time.perf_counter()
    with maintenance_conn(scratch) as admin:
        major, _ = server_version(admin)
        restore_command(source, major)  # no psql/pg_restore: the surroundings' fault, raised
        record.roles_created = provide_roles(admin, manifest.roles, server)
        try:  # run_restore creates the scratch database and renames it into this name
            _check_backup(source, scratch, smoke_queries or [], record)
        finally:
            try:
                drop(admin, scratch.dbname)
            except psycopg.Error as exc:
                raise SurroundingsError(
                    f"could not drop the scratch database {scratch.dbname!r} "
                    f"({first_line(exc)}); drop it by hand or with `dbops cleanup --yes`"
                ) from None
    record.restore_seconds = round(time.perf_counter() - started, 3)
    record.verified_at = datetime.now(UTC)
    return record


def provide_roles(admin: psycopg.Connection, roles: list[str], server: ConnInfo) -> list[str]:
    """Create the roles the dump names that the verify server lacks; SurroundingsError when
    dbops may not. Returns the roles created."""
    present = {
        r[0] for r in admin.execute("SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [roles])
    }
    missing = [r for r in roles if r not in present]
    if not missing:
        return []
    row = admin.execute(
        "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if not (row and row[0]):
        raise SurroundingsError(
            f"the verify server {server.redacted()} lacks the roles {', '.join(missing)} that "
            "the backup's objects belong to, and dbops may not create them there; create them "
            "(NOLOGIN is enough) or grant CREATEROLE"
        )
    for role in missing:
        with contextlib.suppress(psycopg.errors.DuplicateObject):  # a concurrent verify made it
            admin.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    return missing


def _check_backup(
    source: BackupSource, scratch: ConnInfo, smoke_queries: list[str], record: VerificationRecord
) -> None:
    manifest = source.manifest
    assert manifest is not None
    try:
        if manifest.globals is not None:
            check_globals(source.destination, manifest.globals, source)
            record.globals_checked = True
        result = run_restore(source, scratch)
    except BackupFaultError as exc:  # anything else is the surroundings' fault: raised
        record.detail = str(exc)
        record.failed_check = exc.check
        if exc.check is BackupCheck.GLOBALS:
            record.globals_checked = False
        return
    record.checksum_verified = result.checksum_verified
    record.archive_read = True
    record.row_counts_match = result.row_counts_checked and not result.mismatched_tables
    record.tables = len(manifest.row_counts)
    record.rows = sum(manifest.row_counts.values())
    record.bytes_read = result.bytes_read
    record.smoke = run_smoke_queries(scratch, smoke_queries) if smoke_queries else []
    failed = [s for s in record.smoke if not s.ok]
    if not result.checksum_verified:
        record.failed_check = BackupCheck.SHA256
        record.detail = "the SHA-256 of the dump could not be checked"
    elif failed:
        record.failed_check = BackupCheck.SMOKE
        record.detail = f"smoke query {failed[0].query!r} failed: {failed[0].value}" + (
            f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        )
    else:
        record.ok = True
        record.detail = (
            f"restored {record.tables} tables ({record.rows:,} rows), SHA-256 and row counts "
            f"match" + (f", {len(record.smoke)} smoke queries passed" if record.smoke else "")
        )


def write_verification(destination: Destination, record: VerificationRecord) -> str:
    """The sidecar next to the manifest: the manifest itself is never rewritten."""
    if record.backup_id is None:
        raise DbopsError("a verification without a backup id cannot be recorded")
    name = sidecar_name(record.backup_id)
    destination.write_bytes(name, record.model_dump_json(indent=2).encode())
    return destination.url_for(name)

"""pg_dump -> compressor -> SHA-256 -> storage, streaming, with every stage's status checked.

No temporary file and no whole dump in memory: pg_dump's stdout is read in
fixed chunks, compressed by a bounded number of in-flight jobs, and handed to a
writer thread through a bounded queue. If pg_dump, the compressor or the
upload fails, the object is never completed (an aborted multipart upload, a
deleted temporary file) and no manifest is written.
"""

from __future__ import annotations

import contextlib
import hashlib
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO

import psycopg

from tasks.backup.claim import claim_backup_id
from tasks.backup.compression import compress_stream
from tasks.backup.encryption import AGE_SUFFIX, Recipients, encrypt_chunks
from tasks.backup.identity import read_server_identity
from tasks.backup.manifest import Manifest, ObjectInfo, dump_suffix, write_manifest
from tasks.backup.row_counts import CopyRowCounter, count_in_snapshot, user_tables
from tasks.core.children import spawn
from tasks.core.client_tools import ClientTool, find_client_tool
from tasks.core.errors import DbopsError, LockTableFullError, first_line
from tasks.core.postgres import ConnInfo, server_version
from tasks.core.streams import CHUNK_SIZE, StderrTail
from tasks.storage.destinations import Destination

QUEUE_DEPTH = 4
GLOBALS_SUFFIX = ".globals.sql.gz"
ProgressCallback = Callable[[int], None]


@dataclass
class StreamStats:
    raw_bytes: int = 0
    stored_bytes: int = 0
    seconds: float = 0.0
    read_wait_seconds: float = 0.0
    write_seconds: float = 0.0
    sha256: str = ""

    def as_stages(self) -> dict[str, float]:
        mb = 1024 * 1024
        wall = max(self.seconds, 1e-9)
        return {
            "seconds": round(self.seconds, 3),
            "raw_mb": round(self.raw_bytes / mb, 3),
            "stored_mb": round(self.stored_bytes / mb, 3),
            "ratio": round(self.raw_bytes / self.stored_bytes, 3) if self.stored_bytes else 0.0,
            "dump_mb_per_s": round(self.raw_bytes / mb / wall, 2),
            "store_mb_per_s": round(self.stored_bytes / mb / wall, 2),
            "waiting_for_pg_dump_seconds": round(self.read_wait_seconds, 3),
            "writing_seconds": round(self.write_seconds, 3),
        }


class _Writer(threading.Thread):
    """Hashes and writes compressed chunks; the upload runs while compression goes on."""

    def __init__(self, sink: IO[bytes], stats: StreamStats) -> None:
        super().__init__(daemon=True, name="writer")
        self.sink = sink
        self.stats = stats
        self.queue: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_DEPTH)
        self.error: BaseException | None = None
        self.hasher = hashlib.sha256()

    def run(self) -> None:
        while True:
            chunk = self.queue.get()
            if chunk is None:
                return
            if self.error is not None:
                continue  # drain so the producer never blocks forever
            try:
                started = time.perf_counter()
                self.hasher.update(chunk)
                self.sink.write(chunk)
                self.stats.write_seconds += time.perf_counter() - started
                self.stats.stored_bytes += len(chunk)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the producer
                self.error = exc

    def put(self, chunk: bytes) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(chunk)

    def finish(self) -> None:
        self.queue.put(None)
        self.join()
        if self.error is not None:
            raise self.error
        self.stats.sha256 = self.hasher.hexdigest()


def _read_chunks(
    stream: IO[bytes],
    stats: StreamStats,
    progress: ProgressCallback | None,
    inspect: Callable[[bytes], None] | None = None,
) -> Iterator[bytes]:
    while True:
        started = time.perf_counter()
        chunk = stream.read(CHUNK_SIZE)
        stats.read_wait_seconds += time.perf_counter() - started
        if not chunk:
            return
        stats.raw_bytes += len(chunk)
        if progress:
            progress(stats.raw_bytes)
        if inspect:
            inspect(chunk)
        yield chunk


def _feed(stdin: IO[bytes] | None, data: bytes) -> None:
    assert stdin is not None
    try:
        with stdin:
            stdin.write(data)
    except OSError:
        pass  # the command stopped early; its exit status says why


def stream_command_to(
    command: list[str],
    env: dict[str, str],
    destination: Destination,
    name: str,
    compression: str,
    level: int,
    secret: str | None,
    progress: ProgressCallback | None = None,
    inspect: Callable[[bytes], None] | None = None,
    recipients: Recipients | None = None,
    stdin_data: bytes | None = None,
) -> StreamStats:
    """Run command and store its stdout, compressed (then age-encrypted to `recipients`), as one
    complete object or none at all; the SHA-256 is of the stored bytes.

    `inspect` sees every uncompressed chunk on its way (the row counter of a plain dump);
    `stdin_data` is written to the command's input (pg_dump --filter=-)."""
    stats = StreamStats()
    started = time.perf_counter()
    process = spawn(  # pg_dump dies with dbops: no orphan keeps the snapshot open
        command,
        stdin=subprocess.DEVNULL if stdin_data is None else subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert process.stdout is not None and process.stderr is not None
    tail = StderrTail(process.stderr)
    if stdin_data is not None:
        threading.Thread(target=_feed, args=(process.stdin, stdin_data), daemon=True).start()
    tool = command[0].rsplit("/", 1)[-1]
    try:
        with destination.open_write(name) as sink:
            writer = _Writer(sink, stats)
            writer.start()
            try:
                chunks = _read_chunks(process.stdout, stats, progress, inspect)
                pieces = compress_stream(chunks, compression, level)
                with (
                    contextlib.closing(encrypt_chunks(pieces, recipients))
                    if recipients is not None
                    else contextlib.nullcontext(pieces)
                ) as stored:  # a failed write stops the age thread at once
                    for piece in stored:
                        writer.put(piece)
            finally:
                writer.finish()
            code = process.wait()
            closing = time.perf_counter()
            if code != 0 and any("max_locks_per_transaction" in line for line in tail.lines):
                raise LockTableFullError(
                    f"{tool} failed ({tail.last(secret)}); no backup was stored"
                )
            if code != 0:
                reason = tail.last(secret) or (
                    f"killed by signal {-code}" if code < 0 else f"exit status {code}"
                )
                raise DbopsError(f"{tool} failed ({reason}); no backup was stored")
        # Completing the object (the last part, the multipart completion) is writing too.
        stats.write_seconds += time.perf_counter() - closing
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    stats.seconds = time.perf_counter() - started
    return stats


def lock_table_advice(conn: psycopg.Connection, workers: int = 0) -> LockTableFullError:
    """pg_dump locks every table it dumps in one transaction: say what to raise, and to what.

    The shared lock table holds about max_locks_per_transaction x (max_connections +
    max_prepared_transactions) locks (a little more in practice: spare shared memory). A
    parallel backup's `workers` each hold one table's lock beside pg_dump's."""
    row = conn.execute(
        """
        SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE c.relkind IN ('r', 'p', 'm', 'f', 'v', 'S')
                  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                  AND n.nspname NOT LIKE 'pg\\_toast%'),
               current_setting('max_locks_per_transaction')::int,
               current_setting('max_connections')::int
                 + current_setting('max_prepared_transactions')::int
        """
    ).fetchone()
    assert row is not None
    relations, per_transaction, slots = int(row[0]), int(row[1]), int(row[2])
    needed = -(-(relations + workers) * 5 // 4 // slots)  # room for 25% growth, rounded up
    needed = max(needed, per_transaction * 2)
    also = f" (and each of the {workers} parallel workers one more)" if workers else ""
    return LockTableFullError(
        f"pg_dump needs a lock on each of the {relations:,} relations{also} and the server's lock "
        f"table is full (max_locks_per_transaction = {per_transaction}, "
        f"{slots} connection slots); set max_locks_per_transaction = {needed} in "
        "postgresql.conf and restart the server; no backup was stored"
    )


def referenced_roles(conn: psycopg.Connection) -> list[str]:
    """Roles a dump of this database names (owners, grantees, the bootstrap superuser)."""
    rows = conn.execute(
        """
        SELECT rolname FROM pg_roles
        WHERE (oid = 10 OR oid IN (
                SELECT refobjid FROM pg_shdepend
                WHERE refclassid = 'pg_authid'::regclass
                  AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())))
          AND rolname NOT LIKE 'pg\\_%'
        ORDER BY 1
        """
    ).fetchall()
    return [str(r[0]) for r in rows]


@dataclass
class BackupRequest:
    conn: ConnInfo
    destination: Destination
    format: str = "plain"
    compression: str = "gzip"
    level: int = 6
    labels: list[str] = field(default_factory=list)
    include_globals: bool = False
    jobs: int = 2  # parallel format: workers, each its own connection in the one snapshot
    chunk_bytes: int = 128 * 1024**2  # parallel format: tables larger go in ctid chunks
    recipients: Recipients | None = None  # age public keys; None: stored unencrypted


def custom_format_compress_option(tool: ClientTool, compression: str, level: int) -> str:
    if compression == "none":
        return "--compress=0"
    if compression == "zstd":
        if tool.major < 16:
            raise DbopsError(
                f"custom format with zstd needs pg_dump 16 or newer (found {tool.version}); "
                "use --compression gzip"
            )
        return f"--compress=zstd:{level}"
    return f"--compress={level}"


def run_backup(request: BackupRequest, progress: ProgressCallback | None = None) -> Manifest:
    """Dump one database consistently and store it as a complete backup (dump + manifest)."""
    info = request.conn
    request.destination.check_writable()
    after = AGE_SUFFIX if request.recipients else ""
    suffix = dump_suffix(request.format, request.compression) + after
    written: list[str] = []
    with info.connect() as snapshot_conn:
        major, full_version = server_version(snapshot_conn)
        identity = read_server_identity(snapshot_conn, info)
        roles = referenced_roles(snapshot_conn)
        pg_dump = find_client_tool("pg_dump", major)
        snapshot_conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot = snapshot_conn.execute("SELECT pg_export_snapshot()").fetchone()[0]  # type: ignore[index]
        command = [pg_dump.path, "--no-password", f"--snapshot={snapshot}"]
        if request.format == "custom":
            command += [
                "--format=custom",
                custom_format_compress_option(pg_dump, request.compression, request.level),
            ]
            stream_compression = "none"
        else:
            command += ["--format=plain"]
            stream_compression = request.compression
        started_at = datetime.now(UTC)
        suffixes = ([GLOBALS_SUFFIX + after] if request.include_globals else []) + [suffix]
        claim = claim_backup_id(request.destination, info.dbname, started_at, suffixes, identity)
        backup_id = claim.backup_id
        tables = user_tables(snapshot_conn)
        stream_counter = CopyRowCounter() if request.format == "plain" else None
        counted: dict[str, int] = {}
        count_error: list[BaseException] = []

        def count_rows() -> None:  # custom archives cannot be read on the way: count aside
            try:
                counted.update(count_in_snapshot(info, snapshot, tables))
            except BaseException as exc:  # noqa: BLE001 - reported after the dump
                count_error.append(exc)

        counter = threading.Thread(target=count_rows, name="row-counts", daemon=True)
        if stream_counter is None:
            counter.start()
        try:
            globals_info = None
            if request.include_globals:
                globals_info = dump_globals(request, major, backup_id, written)
            dump_name = backup_id + suffix
            try:
                stats = stream_command_to(
                    command,
                    info.child_env(),
                    request.destination,
                    dump_name,
                    stream_compression,
                    request.level,
                    info.password,
                    progress,
                    stream_counter.feed if stream_counter else None,
                    request.recipients,
                )
            except LockTableFullError:
                raise lock_table_advice(snapshot_conn) from None
            written.append(dump_name)
            if stream_counter is not None:
                counted = stream_counter.counts
                missing = [t for t in tables if f"{t[0]}.{t[1]}" not in counted]
                if missing:  # not in the stream (never expected): count them in the snapshot
                    counted.update(count_in_snapshot(info, snapshot, missing))
            else:
                counter.join()
            if count_error:
                raise DbopsError(f"counting rows failed: {first_line(count_error[0])}")
            counts = {f"{s}.{t}": counted[f"{s}.{t}"] for s, t in tables}
            finished_at = datetime.now(UTC)
            from tasks import __version__

            manifest = Manifest(
                backup_id=backup_id,
                database=info.dbname,
                source=info.redacted(),
                server=identity,
                server_version=full_version,
                pg_dump_version=pg_dump.version,
                format=request.format,  # type: ignore[arg-type]
                compression=request.compression,  # type: ignore[arg-type]
                compression_level=request.level,
                dump=ObjectInfo(
                    name=dump_name,
                    size=stats.stored_bytes,
                    sha256=stats.sha256,
                    raw_size=stats.raw_bytes,
                ),
                globals=globals_info,
                encryption=request.recipients.encryption() if request.recipients else None,
                started_at=started_at,
                finished_at=finished_at,
                duration_seconds=round((finished_at - started_at).total_seconds(), 3),
                row_counts=counts,
                roles=roles,
                labels=request.labels,
                stages=stats.as_stages(),
                dbops_version=__version__,
            )
            write_manifest(request.destination, manifest)
            return manifest
        except BaseException:
            if counter.is_alive():
                counter.join(timeout=30)
            for name in [*written, claim.name]:  # a backup that never got its manifest
                request.destination.delete(name)
            raise
        finally:
            if not snapshot_conn.closed:
                snapshot_conn.execute("ROLLBACK")


def dump_globals(
    request: BackupRequest, major: int, backup_id: str, written: list[str]
) -> ObjectInfo:
    """Roles and tablespaces (pg_dumpall --globals-only), so a lost server can be rebuilt."""
    info = request.conn
    pg_dumpall = find_client_tool("pg_dumpall", major)
    name = backup_id + GLOBALS_SUFFIX + (AGE_SUFFIX if request.recipients else "")
    stats = stream_command_to(
        [pg_dumpall.path, "--no-password", "--globals-only", "-l", info.dbname],
        info.child_env(),
        request.destination,
        name,
        "gzip",
        6,
        info.password,
        recipients=request.recipients,
    )
    written.append(name)
    return ObjectInfo(
        name=name, size=stats.stored_bytes, sha256=stats.sha256, raw_size=stats.raw_bytes
    )

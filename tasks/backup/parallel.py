"""The parallel format: one exported snapshot, N workers, every table's rows their own objects.

pg_dump writes the schema (pre-data and post-data sections, a small custom archive) and the
rest of its data section (sequence values, large objects, extension tables' rows) in the
snapshot; N worker connections import the same snapshot and stream each table with
`COPY ... TO STDOUT` (a large table in ctid ranges, one object per range), compressed,
SHA-256 hashed and counted (rows = lines of the COPY stream) on the way. Nothing is staged
on disk. The manifest, written last, names every object; a failure anywhere deletes what
was written and leaves no manifest. Restore: `restore/parallel_load.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from tasks.backup import batches
from tasks.backup.claim import claim_backup_id
from tasks.backup.compression import compress_stream, default_threads
from tasks.backup.encryption import AGE_SUFFIX, Recipients, encrypt_chunks
from tasks.backup.identity import read_server_identity
from tasks.backup.manifest import (
    BatchedTable,
    DataObject,
    Manifest,
    ObjectInfo,
    dump_suffix,
    write_manifest,
)
from tasks.backup.parallel_plan import (
    COMPRESSED_SUFFIX,
    Batch,
    TablePart,
    plan_parts,
    tables_of,
    usable_jobs,
)
from tasks.backup.pipeline import (
    GLOBALS_SUFFIX,
    BackupRequest,
    ProgressCallback,
    custom_format_compress_option,
    dump_globals,
    lock_table_advice,
    referenced_roles,
    stream_command_to,
)
from tasks.core.children import spawn
from tasks.core.client_tools import ClientTool, find_client_tool
from tasks.core.errors import DbopsError, LockTableFullError, first_line
from tasks.core.postgres import ConnInfo, server_version
from tasks.core.streams import CHUNK_SIZE, StderrTail
from tasks.storage.destinations import Destination

PSQL_BYTES = 8 * 1024 * 1024  # larger parts, and chunks, are read by psql (_through_psql)


class _Stopped(DbopsError):
    """A worker stopping because another one failed: never the reported cause."""


@dataclass
class _Copier:
    """Worker threads, each with its own connection in the exported snapshot."""

    info: ConnInfo
    snapshot: str
    destination: Destination
    compression: str
    level: int
    threads: int
    progress: ProgressCallback | None
    recipients: Recipients | None = None
    psql: str | None = None  # psql's path: large parts go through it
    encoding: str = "UTF8"  # the server's: COPY text as stored, unconverted
    failed: threading.Event = field(default_factory=threading.Event)
    raw_bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    local: threading.local = field(default_factory=threading.local)
    connections: list[psycopg.Connection] = field(default_factory=list)

    def connection(self) -> psycopg.Connection:
        conn = getattr(self.local, "conn", None)
        if conn is None:
            conn = self.info.connect()
            with self.lock:
                self.connections.append(conn)
            # As pg_dump: rows hidden by row security fail the backup instead of missing.
            conn.execute(
                "SET row_security = off; SET statement_timeout = 0; SET lock_timeout = 0; "
                "SET idle_in_transaction_session_timeout = 0"
            )
            conn.execute(sql.SQL("SET client_encoding = {}").format(sql.Literal(self.encoding)))
            self.local.conn = conn
        return conn

    def close(self) -> None:
        for conn in self.connections:
            conn.close()

    def _count(self, size: int) -> None:
        with self.lock:  # one progress call at a time, whichever worker
            self.raw_bytes += size
            if self.progress:
                self.progress(self.raw_bytes)

    def _batches(self, copy: psycopg.Copy, rows: list[int]) -> Iterator[bytes]:
        """COPY's rows joined into CHUNK_SIZE pieces; rows counted at C speed (one line each)."""
        held: list[bytes] = []
        size = 0
        for row in copy:
            held.append(row)
            size += len(row)
            if size >= CHUNK_SIZE:
                if self.failed.is_set():
                    raise _Stopped("another part of the backup failed")
                yield self._counted(held, rows)
                held, size = [], 0
        if held:
            yield self._counted(held, rows)

    @contextlib.contextmanager
    def _rows_of(self, part: TablePart, rows: list[int]) -> Iterator[Iterator[bytes]]:
        """The part's COPY stream in CHUNK_SIZE pieces; a failure or a row count COPY does not
        confirm raises inside the object's write, so nothing is stored."""
        if self.psql is not None and (part.chunk is not None or part.size >= PSQL_BYTES):
            yield self._through_psql(part, rows)
            return
        conn = self.connection()
        # One transaction per part in the imported snapshot: a worker holds one table's lock
        # at a time, and the snapshot's own connection none (pg_dump's schema run holds them
        # all while it runs), so the lock table needs what a plain backup needs plus N.
        with conn.transaction(), conn.cursor() as cursor:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(self.snapshot)))
            for statement in part.lock():
                conn.execute(statement)
            with cursor.copy(part.query()) as copy:
                yield self._batches(copy, rows)
            if cursor.rowcount != rows[0]:
                raise DbopsError(
                    f"COPY of {part.schema}.{part.table} reported {cursor.rowcount} rows but "
                    f"the stream held {rows[0]}; no backup was stored"
                )

    def _through_psql(self, part: TablePart, rows: list[int]) -> Iterator[bytes]:
        """A large part through psql, which reads COPY rows in C: psycopg's row-by-row
        iteration costs more CPU than compressing them. Same snapshot, lock and settings."""
        assert self.psql is not None
        statements = [
            "SET row_security = off",
            sql.SQL("SET client_encoding = {}").format(sql.Literal(self.encoding)).as_string(),
            "SET statement_timeout = 0",
            "SET lock_timeout = 0",
            "SET idle_in_transaction_session_timeout = 0",
            "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY",
            sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(self.snapshot)).as_string(),
            *(statement.as_string() for statement in part.lock()),
            part.query().as_string(),
        ]
        argv = [self.psql, "--no-psqlrc", "--quiet", "--no-password", "--set", "ON_ERROR_STOP=1"]
        argv += ["--dbname", self.info.dbname]
        for statement in statements:
            argv += ["--command", statement]
        process = spawn(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.info.child_env(),
        )
        assert process.stdout is not None and process.stderr is not None
        tail = StderrTail(process.stderr)
        try:
            while chunk := process.stdout.read(CHUNK_SIZE):
                if self.failed.is_set():
                    raise _Stopped("another part of the backup failed")
                yield self._counted([chunk], rows)
            if process.wait() != 0:
                line = tail.last(self.info.password, ("ERROR:", "FATAL:", "error:"))
                if "could not obtain lock" in line:
                    raise psycopg.errors.LockNotAvailable(line)
                if "max_locks_per_transaction" in line:
                    raise LockTableFullError(line)
                if "does not exist" in line or "after the backup's snapshot" in line:
                    raise psycopg.errors.ObjectNotInPrerequisiteState(line)
                raise DbopsError(
                    f"psql failed copying {part.schema}.{part.table} ({line or 'no message'}); "
                    "no backup was stored"
                )
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()

    def _counted(self, held: list[bytes], rows: list[int]) -> bytes:
        data = b"".join(held)
        rows[0] += data.count(b"\n")
        rows[1] += len(data)
        self._count(len(data))
        return data

    def copy_part(self, part: TablePart) -> DataObject:
        """One part streamed out of the snapshot into its object: complete, or not at all."""
        rows = [0, 0]  # lines, bytes
        with self._rows_of(part, rows) as chunks:
            stored, digest = self._store(part.name, chunks)
        return DataObject(
            name=part.name,
            size=stored,
            sha256=digest,
            raw_size=rows[1],
            table=f"{part.schema}.{part.table}",
            relation=[part.schema, part.table],
            columns=part.columns,
            rows=rows[0],
            chunk=part.chunk,
        )

    def copy_batch(self, batch: Batch) -> DataObject:
        """Small tables' sections into one object, each table in its own snapshot transaction
        (one lock held at a time) and buffered (it is small) to write its exact length first."""
        entries: list[BatchedTable] = []
        raw = [0]

        def sections() -> Iterator[bytes]:
            head = batches.prelude(self.encoding)
            raw[0] += len(head)
            yield head
            for part in batch.tables:
                rows = [0, 0]
                with self._rows_of(part, rows) as chunks:
                    data = b"".join(chunks)
                relation = [part.schema, part.table]
                table = f"{part.schema}.{part.table}"
                entries.append(BatchedTable(table=table, relation=relation, columns=part.columns,
                                            rows=rows[0], raw_size=rows[1]))  # fmt: skip
                piece = batches.section(relation, part.columns, rows[0], data)
                raw[0] += len(piece)
                yield piece

        stored, digest = self._store(batch.name, sections())
        return DataObject(
            name=batch.name, size=stored, sha256=digest, raw_size=raw[0], tables=entries
        )

    def _store(self, name: str, chunks: Iterator[bytes]) -> tuple[int, str]:
        """Compressed (and encrypted) into `name`, hashed on the way: its size and SHA-256."""
        hasher = hashlib.sha256()
        stored = 0
        with self.destination.open_write(name) as sink:
            pieces = compress_stream(
                _at_least_one(chunks), self.compression, self.level, self.threads
            )
            if self.recipients is not None:
                pieces = encrypt_chunks(pieces, self.recipients)
            for piece in pieces:
                hasher.update(piece)
                sink.write(piece)
                stored += len(piece)
        return stored, hasher.hexdigest()


def _at_least_one(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """An empty table still makes a whole compressed stream (gunzip reads it as empty)."""
    empty = True
    for chunk in chunks:
        empty = False
        yield chunk
    if empty:
        yield b""


def _exclusions(
    pg_dump: ClientTool, parts: list[TablePart | Batch]
) -> tuple[list[str], bytes | None]:
    """pg_dump arguments that leave out the tables the workers copy (all other data stays)."""
    tables = tables_of(parts)
    patterns = ['"{}"."{}"'.format(s.replace('"', '""'), t.replace('"', '""')) for s, t in tables]
    if pg_dump.major >= 17:  # --filter: a list on stdin, whatever the number of tables
        lines = "".join(f"exclude table_data {p}\n" for p in patterns)
        return ["--filter=-"], lines.encode()
    return [f"--exclude-table-data={p}" for p in patterns], None


def run_parallel_backup(
    request: BackupRequest, progress: ProgressCallback | None = None
) -> Manifest:
    """Schema, the rest of the data section and every table's rows, then the manifest."""
    info = request.conn
    destination = request.destination
    destination.check_writable()
    written: list[str] = []
    started = time.perf_counter()
    with info.connect() as snapshot_conn:
        major, full_version = server_version(snapshot_conn)
        identity = read_server_identity(snapshot_conn, info)
        roles = referenced_roles(snapshot_conn)
        pg_dump = find_client_tool("pg_dump", major)
        jobs = usable_jobs(snapshot_conn, request.jobs)
        encoding = str(snapshot_conn.execute("SHOW server_encoding").fetchone()[0])  # type: ignore[index]
        snapshot_conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snapshot = str(snapshot_conn.execute("SELECT pg_export_snapshot()").fetchone()[0])  # type: ignore[index]
        started_at = datetime.now(UTC)
        after = AGE_SUFFIX if request.recipients else ""
        parts = plan_parts(snapshot_conn, "ID", request.compression, request.chunk_bytes, after)
        rest_suffix = ".data.sql" + COMPRESSED_SUFFIX[request.compression] + after
        schema_suffix = dump_suffix("parallel", request.compression) + after
        suffixes = ([GLOBALS_SUFFIX] if request.include_globals else []) + [
            schema_suffix,
            rest_suffix,
            *(p.name.removeprefix("ID") for p in parts),
        ]
        claim = claim_backup_id(destination, info.dbname, started_at, suffixes, identity)
        backup_id = claim.backup_id
        for part in parts:
            part.name = backup_id + part.name.removeprefix("ID")
        copier = _Copier(
            info,
            snapshot,
            destination,
            request.compression,
            request.level,
            max(1, default_threads() // jobs),
            progress,
            request.recipients,
            find_client_tool("psql", major).path,
            encoding,
        )
        try:
            globals_info = None
            if request.include_globals:
                globals_info = dump_globals(request, major, backup_id, written)
            base = [pg_dump.path, "--no-password", f"--snapshot={snapshot}"]
            schema_command = [
                *base,
                "--format=custom",
                custom_format_compress_option(pg_dump, request.compression, request.level),
                "--section=pre-data",
                "--section=post-data",
            ]
            excluded, filter_lines = _exclusions(pg_dump, parts)
            rest_command = [*base, "--format=plain", "--section=data", *excluded]

            def dump(command: list[str], name: str, compression: str, stdin: bytes | None):
                stats = stream_command_to(
                    command,
                    info.child_env(),
                    destination,
                    name,
                    compression,
                    request.level,
                    info.password,
                    stdin_data=stdin,
                    recipients=request.recipients,
                )
                with copier.lock:
                    written.append(name)
                return stats

            with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="copy") as pool:
                # One after the other in one worker: each pg_dump locks every table.
                schema_job = pool.submit(
                    lambda: (
                        dump(schema_command, backup_id + schema_suffix, "none", None),
                        dump(
                            rest_command,
                            backup_id + rest_suffix,
                            request.compression,
                            filter_lines,
                        ),
                    )
                )

                def copy(part: TablePart | Batch) -> DataObject:
                    if copier.failed.is_set():
                        raise _Stopped("another part of the backup failed")
                    try:
                        if isinstance(part, Batch):
                            result = copier.copy_batch(part)
                        else:
                            result = copier.copy_part(part)
                    except BaseException:
                        copier.failed.set()
                        raise
                    with copier.lock:
                        written.append(part.name)
                    return result

                table_jobs = [pool.submit(copy, p) for p in sorted(parts, key=lambda p: -p.size)]
                done, _ = wait([schema_job, *table_jobs], return_when=FIRST_EXCEPTION)
                failures = [f.exception() for f in done if f.exception()]
                failures.sort(key=lambda e: isinstance(e, _Stopped))  # the first cause first
                failure = failures[0] if failures else None
                if failure is not None:
                    copier.failed.set()
                    for job in table_jobs:
                        job.cancel()
                    if _lock_table_full(failure):
                        raise lock_table_advice(snapshot_conn, jobs) from None
                    raise _explain(failure) from None
                schema_stats, rest_stats = schema_job.result()
                objects = [job.result() for job in table_jobs]
            rest = DataObject(
                name=backup_id + rest_suffix,
                size=rest_stats.stored_bytes,
                sha256=rest_stats.sha256,
                raw_size=rest_stats.raw_bytes,
            )
            objects.sort(key=lambda o: o.name)
            counts = {f"{s}.{t}": 0 for s, t in tables_of(parts)}
            for obj in objects:
                for entry in obj.tables:
                    counts[entry.table] += entry.rows
                if obj.table is not None:
                    counts[obj.table] += obj.rows or 0
            finished_at = datetime.now(UTC)
            from tasks import __version__

            seconds = time.perf_counter() - started
            stored = schema_stats.stored_bytes + rest.size + sum(o.size for o in objects)
            manifest = Manifest(
                backup_id=backup_id,
                database=info.dbname,
                source=info.redacted(),
                server=identity,
                server_version=full_version,
                pg_dump_version=pg_dump.version,
                format="parallel",
                compression=request.compression,  # type: ignore[arg-type]
                compression_level=request.level,
                dump=ObjectInfo(
                    name=backup_id + schema_suffix,
                    size=schema_stats.stored_bytes,
                    sha256=schema_stats.sha256,
                    raw_size=schema_stats.raw_bytes,
                ),
                globals=globals_info,
                encryption=request.recipients.encryption() if request.recipients else None,
                objects=[rest, *objects],
                jobs=jobs,
                encoding=encoding,
                started_at=started_at,
                finished_at=finished_at,
                duration_seconds=round((finished_at - started_at).total_seconds(), 3),
                row_counts=counts,
                roles=roles,
                labels=request.labels,
                stages={
                    "seconds": round(seconds, 3),
                    "jobs": jobs,
                    "objects": len(objects) + 2,
                    "raw_mb": round((copier.raw_bytes + rest_stats.raw_bytes) / 2**20, 3),
                    "stored_mb": round(stored / 2**20, 3),
                },
                dbops_version=__version__,
            )
            write_manifest(destination, manifest)
            return manifest
        except BaseException:
            copier.failed.set()
            for name in [*written, claim.name]:  # a backup that never got its manifest
                destination.delete(name)
            raise
        finally:
            copier.close()
            if not snapshot_conn.closed:
                snapshot_conn.execute("ROLLBACK")


def _lock_table_full(failure: BaseException) -> bool:
    """pg_dump's, psql's or a worker's own lock failing for want of lock-table room."""
    if isinstance(failure, LockTableFullError):
        return True
    full = isinstance(failure, psycopg.errors.OutOfMemory)
    return full and "shared memory" in first_line(failure)


CHANGED = psycopg.errors.UndefinedTable | psycopg.errors.ObjectNotInPrerequisiteState


def _explain(failure: BaseException) -> BaseException:
    if isinstance(failure, psycopg.errors.LockNotAvailable):
        return DbopsError(
            f"a table was locked exclusively during the backup ({first_line(failure)}); "
            "no backup was stored, run it again when no DDL is running"
        )
    if isinstance(failure, CHANGED):
        return DbopsError(
            f"a table was dropped or changed during the backup ({first_line(failure)}); "
            "no backup was stored, run it again when no DDL is running"
        )
    if isinstance(failure, psycopg.Error):
        return DbopsError(f"copying a table failed ({first_line(failure)}); no backup was stored")
    return failure

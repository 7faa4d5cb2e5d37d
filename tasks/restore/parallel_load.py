"""Loading a parallel backup: schema, then N workers streaming data objects, then post-data.

The schema archive (small: definitions only) is read into a temporary file, checked against
its size and SHA-256, and restored by pg_restore: the pre-data section first; after the data,
the post-data section with `pg_restore -j N`, pg_restore's own dependency-aware parallel index
and constraint builds (it needs a seekable file, which is why only this archive is staged).
Between them N worker connections each stream data objects from the destination,
decompressed on the fly, into `COPY ... FROM STDIN`; an object is checked against its size and
SHA-256 before its last chunk is sent, and the rows COPY reports against the manifest. The
rest of pg_dump's data section (sequence values, large objects) goes through psql. Whatever
fails, the caller's scratch database is dropped; nothing here touches the target.
"""

from __future__ import annotations

import dataclasses
import io
import subprocess
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from tasks.backup import batches
from tasks.backup.catalog import BackupSource
from tasks.backup.compression import DecompressingReader
from tasks.backup.encryption import decrypting
from tasks.backup.manifest import DataObject, Manifest
from tasks.core.children import spawn
from tasks.core.errors import (
    BackupCheck,
    BackupFaultError,
    DbopsError,
    SurroundingsError,
    first_line,
)
from tasks.core.postgres import ConnInfo, free_connection_slots
from tasks.core.streams import CHUNK_SIZE, HashingReader, StderrTail
from tasks.restore.readback import check_stored
from tasks.restore.streaming import (
    SURROUNDINGS_CLASSES,
    ChunkFilter,
    psql_command,
    restore_command,
    stream_into,
    tool_failure,
)

ADVICE = "; nothing was restored, restore another backup"


class _Stopped(DbopsError):
    """A loader abandoning its object because another one failed: never the reported cause."""


@dataclass
class DataLoaded:
    """What loading the data objects saw: bytes read and rows per table, as COPY reported."""

    bytes_read: int = 0
    rows: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, size: int, table: str | None, rows: int) -> None:
        with self.lock:
            self.bytes_read += size
            if table is not None:
                self.rows[table] = self.rows.get(table, 0) + rows


def fetch_schema(source: BackupSource, directory: Path) -> Path:
    """The schema archive in a local file (pg_restore -j seeks in it), checked first."""
    manifest = _manifest(source)
    path = directory / "schema.dump"
    with (
        source.destination.open_read(manifest.dump.name) as raw,
        decrypting(
            reader := HashingReader(raw), source.identity, source.encryption is not None, source.url
        ) as plain,
        path.open("wb") as out,
    ):
        while chunk := plain.read(CHUNK_SIZE):
            out.write(chunk)
    check_stored(source.url, reader, manifest.dump, ADVICE)
    return path


def restore_section(
    source: BackupSource,
    major: int,
    archive: Path,
    into: ConnInfo,
    section: str,
    jobs: int,
    secret: str | None,
) -> None:
    """pg_restore of one section of the schema archive into `into`, stopping at an error."""
    command = [part.replace("{dbname}", into.dbname) for part in restore_command(source, major)]
    command += [f"--section={section}", f"--jobs={jobs}", str(archive)]
    process = spawn(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=into.child_env(),
    )
    assert process.stderr is not None
    tail = StderrTail(process.stderr)
    try:
        if process.wait() != 0:
            raise tool_failure("pg_restore", process.returncode, tail, secret)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def copy_failure(exc: psycopg.Error, where: str) -> DbopsError:
    """A failed COPY is the backup's fault unless the server says it was its own."""
    state = exc.sqlstate or ""
    if state[:2] in SURROUNDINGS_CLASSES or isinstance(exc, psycopg.OperationalError):
        return SurroundingsError(
            f"loading {where} failed because of the server, not the backup: {first_line(exc)}; "
            "nothing was restored, fix the server and try again"
        )
    return BackupFaultError(f"loading {where} failed: {first_line(exc)}", BackupCheck.RESTORE)


def load_object(
    source: BackupSource,
    obj: DataObject,
    conn: psycopg.Connection,
    stop: threading.Event | None = None,
) -> int:
    """Stream one table object into COPY FROM STDIN; the end is sent only if it is intact.
    `stop` set (another object failed) abandons the COPY at the next chunk."""
    assert obj.relation is not None
    where = source.destination.url_for(obj.name)
    manifest = _manifest(source)
    target = sql.Identifier(*obj.relation)
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in obj.columns)
    listed = sql.SQL(" ({})").format(columns) if obj.columns else sql.SQL("")
    query = sql.SQL("COPY {}{} FROM STDIN").format(target, listed)
    try:
        with (
            source.destination.open_read(obj.name) as raw,
            decrypting(
                reader := HashingReader(raw), source.identity, source.encryption is not None, where
            ) as plain,
            conn.cursor() as cursor,
        ):
            with cursor.copy(query) as copy:
                decompressor = DecompressingReader(plain, manifest.compression)
                held = decompressor.read_chunk(CHUNK_SIZE)
                while True:
                    if stop is not None and stop.is_set():
                        raise _Stopped("another object failed to load")
                    following = decompressor.read_chunk(CHUNK_SIZE) if held else b""
                    if not following:
                        check_stored(where, reader, obj, ADVICE)
                    if held:
                        copy.write(held)
                    if not following:
                        break
                    held = following
            rows = cursor.rowcount
    except BackupFaultError as exc:
        if where in str(exc):
            raise
        raise BackupFaultError(f"{where}: {exc}", exc.check) from None
    except psycopg.Error as exc:
        raise copy_failure(exc, where) from None
    if rows != obj.rows:
        raise BackupFaultError(
            f"{where} loaded {rows} rows of {obj.table} but the manifest says {obj.rows}; "
            "the backup is inconsistent",
            BackupCheck.ROW_COUNTS,
        )
    return rows


def load_batch(
    source: BackupSource,
    obj: DataObject,
    conn: psycopg.Connection,
    pick: Callable[[list[str]], bool],
    loaded: DataLoaded,
) -> None:
    """A batch of small tables, read whole (it is small) and checked before any row is sent,
    then the sections `pick` chooses, each by COPY, its rows checked against the manifest."""
    where = source.destination.url_for(obj.name)
    manifest = _manifest(source)
    with (
        source.destination.open_read(obj.name) as raw,
        decrypting(
            reader := HashingReader(raw), source.identity, source.encryption is not None, where
        ) as plain,
    ):
        stored = io.BytesIO(b"".join(iter(lambda: plain.read(CHUNK_SIZE), b"")))
    check_stored(where, reader, obj, ADVICE)  # before a byte is decompressed or loaded
    decompressor = DecompressingReader(stored, manifest.compression)
    data = b"".join(iter(lambda: decompressor.read_chunk(CHUNK_SIZE), b""))
    for entry, text in batches.split(data, obj.tables, where):
        if not pick(entry.relation):
            continue
        try:
            with conn.cursor() as cursor:
                with cursor.copy(batches.copy_from(entry.relation, entry.columns)) as copy:
                    copy.write(text)
                rows = cursor.rowcount
        except psycopg.Error as exc:
            raise copy_failure(exc, f"{where} ({entry.table})") from None
        if rows != entry.rows:
            raise BackupFaultError(
                f"{where} loaded {rows} rows of {entry.table} but the manifest says "
                f"{entry.rows}; the backup is inconsistent",
                BackupCheck.ROW_COUNTS,
            )
        loaded.add(0, entry.table, rows)
    loaded.add(obj.size, None, 0)


def load_rest(
    source: BackupSource,
    obj: DataObject,
    into: ConnInfo,
    major: int,
    secret: str | None,
    transform: ChunkFilter | None = None,
) -> None:
    """Sequence values, large objects and other non-table data: pg_dump's SQL into psql."""
    manifest = _manifest(source)
    plain = dataclasses.replace(source, dump_name=obj.name, compression=manifest.compression)
    psql = [part.replace("{dbname}", into.dbname) for part in psql_command(major)]
    stream_into(plain, psql, into.child_env(), secret, transform, expected=obj)


def load_data(
    source: BackupSource,
    into: ConnInfo,
    major: int,
    secret: str | None,
    jobs: int,
    wanted: Callable[[DataObject], bool] = lambda obj: True,
    transform: ChunkFilter | None = None,
    pick: Callable[[list[str]], bool] = lambda relation: True,
) -> DataLoaded:
    """The data objects `wanted` picks, by `jobs` workers, largest first (`transform`
    filters the rest of the data section on its way to psql; `pick` the tables of a batch,
    whose tables one worker loads)."""
    manifest = _manifest(source)
    loaded = DataLoaded()
    local = threading.local()
    connections: list[psycopg.Connection] = []
    failed = threading.Event()
    lock = threading.Lock()

    def connection() -> psycopg.Connection:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = into.connect()
            with lock:
                connections.append(conn)
            conn.execute("SET synchronous_commit = off")  # a scratch database: fsync at swap
            if manifest.encoding:  # the objects' text, converted to the database's encoding
                conn.execute(
                    sql.SQL("SET client_encoding = {}").format(sql.Literal(manifest.encoding))
                )
            local.conn = conn
        return conn

    def one(obj: DataObject) -> None:
        if failed.is_set():
            return
        try:
            if obj.tables:
                load_batch(source, obj, connection(), pick, loaded)
            elif obj.table is None:
                load_rest(source, obj, into, major, secret, transform)
                loaded.add(obj.size, None, 0)
            else:
                loaded.add(obj.size, obj.table, load_object(source, obj, connection(), failed))
        except BaseException:
            failed.set()
            raise

    objects = sorted((o for o in manifest.objects if wanted(o)), key=lambda o: -o.size)
    try:
        with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="load") as pool:
            futures = [pool.submit(one, obj) for obj in objects]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failures = [f.exception() for f in done if f.exception()]
            failures.sort(key=lambda e: isinstance(e, _Stopped))  # the first cause first
            failure = failures[0] if failures else None
            if failure is not None:
                failed.set()
                raise failure
    finally:
        for conn in connections:
            conn.close()
    return loaded


def load_parallel(
    source: BackupSource, into: ConnInfo, major: int, secret: str | None, jobs: int
) -> DataLoaded:
    """The whole backup into the empty database `into`: pre-data, data, post-data, by at most
    `jobs` connections at once (fewer when the server has fewer slots free)."""
    with into.connect() as conn:
        jobs = max(1, min(jobs, free_connection_slots(conn) - 1))
    with tempfile.TemporaryDirectory(prefix="dbops-schema-") as directory:
        archive = fetch_schema(source, Path(directory))
        restore_section(source, major, archive, into, "pre-data", 1, secret)
        loaded = load_data(source, into, major, secret, jobs)
        restore_section(source, major, archive, into, "post-data", jobs, secret)
    loaded.bytes_read += _manifest(source).dump.size
    return loaded


def _manifest(source: BackupSource) -> Manifest:
    if source.manifest is None or source.manifest.format != "parallel":
        raise DbopsError(f"{source.url} is not a parallel backup with its manifest")
    return source.manifest

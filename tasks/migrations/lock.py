"""One migrator per database: a session advisory lock taken with pg_try_advisory_lock, polled.

Never the blocking pg_advisory_lock: CREATE INDEX CONCURRENTLY waits for every
transaction that might see the table, and a session stuck in a blocking
advisory-lock wait is such a transaction, so two migrators could deadlock.
Polling with pg_try_advisory_lock from an idle autocommit session holds no
snapshot, and gives up after a bounded wait with a message naming the holder.

A migration run also holds the database's dbops slot (`exclusive_migration`),
so no backup, restore or maintenance job of that database runs beside it.

The lock lives in the target database. A rollback that replaces the database
(restore into a scratch database, then DROP ... WITH (FORCE)) ends the lock's
session; by then the run is over. A waiting migrator whose session is ended
that way reconnects and keeps polling until its deadline.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg

from tasks.core.errors import DbopsError
from tasks.core.postgres import ConnInfo
from tasks.core.slots import database_slot

APPLICATION_NAME = "dbops-migrate"


def lock_key(database: str) -> int:
    """A stable signed 64-bit key per database name, shared by every dbops migrator."""
    digest = hashlib.sha256(f"dbops:migrate:{database}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _lock_ids(key: int) -> tuple[int, int]:
    """pg_locks shows a bigint advisory key as classid (high 32 bits) and objid (low 32)."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


@dataclass
class LockHolder:
    pid: int
    application: str
    since: str


def lock_holder(conn: psycopg.Connection, key: int) -> LockHolder | None:
    classid, objid = _lock_ids(key)
    row = conn.execute(
        """
        SELECT l.pid, coalesce(a.application_name, ''), coalesce(a.backend_start::text, '?')
        FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
          AND l.classid = %s::oid AND l.objid = %s::oid
          AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
        """,
        [classid, objid],
    ).fetchone()
    return LockHolder(int(row[0]), row[1], row[2]) if row else None


@dataclass
class MigrationLock:
    database: str
    key: int
    waited_seconds: float


def _connect(info: ConnInfo, owner: str) -> psycopg.Connection:
    name = f"{APPLICATION_NAME} {owner}".strip()[:63]
    return ConnInfo({**info.params, "application_name": name}, info.app_params).connect()


@contextlib.contextmanager
def migration_lock(
    info: ConnInfo,
    wait_seconds: float,
    owner: str = "",
    poll_seconds: float = 0.5,
    log: Callable[[str], None] | None = None,
) -> Iterator[MigrationLock]:
    """Hold the database's migration lock for the duration of the block, or raise DbopsError."""
    key = lock_key(info.dbname)
    started = time.monotonic()
    deadline = started + max(wait_seconds, 0)
    conn: psycopg.Connection | None = None
    reported = connected = False
    try:
        while True:
            try:
                if conn is None or conn.closed or conn.broken:
                    conn = _connect(info, owner)
                    connected = True
                got = conn.execute("SELECT pg_try_advisory_lock(%s)", [key]).fetchone()[0]  # type: ignore[index]
                if got:
                    break
                holder = lock_holder(conn, key)
            except psycopg.OperationalError:
                # The session was ended (e.g. a rollback replaced the database): reconnect.
                conn, holder = None, None
            except DbopsError:
                # Unreachable at first: say so at once. Gone later: the database is being
                # replaced by a rollback, so keep trying until the deadline.
                if not connected or time.monotonic() >= deadline:
                    raise
                conn, holder = None, None
            if time.monotonic() >= deadline:
                who = (
                    f"pid {holder.pid}, {holder.application or 'unknown application'}, "
                    f"connected since {holder.since}"
                    if holder
                    else "a session that just ended"
                )
                raise DbopsError(
                    f"another migration holds the migration lock of database {info.dbname!r} "
                    f"({who}); gave up after waiting {wait_seconds:g} s; run again when it has "
                    "finished, or wait longer with lock_wait_seconds"
                )
            if log and not reported:
                holder_text = f" (held by pid {holder.pid})" if holder else ""
                log(f"waiting up to {wait_seconds:g} s for the migration lock{holder_text}")
                reported = True
            time.sleep(max(0.0, min(poll_seconds, deadline - time.monotonic())))
        yield MigrationLock(info.dbname, key, round(time.monotonic() - started, 3))
    finally:
        if conn is not None and not conn.closed:
            with contextlib.suppress(psycopg.Error):
                if not conn.broken:
                    conn.execute("SELECT pg_advisory_unlock(%s)", [key])
            conn.close()


@contextlib.contextmanager
def exclusive_migration(
    database_url: str | None,
    lock_wait_seconds: float,
    slot_wait_seconds: float,
    owner: str = "",
    log: Callable[[str], None] | None = None,
) -> Iterator[MigrationLock]:
    """The migration lock, then the database's dbops slot, for a whole migration run.

    The lock comes first: another migrator is told within lock_wait_seconds who holds it,
    while waiting for a backup or maintenance job to finish holds nothing they need. The
    flow parameter is resolved here (secret://BLOCK, a password-less URL or None for
    DATABASE_URL), so the password never passes through the flow.
    """
    from tasks.core.settings import Settings

    info = Settings.load(database_url).connection()
    with (
        migration_lock(info, lock_wait_seconds, owner=owner, log=log) as lock,
        database_slot(info, slot_wait_seconds),
    ):
        yield lock

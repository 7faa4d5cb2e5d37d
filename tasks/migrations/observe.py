"""What a migration statement did to the tables it touched: locks, rewrites, scans, rows.

Inside a migration's transaction every lock is held until COMMIT, so the locks
a statement took are read exactly from the same session right after it
(`pg_locks WHERE pid = pg_backend_pid()`), before the commit: no sampling and
no timing luck. The same goes for `pg_class.relfilenode` (a new one means the
table was rewritten) and `pg_stat_xact_user_tables` (this transaction's scans
and rows). A statement outside a transaction (CREATE INDEX CONCURRENTLY) has
released its locks when it returns: a second session samples `pg_locks` for
the migrating backend while it runs, and its scans and rows come from
`pg_stat_user_tables` after a forced stats flush. An external tool's
migration is watched the same way, every backend of the scratch database.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg
from pydantic import BaseModel, Field

from tasks.core.errors import DbopsError, first_line
from tasks.core.postgres import ConnInfo
from tasks.migrations.statements import Statement

# Weakest to strongest, as PostgreSQL's table-level lock modes.
LOCK_MODES = (
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
)
BLOCKS_READS = {"AccessExclusiveLock"}
BLOCKS_WRITES = {"ShareLock", "ShareRowExclusiveLock", "ExclusiveLock", "AccessExclusiveLock"}
SAMPLE_INTERVAL = 0.01
# Every way PostgreSQL gives an existing table a new file (ALTER ... TYPE, a volatile default,
# SET TABLESPACE, TRUNCATE, VACUUM FULL, CLUSTER, REFRESH MATERIALIZED VIEW) takes this lock.
REWRITE_LOCK = "AccessExclusiveLock"

# One round trip: every table with its file node and this transaction's (pg_stat_get_xact_*)
# or the shared (pg_stat_get_*) scan and row counters.
TABLES_NOW = """
SELECT c.oid, quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.relkind::text,
       c.relfilenode, {scans}(c.oid),
       {ins}(c.oid) + {upd}(c.oid) + {dele}(c.oid)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'm')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
  AND n.nspname NOT LIKE 'pg_temp%' AND n.nspname NOT LIKE 'pg_toast_temp%'
"""
COUNTERS = {
    True: {  # this transaction's, before COMMIT
        "scans": "pg_stat_get_xact_numscans",
        "ins": "pg_stat_get_xact_tuples_inserted",
        "upd": "pg_stat_get_xact_tuples_updated",
        "dele": "pg_stat_get_xact_tuples_deleted",
    },
    False: {  # the shared counters, after a flush
        "scans": "pg_stat_get_numscans",
        "ins": "pg_stat_get_tuples_inserted",
        "upd": "pg_stat_get_tuples_updated",
        "dele": "pg_stat_get_tuples_deleted",
    },
}
OWN_LOCKS = """
SELECT relation, mode FROM pg_locks
WHERE pid = pg_backend_pid() AND locktype = 'relation' AND granted
  AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def lock_label(mode: str) -> str:
    """AccessExclusiveLock -> ACCESS EXCLUSIVE, as the documentation writes it."""
    words = []
    for char in mode.removesuffix("Lock"):
        if char.isupper() and words:
            words.append(" ")
        words.append(char.upper())
    return "".join(words)


def strongest(modes: set[str]) -> str | None:
    ranked = [m for m in LOCK_MODES if m in modes]
    return ranked[-1] if ranked else None


class RelationEffect(BaseModel):
    """What one statement did to one table that existed before it."""

    relation: str
    lock: str | None = Field(None, description="the strongest lock it took, e.g. ACCESS EXCLUSIVE")
    lock_inferred: bool = Field(
        False, description="not seen by the sampler but proven by the rewrite (a new file)"
    )
    blocks: str = Field("nothing", description="reads and writes, writes, or nothing")
    rewritten: bool = Field(False, description="its relfilenode changed: the table was rewritten")
    scanned: bool = Field(False, description="a sequential scan of the whole table")
    rows: int = Field(0, description="rows inserted, updated or deleted (a rewrite counts each)")
    held_seconds: float = Field(
        0.0, description="how long the lock was held: in a transaction, until its COMMIT"
    )


@dataclass
class _Snapshot:
    relations: dict[int, tuple[str, str, int]]  # oid -> (name, relkind, relfilenode)
    locks: set[tuple[int, str]]
    stats: dict[int, tuple[int, int]]  # oid -> (seq_scan, rows written)


@dataclass
class StatementObservation:
    index: int
    statement: Statement
    started: float
    seconds: float = 0.0
    rows: int | None = None
    effects: list[RelationEffect] = field(default_factory=list)
    sampled: bool = False  # locks from a second session's samples, not exact
    finished: bool = False  # False: the statement failed (or was interrupted)
    overhead_mark: float = 0.0  # the Observer's overhead when the statement started
    samples: int = 0  # how many times the sampling session read pg_locks while it ran


def snapshot(conn: psycopg.Connection, in_transaction: bool) -> _Snapshot:
    if not in_transaction:  # what the backend counted so far must reach the shared stats first
        if conn.info.server_version >= 150000:
            conn.execute("SELECT pg_stat_force_next_flush()")  # flushed when it goes idle
        conn.execute("SELECT pg_stat_clear_snapshot()")
    relations, stats = {}, {}
    for oid, name, kind, node, scans, rows in conn.execute(
        TABLES_NOW.format(**COUNTERS[in_transaction])  # type: ignore[arg-type]
    ).fetchall():
        relations[oid] = (name, kind, node)
        stats[oid] = (scans or 0, rows or 0)
    locks = {(oid, mode) for oid, mode in conn.execute(OWN_LOCKS).fetchall()}
    return _Snapshot(relations, locks, stats)


class LockSampler:
    """A second session that samples the granted relation locks of a backend (or of every other
    backend of the database) until stopped, keeping every (relation, mode) seen."""

    def __init__(self, info: ConnInfo, pid: int | None) -> None:
        self.info, self.pid = info, pid
        self.spans: dict[tuple[int, str], list[float]] = {}  # first and last time seen
        self.samples = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lock-sampler", daemon=True)

    def __enter__(self) -> LockSampler:
        self._thread.start()
        self._ready.wait(15)
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._stop.set()
        self._thread.join(15)
        if self._error is not None and exc_type is None:  # never hide the statement's own error
            raise DbopsError(
                f"the session sampling pg_locks on {self.info.redacted()} failed "
                f"({first_line(self._error)}), so the locks taken are unknown; run again"
            )

    def _run(self) -> None:
        query = (
            "SELECT relation, mode FROM pg_locks WHERE locktype = 'relation' AND granted "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            + ("AND pid = %s" if self.pid is not None else "AND pid <> pg_backend_pid()")
        )
        params = [self.pid] if self.pid is not None else []
        try:
            with self.info.connect() as conn:
                self._ready.set()
                while True:
                    rows = conn.execute(query, params).fetchall()  # type: ignore[arg-type]
                    now = time.perf_counter()
                    for key in rows:
                        self.spans.setdefault((key[0], key[1]), [now, now])[1] = now
                    self.samples += 1
                    if self._stop.wait(SAMPLE_INTERVAL):
                        break
        except BaseException as exc:  # noqa: BLE001 - an observation gap, not a failure
            self._error = exc
        finally:
            self._ready.set()

    @property
    def seen(self) -> set[tuple[int, str]]:
        return set(self.spans)

    def held(self, key: tuple[int, str]) -> float:
        """How long a lock was seen held: from its first sample to one interval past its last."""
        first, last = self.spans.get(key, (0.0, 0.0))
        return last - first + SAMPLE_INTERVAL if key in self.spans else 0.0


def effects_between(
    before: _Snapshot,
    after: _Snapshot,
    locks: set[tuple[int, str]],
    held: Callable[[int, str], float] | None = None,
) -> list[RelationEffect]:
    """Per relation that existed before: the strongest lock newly taken, rewrite, scan, rows.
    A relation the statement created is nobody else's yet, so its locks block no one."""
    by_relation: dict[int, set[str]] = {}
    for oid, mode in locks - before.locks:
        by_relation.setdefault(oid, set()).add(mode)
    effects = []
    for oid, (name, kind, node) in before.relations.items():
        modes = by_relation.get(oid, set())
        now = after.relations.get(oid)
        rewritten = now is not None and kind != "p" and now[2] != node
        scans0, rows0 = before.stats.get(oid, (0, 0))
        scans1, rows1 = after.stats.get(oid, (scans0, rows0))
        scanned, rows = scans1 > scans0, max(rows1 - rows0, 0)
        if not (modes or rewritten or scanned or rows):
            continue
        mode = strongest(modes)
        inferred = rewritten and mode != REWRITE_LOCK
        if inferred:  # a sampler can miss a short lock; a new relfilenode proves this one
            mode = REWRITE_LOCK
        effects.append(
            RelationEffect(
                relation=name,
                lock=lock_label(mode) if mode else None,
                lock_inferred=inferred,
                blocks=(
                    "reads and writes"
                    if mode in BLOCKS_READS
                    else "writes"
                    if mode in BLOCKS_WRITES
                    else "nothing"
                ),
                rewritten=rewritten,
                scanned=scanned and not rewritten,
                rows=rows,
                held_seconds=round(held(oid, mode), 3) if held and mode and not inferred else 0.0,
            )
        )
    effects.sort(key=lambda e: (-LOCK_MODES.index(_mode_of(e.lock)), e.relation))
    return effects


def _mode_of(label: str | None) -> str:
    if label is None:
        return LOCK_MODES[0]
    return label.title().replace(" ", "") + "Lock"


@dataclass
class Observer:
    """The runner's `execute` for a rehearsal: runs each statement as the runner would and
    records what it did. `info` is the scratch database, for the sampling session."""

    info: ConnInfo
    observed: list[StatementObservation] = field(default_factory=list)
    overhead: float = 0.0  # seconds spent observing, not in the statements

    def __call__(self, conn: psycopg.Connection, index: int, statement: Statement) -> object:
        in_transaction = conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE
        self.observed = [o for o in self.observed if o.index != index]  # a retried statement
        mark = time.perf_counter()
        before = snapshot(conn, in_transaction)
        if in_transaction:
            seen = self._started(index, statement, mark)
            cursor = self._run(conn, statement, seen)
            mark = time.perf_counter()
            after = snapshot(conn, True)
            locks, held = after.locks, None
        else:
            with LockSampler(self.info, conn.info.backend_pid) as sampler:
                seen = self._started(index, statement, mark)
                cursor = self._run(conn, statement, seen)
                mark = time.perf_counter()
            after = snapshot(conn, False)
            locks, seen.sampled, seen.samples = sampler.seen | before.locks, True, sampler.samples
            held = lambda oid, mode: sampler.held((oid, mode))  # noqa: E731
        seen.rows = cursor.rowcount if cursor.rowcount >= 0 else None
        seen.effects = effects_between(before, after, locks, held)
        seen.finished = True
        self.overhead += time.perf_counter() - mark
        return cursor

    def _started(self, index: int, statement: Statement, mark: float) -> StatementObservation:
        """The observation of a statement about to run; the time since `mark` was observing."""
        now = time.perf_counter()
        self.overhead += now - mark
        seen = StatementObservation(index, statement, now, overhead_mark=self.overhead)
        self.observed.append(seen)
        return seen

    @staticmethod
    def _run(
        conn: psycopg.Connection, statement: Statement, seen: StatementObservation
    ) -> psycopg.Cursor:
        try:
            return conn.execute(statement.sql.encode())
        finally:
            seen.seconds = time.perf_counter() - seen.started

    def ended(self, at: float) -> None:
        """The migration's transaction ended (COMMIT or ROLLBACK) at `at`: every lock a statement
        took inside it was held from the statement's start until then."""
        for seen in self.observed:
            if not seen.sampled:
                for effect in seen.effects:
                    if effect.lock:  # less the time spent observing the later statements
                        observing = self.overhead - seen.overhead_mark
                        effect.held_seconds = round(at - seen.started - observing, 3)

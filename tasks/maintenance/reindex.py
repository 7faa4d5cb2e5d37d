"""REINDEX INDEX CONCURRENTLY the invalid and bloated indexes, and drop the _ccnew/_ccold copies
interrupted rebuilds leave behind; writes go on meanwhile."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import psycopg
from psycopg import sql

from tasks.core.errors import ConfigError, NotFoundError, first_line
from tasks.core.postgres import ConnInfo
from tasks.core.statistics import MB, index_bloat, invalid_indexes
from tasks.maintenance.outcome import (
    ItemRunner,
    ItemStatus,
    Outcome,
    maintenance_session,
    qualified,
    regclass,
    sql_name_forms,
)


class IndexAction(StrEnum):
    REINDEX = "reindex"
    DROP = "drop"
    SKIP = "skip"


STATEMENTS = {
    IndexAction.REINDEX: "REINDEX INDEX CONCURRENTLY",
    IndexAction.DROP: "DROP INDEX CONCURRENTLY",
    IndexAction.SKIP: "none",
}


@dataclass
class IndexCandidate:
    schema: str
    table: str
    index: str
    action: IndexAction
    reason: str
    bytes: int
    bloat_pct: float | None = None

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.index}"


def _exclusion_indexes(conn: psycopg.Connection) -> set[tuple[str, str]]:
    rows = conn.execute(
        """
        SELECT n.nspname, c.relname FROM pg_constraint k
        JOIN pg_class c ON c.oid = k.conindid JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE k.contype = 'x'
        """
    ).fetchall()
    return {(r[0], r[1]) for r in rows}


def _index_info(conn: psycopg.Connection, name: str) -> tuple[str, str, str, int]:
    """(schema, table, index, bytes) of an index given as schema.index or a SQL name."""
    for text in sql_name_forms(conn, name):
        row = conn.execute(
            """
            SELECT n.nspname, t.relname, c.relname, pg_relation_size(c.oid)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_index i ON i.indexrelid = c.oid JOIN pg_class t ON t.oid = i.indrelid
            WHERE c.oid = %s
            """,
            [regclass(conn, text)],
        ).fetchone()
        if row:
            return row[0], row[1], row[2], int(row[3])
    raise NotFoundError(f"index {name!r} not found; give it as schema.index")


def _found_candidates(
    conn: psycopg.Connection,
    bloat_threshold_pct: float,
    min_bytes: int,
    include_invalid: bool,
    cleanup_leftovers: bool,
) -> list[IndexCandidate]:
    """Leftover copies first, then invalid indexes, then the bloated ones."""
    plan: list[IndexCandidate] = []
    for i in invalid_indexes(conn):
        leftover = i["leftover_of"]
        if leftover and cleanup_leftovers:
            reason = f"leftover copy of {leftover} from an interrupted REINDEX CONCURRENTLY"
            action = IndexAction.DROP
        elif not leftover and include_invalid:
            reason, action = "invalid index", IndexAction.REINDEX
        else:
            continue
        plan.append(IndexCandidate(i["schema"], i["table"], i["index"], action, reason, i["bytes"]))
    plan.sort(key=lambda c: c.action != IndexAction.DROP)  # stable: leftovers go first
    seen = {(c.schema, c.index) for c in plan}
    plan += [
        IndexCandidate(
            b["schema"],
            b["table"],
            b["index"],
            IndexAction.REINDEX,
            f"estimated bloat {b['bloat_pct']}%",
            b["bytes"],
            b["bloat_pct"],
        )
        for b in index_bloat(conn, min_bytes)
        if b["bloat_pct"] >= bloat_threshold_pct and (b["schema"], b["index"]) not in seen
    ]
    return plan


def reindex_candidates(
    conn: psycopg.Connection,
    bloat_threshold_pct: float = 30.0,
    min_bytes: int = 10 * MB,
    include_invalid: bool = True,
    cleanup_leftovers: bool = True,
    indexes: list[str] | None = None,
) -> list[IndexCandidate]:
    """Leftover _ccnew/_ccold copies to drop, then invalid and bloated indexes to rebuild."""
    if indexes:
        plan = []
        for name in indexes:
            schema, table, index, size = _index_info(conn, name)
            plan.append(
                IndexCandidate(schema, table, index, IndexAction.REINDEX, "requested", size)
            )
    else:
        plan = _found_candidates(
            conn, bloat_threshold_pct, min_bytes, include_invalid, cleanup_leftovers
        )
    exclusion = _exclusion_indexes(conn)
    for c in plan:
        if c.action == IndexAction.REINDEX and (c.schema, c.index) in exclusion:
            c.action = IndexAction.SKIP
            c.reason += (
                "; exclusion-constraint indexes cannot be rebuilt CONCURRENTLY: run "
                "REINDEX INDEX in a maintenance window"
            )
    return plan


def _index_size(conn: psycopg.Connection, schema: str, index: str) -> int | None:
    oid = regclass(conn, qualified(schema, index).as_string(conn))
    if oid is None:
        return None
    return int(conn.execute("SELECT pg_relation_size(%s)", [oid]).fetchone()[0])  # type: ignore[index]


def _clean_leftovers(conn: psycopg.Connection, schema: str, index: str) -> str:
    """Drop the _ccnew copy a failed REINDEX CONCURRENTLY left; say what happened."""
    notes = []
    for i in invalid_indexes(conn):
        if i["schema"] != schema or i["leftover_of"] != index:
            continue
        leftover = i["index"]
        try:
            conn.execute(
                sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(qualified(schema, leftover))
            )
            notes.append(f"dropped leftover {leftover}")
        except psycopg.Error as exc:
            notes.append(f"leftover {leftover} remains ({first_line(exc)}); the next run drops it")
    return "; ".join(notes)


def index_plan_rows(plan: list[IndexCandidate]) -> list[Outcome]:
    return [
        Outcome(
            target=c.name,
            action=STATEMENTS[c.action],
            reason=c.reason,
            state=ItemStatus.SKIPPED if c.action == IndexAction.SKIP else ItemStatus.PLANNED,
            before={"size_mb": round(c.bytes / MB, 3)},
        )
        for c in plan
    ]


def run_reindex(
    info: ConnInfo,
    plan: list[IndexCandidate],
    lock_timeout_seconds: float = 5.0,
    time_budget_seconds: float | None = None,
) -> list[Outcome]:
    """Rebuild or drop each planned index, never holding a lock that blocks writes for long.

    A REINDEX CONCURRENTLY that fails leaves an invalid _ccnew copy behind: it
    is dropped right away.
    """
    outcomes = index_plan_rows(plan)
    with maintenance_session(info, "dbops-reindex", lock_timeout_seconds) as conn:
        if conn.info.server_version < 120000:
            raise ConfigError("REINDEX CONCURRENTLY needs PostgreSQL 12 or newer")
        runner = ItemRunner(conn, lock_timeout_seconds, time_budget_seconds)
        for candidate, outcome in zip(plan, outcomes, strict=True):
            if not runner.due(outcome):
                continue
            target = qualified(candidate.schema, candidate.index)
            statement = sql.SQL(
                "DROP INDEX CONCURRENTLY IF EXISTS {}"
                if candidate.action == IndexAction.DROP
                else "REINDEX INDEX CONCURRENTLY {}"
            ).format(target)
            runner.execute(statement, outcome)
            if outcome.failed and candidate.action == IndexAction.REINDEX:
                outcome.note = _clean_leftovers(conn, candidate.schema, candidate.index)
            size = _index_size(conn, candidate.schema, candidate.index)
            outcome.after = {"size_mb": round(size / MB, 3) if size is not None else None}
    return outcomes

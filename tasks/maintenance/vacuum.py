"""VACUUM, ANALYZE and REINDEX where they pay off, one table or index at a time.

Targeted by default: the tables whose dead tuples or changes since the last
ANALYZE cross a threshold, biggest payoff first, within an optional time
budget; every table when asked (the guide's `vacuumdb -z`). VACUUM FULL and
REINDEX run only on what was chosen, under a lock_timeout, so they never queue
behind (and in front of) the application's locks for long.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import psycopg
from psycopg import sql
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from tasks.core.errors import DbopsError, first_line
from tasks.core.postgres import ConnInfo
from tasks.health.checks import index_bloat, invalid_indexes

Mode = Literal["vacuum", "analyze"]
MB = 1024 * 1024


class VacuumThresholds(BaseModel):
    """When a table needs VACUUM or ANALYZE (autovacuum's own rule, made explicit)."""

    dead_ratio: float = Field(0.1, ge=0, le=1, description="dead / (live + dead) tuples")
    min_dead_tuples: int = Field(1000, ge=0, description="ignore fewer dead tuples")
    analyze_ratio: float = Field(0.1, ge=0, description="changes since ANALYZE / live tuples")
    min_modifications: int = Field(1000, ge=0, description="ignore fewer changes")


@dataclass
class TableCandidate:
    oid: int
    schema: str
    table: str
    live_tuples: int
    dead_tuples: int
    modifications: int
    bytes: int
    last_vacuum: str | None
    last_analyze: str | None
    reason: str
    needs_vacuum: bool
    payoff: float = 0.0

    @property
    def dead_ratio(self) -> float:
        return self.dead_tuples / max(self.live_tuples + self.dead_tuples, 1)

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


TABLE_STATS = """
    SELECT s.relid AS oid, s.schemaname AS schema, s.relname AS "table",
           s.n_live_tup AS live, s.n_dead_tup AS dead, s.n_mod_since_analyze AS mods,
           pg_total_relation_size(s.relid) AS bytes,
           greatest(s.last_vacuum, s.last_autovacuum)::text AS last_vacuum,
           greatest(s.last_analyze, s.last_autoanalyze)::text AS last_analyze
    FROM pg_stat_user_tables s
    JOIN pg_class c ON c.oid = s.relid
    WHERE c.relkind IN ('r', 'm')
"""


def _candidate(row: dict[str, Any], t: VacuumThresholds, mode: Mode) -> TableCandidate | None:
    live, dead, mods = int(row["live"]), int(row["dead"]), int(row["mods"])
    reasons = []
    needs_vacuum = False
    if mode == "vacuum" and dead >= max(t.min_dead_tuples, 1):
        ratio = dead / max(live + dead, 1)
        if ratio >= t.dead_ratio:
            reasons.append(f"dead tuples {100 * ratio:.0f}%")
            needs_vacuum = True
    if row["last_analyze"] is None and live + mods > 0:
        reasons.append("never analyzed")
    elif mods >= max(t.min_modifications, 1) and mods / max(live, 1) >= t.analyze_ratio:
        reasons.append(f"{mods} changes since last analyze")
    if not reasons:
        return None
    return _make(row, "; ".join(reasons), needs_vacuum)


def _make(row: dict[str, Any], reason: str, needs_vacuum: bool) -> TableCandidate:
    live, dead, mods = int(row["live"]), int(row["dead"]), int(row["mods"])
    # Payoff: bytes a VACUUM can reclaim; for ANALYZE-only tables, the share of changed rows.
    dead_bytes = int(row["bytes"]) * dead / max(live + dead, 1)
    payoff = dead_bytes if needs_vacuum else mods / max(live, 1)
    return TableCandidate(
        oid=int(row["oid"]),
        schema=row["schema"],
        table=row["table"],
        live_tuples=live,
        dead_tuples=dead,
        modifications=mods,
        bytes=int(row["bytes"]),
        last_vacuum=row["last_vacuum"],
        last_analyze=row["last_analyze"],
        reason=reason,
        needs_vacuum=needs_vacuum,
        payoff=payoff,
    )


def _order(candidates: list[TableCandidate]) -> list[TableCandidate]:
    """Tables to vacuum by reclaimable bytes, then tables to analyze by share of changes."""
    return sorted(candidates, key=lambda c: (not c.needs_vacuum, -c.payoff, c.schema, c.table))


def _regclass(conn: psycopg.Connection, text: str) -> int | None:
    try:
        row = conn.execute("SELECT to_regclass(%s)::oid", [text]).fetchone()
    except psycopg.errors.InvalidNameSyntax:
        return None
    return int(row[0]) if row and row[0] is not None else None


def sql_name_forms(conn: psycopg.Connection, name: str) -> list[str]:
    """A name as the user wrote it: SQL syntax, schema.name with raw parts, or one raw name."""
    forms = [name]
    if "." in name:
        schema, _, rel = name.partition(".")
        forms.append(
            sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(rel)).as_string(conn)
        )
    forms.append(sql.Identifier(name).as_string(conn))
    return forms


def resolve_tables(conn: psycopg.Connection, names: list[str]) -> list[int]:
    """Table names as given -> oids; a clear error for the first one not found."""
    oids = []
    for name in names:
        oid = next((o for form in sql_name_forms(conn, name) if (o := _regclass(conn, form))), None)
        if oid is None:
            raise DbopsError(f"table {name!r} not found; give it as schema.table")
        oids.append(oid)
    return oids


def vacuum_candidates(
    conn: psycopg.Connection,
    thresholds: VacuumThresholds,
    mode: Mode = "vacuum",
    all_tables: bool = False,
    tables: list[str] | None = None,
) -> list[TableCandidate]:
    """The tables to process, biggest payoff first."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    with conn.cursor(row_factory=dict_row) as cur:
        rows = list(cur.execute(TABLE_STATS + " ORDER BY 2, 3").fetchall())  # type: ignore[arg-type]
    if tables:
        wanted = resolve_tables(conn, tables)
        by_oid = {int(r["oid"]): r for r in rows}
        missing = [n for n, oid in zip(tables, wanted, strict=True) if oid not in by_oid]
        if missing:
            raise DbopsError(f"{missing} are not user tables; give ordinary tables (schema.table)")
        picked = [_make(by_oid[oid], "requested", mode == "vacuum") for oid in wanted]
        return list({c.oid: c for c in picked}.values())
    if all_tables:
        return _order([_make(r, "all tables", mode == "vacuum") for r in rows])
    found = [c for r in rows if (c := _candidate(r, thresholds, mode)) is not None]
    return _order(found)


@dataclass
class Outcome:
    """One row of the run's table artifact."""

    target: str
    action: str
    reason: str
    status: str = "planned"
    seconds: float = 0.0
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def row(self) -> dict[str, Any]:
        data = asdict(self)
        before, after = data.pop("before"), data.pop("after")
        data.update({f"{k}_before": v for k, v in before.items()})
        data.update({f"{k}_after": v for k, v in after.items()})
        return data

    @property
    def failed(self) -> bool:
        return self.status.startswith("failed") or self.status.startswith("locked")


def _table_state(conn: psycopg.Connection, oid: int) -> dict[str, Any]:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT coalesce(n_dead_tup, 0), pg_total_relation_size(%s) "
        "FROM pg_stat_user_tables WHERE relid = %s",
        [oid, oid],
    ).fetchone()
    if row is None:
        return {}
    return {"dead_tuples": int(row[0]), "size_mb": round(int(row[1]) / MB, 3)}


class _Warnings:
    """Collects the server's WARNINGs of one statement (VACUUM skips tables it may not touch)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.messages: list[str] = []
        self.conn = conn

    def __call__(self, diag: psycopg.errors.Diagnostic) -> None:
        if diag.severity_nonlocalized == "WARNING" and diag.message_primary:
            self.messages.append(diag.message_primary)

    def __enter__(self) -> _Warnings:
        self.conn.add_notice_handler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.remove_notice_handler(self)


def _deadline(budget_seconds: float | None) -> float | None:
    return time.monotonic() + budget_seconds if budget_seconds else None


def _over(deadline: float | None) -> bool:
    return deadline is not None and time.monotonic() >= deadline


def maintenance_statement(
    candidate: TableCandidate, mode: Mode, full: bool
) -> tuple[str, sql.Composable]:
    target = sql.SQL("{}.{}").format(
        sql.Identifier(candidate.schema), sql.Identifier(candidate.table)
    )
    if mode == "vacuum" and full:
        return "VACUUM (FULL, ANALYZE)", sql.SQL("VACUUM (FULL, ANALYZE) {}").format(target)
    if mode == "vacuum" and candidate.needs_vacuum:
        return "VACUUM (ANALYZE)", sql.SQL("VACUUM (ANALYZE) {}").format(target)
    return "ANALYZE", sql.SQL("ANALYZE {}").format(target)


def plan_rows(plan: list[TableCandidate], mode: Mode, full: bool) -> list[Outcome]:
    return [
        Outcome(
            target=c.name,
            action=maintenance_statement(c, mode, full)[0],
            reason=c.reason,
            before={"dead_tuples": c.dead_tuples, "size_mb": round(c.bytes / MB, 3)},
        )
        for c in plan
    ]


def run_table_maintenance(
    info: ConnInfo,
    plan: list[TableCandidate],
    mode: Mode,
    full: bool = False,
    lock_timeout_seconds: float = 5.0,
    time_budget_seconds: float | None = None,
) -> list[Outcome]:
    """VACUUM/ANALYZE each planned table in order; stop starting new ones past the budget.

    A table whose lock is not granted within lock_timeout is skipped, not
    waited for: a waiting VACUUM FULL would queue every other query behind it.
    """
    outcomes = plan_rows(plan, mode, full)
    deadline = _deadline(time_budget_seconds)
    started_any = False  # the first item always runs, however small the budget
    with info.connect() as conn:
        conn.execute("SET application_name = 'dbops-maintenance'")
        conn.execute(
            sql.SQL("SET lock_timeout = {}").format(
                sql.Literal(f"{int(lock_timeout_seconds * 1000)}ms")
            )
        )
        for candidate, outcome in zip(plan, outcomes, strict=True):
            if started_any and _over(deadline):
                outcome.status = "skipped: time budget spent"
                continue
            started_any = True
            outcome.before = _table_state(conn, candidate.oid) or outcome.before
            statement = maintenance_statement(candidate, mode, full)[1]
            started = time.monotonic()
            try:
                with _Warnings(conn) as warnings:
                    conn.execute(statement)
            except psycopg.errors.LockNotAvailable:
                outcome.status = f"locked: lock not granted within {lock_timeout_seconds:g} s"
                outcome.note = "another session holds a conflicting lock; run again later"
            except psycopg.Error as exc:
                outcome.status = f"failed: {first_line(exc)}"
            else:
                skipped = [m for m in warnings.messages if "skipping" in m]
                outcome.status = "skipped: " + skipped[0] if skipped else "done"
            outcome.seconds = round(time.monotonic() - started, 3)
            outcome.after = _table_state(conn, candidate.oid)
    return outcomes


# ---------------------------------------------------------------------------
# Reindex
# ---------------------------------------------------------------------------


@dataclass
class IndexCandidate:
    schema: str
    table: str
    index: str
    action: Literal["reindex", "drop", "skip"]
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
        oid = _regclass(conn, text)
        row = conn.execute(
            """
            SELECT n.nspname, t.relname, c.relname, pg_relation_size(c.oid)
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_index i ON i.indexrelid = c.oid JOIN pg_class t ON t.oid = i.indrelid
            WHERE c.oid = %s
            """,
            [oid],
        ).fetchone()
        if row:
            return row[0], row[1], row[2], int(row[3])
    raise DbopsError(f"index {name!r} not found; give it as schema.index")


def reindex_candidates(
    conn: psycopg.Connection,
    bloat_threshold_pct: float = 30.0,
    min_bytes: int = 10 * MB,
    include_invalid: bool = True,
    cleanup_leftovers: bool = True,
    indexes: list[str] | None = None,
) -> list[IndexCandidate]:
    """Leftover _ccnew/_ccold copies to drop, then invalid and bloated indexes to rebuild."""
    exclusion = _exclusion_indexes(conn)
    plan: list[IndexCandidate] = []
    if indexes:
        for name in indexes:
            schema, table, index, size = _index_info(conn, name)
            plan.append(IndexCandidate(schema, table, index, "reindex", "requested", size))
    else:
        invalid = invalid_indexes(conn)
        if cleanup_leftovers:
            plan += [
                IndexCandidate(
                    i["schema"],
                    i["table"],
                    i["index"],
                    "drop",
                    f"leftover copy of {i['leftover_of']} from an interrupted REINDEX CONCURRENTLY",
                    i["bytes"],
                )
                for i in invalid
                if i["leftover_of"]
            ]
        if include_invalid:
            plan += [
                IndexCandidate(
                    i["schema"], i["table"], i["index"], "reindex", "invalid index", i["bytes"]
                )
                for i in invalid
                if not i["leftover_of"]
            ]
        seen = {(c.schema, c.index) for c in plan}
        for b in index_bloat(conn, min_bytes):
            if b["bloat_pct"] >= bloat_threshold_pct and (b["schema"], b["index"]) not in seen:
                plan.append(
                    IndexCandidate(
                        b["schema"],
                        b["table"],
                        b["index"],
                        "reindex",
                        f"estimated bloat {b['bloat_pct']}%",
                        b["bytes"],
                        b["bloat_pct"],
                    )
                )
    for c in plan:
        if c.action == "reindex" and (c.schema, c.index) in exclusion:
            c.action = "skip"
            c.reason += (
                "; exclusion-constraint indexes cannot be rebuilt CONCURRENTLY: run "
                "REINDEX INDEX in a maintenance window"
            )
    return plan


def _index_size(conn: psycopg.Connection, schema: str, index: str) -> int | None:
    name = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(index))
    oid = _regclass(conn, name.as_string(conn))
    if oid is None:
        return None
    return int(conn.execute("SELECT pg_relation_size(%s)", [oid]).fetchone()[0])  # type: ignore[index]


def _leftovers_of(conn: psycopg.Connection, schema: str, index: str) -> list[str]:
    return [
        i["index"]
        for i in invalid_indexes(conn)
        if i["schema"] == schema and i["leftover_of"] == index
    ]


def _clean_leftovers(conn: psycopg.Connection, schema: str, index: str) -> str:
    """Drop the _ccnew copy a failed REINDEX CONCURRENTLY left; say what happened."""
    notes = []
    for leftover in _leftovers_of(conn, schema, index):
        try:
            conn.execute(
                sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(leftover)
                )
            )
            notes.append(f"dropped leftover {leftover}")
        except psycopg.Error as exc:
            notes.append(f"leftover {leftover} remains ({first_line(exc)}); the next run drops it")
    return "; ".join(notes)


def index_plan_rows(plan: list[IndexCandidate]) -> list[Outcome]:
    actions = {
        "reindex": "REINDEX INDEX CONCURRENTLY",
        "drop": "DROP INDEX CONCURRENTLY",
        "skip": "none",
    }
    return [
        Outcome(
            target=c.name,
            action=actions[c.action],
            reason=c.reason,
            status="skipped" if c.action == "skip" else "planned",
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
    deadline = _deadline(time_budget_seconds)
    started_any = False  # the first item always runs, however small the budget
    with info.connect() as conn:
        if conn.info.server_version < 120000:
            raise DbopsError("REINDEX CONCURRENTLY needs PostgreSQL 12 or newer")
        conn.execute("SET application_name = 'dbops-reindex'")
        conn.execute(
            sql.SQL("SET lock_timeout = {}").format(
                sql.Literal(f"{int(lock_timeout_seconds * 1000)}ms")
            )
        )
        for candidate, outcome in zip(plan, outcomes, strict=True):
            if candidate.action == "skip":
                continue
            if started_any and _over(deadline):
                outcome.status = "skipped: time budget spent"
                continue
            started_any = True
            target = sql.SQL("{}.{}").format(
                sql.Identifier(candidate.schema), sql.Identifier(candidate.index)
            )
            started = time.monotonic()
            try:
                if candidate.action == "drop":
                    conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(target))
                else:
                    conn.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(target))
                outcome.status = "done"
            except psycopg.Error as exc:
                locked = isinstance(exc, psycopg.errors.LockNotAvailable)
                outcome.status = (
                    f"locked: lock not granted within {lock_timeout_seconds:g} s"
                    if locked
                    else f"failed: {first_line(exc)}"
                )
                if candidate.action == "reindex":
                    outcome.note = _clean_leftovers(conn, candidate.schema, candidate.index)
            outcome.seconds = round(time.monotonic() - started, 3)
            size = _index_size(conn, candidate.schema, candidate.index)
            outcome.after = {"size_mb": round(size / MB, 3) if size is not None else None}
    return outcomes

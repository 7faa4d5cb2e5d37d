"""Health checks of a PostgreSQL database, at PgHero's level or better.

Each check returns a CheckResult with a status (ok / warning / critical), the
findings that explain it (each naming the schema/table/index/pid/query it is
about) and informational details for the report. Every threshold lives in
HealthThresholds, so a deployment parameter can change it. Checks only read:
the connection runs with default_transaction_read_only.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import psycopg
from psycopg.rows import dict_row
from pydantic import BaseModel, Field

from tasks.core.errors import DbopsError, first_line
from tasks.core.postgres import ConnInfo

Status = Literal["ok", "warning", "critical"]
STATUS_ORDER = {"ok": 0, "warning": 1, "critical": 2}
MB = 1024 * 1024
QUERY_CHARS = 500
PGBOUNCER_PORT = "6432"
# No % in it: it is formatted into queries that also take parameters.
USER_SCHEMAS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'"
)


class HealthThresholds(BaseModel):
    """Every threshold of the health report; change them per deployment."""

    connections_warning_pct: float = Field(70, description="connections in use, % of usable")
    connections_critical_pct: float = Field(90, description="connections in use, % of usable")
    idle_in_transaction_warning_seconds: float = Field(60, description="idle in transaction")
    idle_in_transaction_critical_seconds: float = Field(900, description="idle in transaction")
    long_query_warning_seconds: float = Field(60, description="a running statement's age")
    long_query_critical_seconds: float = Field(600, description="a running statement's age")
    blocked_warning_seconds: float = Field(10, description="a session waiting on a lock")
    blocked_critical_seconds: float = Field(120, description="a session waiting on a lock")
    unused_index_min_stats_days: float = Field(
        7, description="judge unused indexes only when statistics are at least this old"
    )
    unused_index_min_mb: float = Field(1, description="ignore unused indexes smaller than this")
    slow_query_warning_ms: float = Field(1000, description="mean execution time (the guide's)")
    slow_query_critical_ms: float = Field(10000, description="mean execution time")
    slow_query_min_calls: int = Field(1, description="ignore statements called fewer times")
    seq_scan_min_rows: int = Field(10000, description="tables smaller than this are fine")
    seq_scan_min_scans: int = Field(50, description="fewer sequential scans are fine")
    seq_scan_index_usage_pct: float = Field(
        95, description="warn when fewer scans than this % use an index"
    )
    xid_age_warning: int = Field(500_000_000, description="age(datfrozenxid / relfrozenxid)")
    xid_age_critical: int = Field(1_500_000_000, description="wraparound stops writes at ~2.1e9")
    sequence_warning_pct: float = Field(75, description="sequence value, % of its column's max")
    sequence_critical_pct: float = Field(90, description="sequence value, % of its column's max")
    cache_hit_warning_pct: float = Field(99, description="buffer cache hit ratio below this")
    cache_hit_critical_pct: float = Field(90, description="buffer cache hit ratio below this")
    cache_min_blocks: int = Field(10000, description="judge the ratio after this many reads")
    table_bloat_warning_pct: float = Field(50, description="estimated wasted share of a table")
    table_bloat_critical_pct: float = Field(90, description="estimated wasted share of a table")
    table_bloat_min_mb: float = Field(10, description="ignore less estimated waste than this")
    index_bloat_warning_pct: float = Field(50, description="estimated wasted share of an index")
    index_bloat_min_mb: float = Field(10, description="ignore less estimated waste than this")
    dead_tuple_ratio: float = Field(0.2, description="dead / (live + dead) tuples to vacuum")
    dead_tuple_min: int = Field(1000, description="ignore fewer dead tuples than this")
    replication_slot_wal_warning_mb: float = Field(1024, description="WAL kept by a slot")
    pool_warning_pct: float = Field(80, description="connection_limit x instances, % of usable")


@dataclass
class CheckResult:
    name: str
    title: str
    status: Status = "ok"
    summary: str = ""
    findings: list[dict[str, Any]] = field(default_factory=list)
    details: list[dict[str, Any]] = field(default_factory=list)
    advice: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "status": self.status,
            "summary": self.summary,
            "advice": self.advice,
            "findings": self.findings,
            "details": self.details,
        }


@dataclass
class PoolSettings:
    """What the app's DATABASE_URL says about its own pool (Prisma-style query parameters)."""

    connection_limit: int | None = None
    app_instances: int = 1
    pgbouncer: bool = False

    @classmethod
    def from_conninfo(
        cls, info: ConnInfo, connection_limit: int | None, app_instances: int
    ) -> PoolSettings:
        limit = connection_limit
        raw = info.app_params.get("connection_limit")
        if limit is None and raw:
            try:
                limit = int(raw)
            except ValueError:
                raise DbopsError(
                    f"connection_limit={raw!r} in DATABASE_URL is not a number; "
                    "write connection_limit=10"
                ) from None
        pgbouncer = (
            info.app_params.get("pgbouncer", "").lower() == "true"
            or info.params.get("port") == PGBOUNCER_PORT
        )
        return cls(connection_limit=limit, app_instances=app_instances, pgbouncer=pgbouncer)


@dataclass
class Context:
    conn: psycopg.Connection
    thresholds: HealthThresholds
    pool: PoolSettings
    top_n: int = 10

    def rows(self, query: str, params: object = None) -> list[dict[str, Any]]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            cur.execute(query, params)  # type: ignore[arg-type]
            return list(cur.fetchall())

    def value(self, query: str, params: object = None) -> Any:
        row = self.conn.execute(query, params).fetchone()  # type: ignore[arg-type]
        return row[0] if row else None

    def setting(self, name: str) -> str | None:
        return self.value("SELECT current_setting(%s, true)", [name])


_PASSWORD_LITERAL = re.compile(
    r"(password\s*(?:=\s*)?)(E?'(?:[^']|'')*'|\$[^$]*\$.*?\$[^$]*\$|[^\s'\"]+)", re.I | re.S
)


def redact_sql(text: str | None, limit: int = QUERY_CHARS) -> str:
    """Statement text for reports: passwords replaced, length capped."""
    if not text:
        return ""
    clean = _PASSWORD_LITERAL.sub(lambda m: m.group(1) + "'***'", text)
    clean = " ".join(clean.split())
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def worst(statuses: list[Status]) -> Status:
    return max(statuses, key=lambda s: STATUS_ORDER[s], default="ok")


def level(value: float, warning: float, critical: float, higher_is_worse: bool = True) -> Status:
    if higher_is_worse:
        return "critical" if value >= critical else "warning" if value >= warning else "ok"
    return "critical" if value <= critical else "warning" if value <= warning else "ok"


def _secs(value: Any) -> float:
    return round(float(value or 0), 1)


# ---------------------------------------------------------------------------
# Connections and sessions
# ---------------------------------------------------------------------------


def usable_connections(ctx: Context) -> tuple[int, int]:
    """(max_connections, connections a non-superuser can open before 'too many connections')."""
    max_conn = int(ctx.setting("max_connections") or 100)
    reserved = int(ctx.setting("superuser_reserved_connections") or 0)
    reserved += int(ctx.setting("reserved_connections") or 0)
    return max_conn, max(max_conn - reserved, 1)


def check_connections(ctx: Context) -> CheckResult:
    t = ctx.thresholds
    result = CheckResult("connections", "Connections by state against max_connections")
    by_state = ctx.rows(
        """
        SELECT coalesce(state, 'unknown') AS state, count(*) AS connections
        FROM pg_stat_activity WHERE backend_type = 'client backend'
        GROUP BY 1 ORDER BY 2 DESC
        """
    )
    max_conn, usable = usable_connections(ctx)
    used = sum(int(r["connections"]) for r in by_state)
    pct = round(100.0 * used / usable, 1)
    result.details = [*by_state, {"state": "total", "connections": used}]
    result.details.append({"state": f"usable of max_connections={max_conn}", "connections": usable})
    result.status = level(pct, t.connections_warning_pct, t.connections_critical_pct)
    result.summary = f"{used} of {usable} usable connections in use ({pct}%)"
    if result.status != "ok":
        result.findings = ctx.rows(
            """
            SELECT datname AS database, usename AS user, application_name AS application,
                   coalesce(state, 'unknown') AS state, count(*) AS connections
            FROM pg_stat_activity WHERE backend_type = 'client backend'
            GROUP BY 1, 2, 3, 4 ORDER BY 5 DESC LIMIT %s
            """,
            [ctx.top_n],
        )
        result.advice = (
            "Too many connections: put PgBouncer (transaction pooling) in front, lower "
            "connection_limit in DATABASE_URL, or raise max_connections "
            "(ALTER SYSTEM SET max_connections = 200; needs a restart)."
        )
    return result


def check_idle_in_transaction(ctx: Context) -> CheckResult:
    t = ctx.thresholds
    result = CheckResult("idle-in-transaction", "Sessions idle in a transaction")
    rows = ctx.rows(
        """
        SELECT pid, usename AS user, application_name AS application, state,
               extract(epoch FROM clock_timestamp() - state_change) AS idle_seconds,
               extract(epoch FROM clock_timestamp() - xact_start) AS transaction_seconds,
               query
        FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid()
          AND state LIKE 'idle in transaction%%'
          AND clock_timestamp() - state_change >= make_interval(secs => %s)
        ORDER BY state_change
        """,
        [t.idle_in_transaction_warning_seconds],
    )
    for row in rows:
        row["idle_seconds"] = _secs(row["idle_seconds"])
        row["transaction_seconds"] = _secs(row["transaction_seconds"])
        row["query"] = redact_sql(row["query"])
        row["status"] = level(
            row["idle_seconds"],
            t.idle_in_transaction_warning_seconds,
            t.idle_in_transaction_critical_seconds,
        )
    result.findings = rows
    result.status = worst([r["status"] for r in rows])
    result.summary = (
        f"{len(rows)} session(s) idle in transaction for more than "
        f"{t.idle_in_transaction_warning_seconds:g} s"
        if rows
        else "no session idle in a transaction"
    )
    if rows:
        result.advice = (
            "An open transaction holds locks and stops VACUUM from removing dead rows: fix the "
            "app (commit/rollback) or set idle_in_transaction_session_timeout."
        )
    return result


def check_long_queries(ctx: Context) -> CheckResult:
    t = ctx.thresholds
    result = CheckResult("long-running-queries", "Long-running queries")
    rows = ctx.rows(
        """
        SELECT pid, usename AS user, application_name AS application, state,
               wait_event_type, wait_event,
               extract(epoch FROM clock_timestamp() - query_start) AS seconds, query
        FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid()
          AND backend_type = 'client backend' AND state NOT LIKE 'idle%%'
          AND clock_timestamp() - query_start >= make_interval(secs => %s)
        ORDER BY query_start
        """,
        [t.long_query_warning_seconds],
    )
    for row in rows:
        row["seconds"] = _secs(row["seconds"])
        row["query"] = redact_sql(row["query"])
        row["status"] = level(
            row["seconds"], t.long_query_warning_seconds, t.long_query_critical_seconds
        )
    result.findings = rows
    result.status = worst([r["status"] for r in rows])
    result.summary = (
        f"{len(rows)} statement(s) running for more than {t.long_query_warning_seconds:g} s"
        if rows
        else "no long-running statement"
    )
    if rows:
        result.advice = (
            "EXPLAIN (ANALYZE, BUFFERS) the statement; cancel it with "
            "SELECT pg_cancel_backend(pid) if it must stop; set statement_timeout for the app."
        )
    return result


def blocking_pairs(conn: psycopg.Connection, major: int) -> list[dict[str, Any]]:
    """Every (blocked, blocking) session pair in this database, from pg_blocking_pids."""
    wait_start = (
        "(SELECT min(l.waitstart) FROM pg_locks l WHERE l.pid = blocked.pid AND NOT l.granted)"
        if major >= 14
        else "NULL::timestamptz"
    )
    query = f"""
        SELECT blocked.pid AS blocked_pid, blocked.usename AS blocked_user,
               blocked.query AS blocked_query,
               extract(epoch FROM clock_timestamp()
                       - coalesce({wait_start}, blocked.query_start)) AS waiting_seconds,
               blocking.pid AS blocking_pid, blocking.usename AS blocking_user,
               blocking.application_name AS blocking_application,
               blocking.state AS blocking_state, blocking.query AS blocking_query,
               blocking.backend_type AS blocking_backend_type,
               blocking.backend_start AS blocking_backend_start,
               extract(epoch FROM clock_timestamp() - blocking.xact_start)
                   AS blocking_transaction_seconds
        FROM pg_stat_activity blocked
        CROSS JOIN LATERAL unnest(pg_blocking_pids(blocked.pid)) AS b(pid)
        JOIN pg_stat_activity blocking ON blocking.pid = b.pid
        WHERE blocked.datname = current_database() AND blocked.wait_event_type = 'Lock'
          AND blocked.pid <> pg_backend_pid()
        ORDER BY waiting_seconds DESC
    """
    with conn.cursor(row_factory=dict_row) as cur:
        rows = list(cur.execute(query).fetchall())  # type: ignore[arg-type]
    blocked_pids = {r["blocked_pid"] for r in rows}
    for row in rows:
        row["waiting_seconds"] = _secs(row["waiting_seconds"])
        row["blocking_transaction_seconds"] = _secs(row["blocking_transaction_seconds"])
        row["blocked_query"] = redact_sql(row["blocked_query"])
        row["blocking_query"] = redact_sql(row["blocking_query"])
        # The head of a chain blocks others without waiting itself: ending it frees the chain.
        row["blocking_is_head"] = row["blocking_pid"] not in blocked_pids
    return rows


def check_blocking(ctx: Context) -> CheckResult:
    t = ctx.thresholds
    result = CheckResult("blocking", "Blocked sessions and what blocks them (pg_blocking_pids)")
    major = ctx.conn.info.server_version // 10000
    rows = blocking_pairs(ctx.conn, major)
    for row in rows:
        row.pop("blocking_backend_start", None)
        row["status"] = level(
            row["waiting_seconds"], t.blocked_warning_seconds, t.blocked_critical_seconds
        )
    result.findings = [r for r in rows if r["status"] != "ok"]
    result.details = rows
    result.status = worst([r["status"] for r in rows])
    heads = sorted({r["blocking_pid"] for r in result.findings if r["blocking_is_head"]})
    result.summary = (
        f"{len({r['blocked_pid'] for r in result.findings})} session(s) blocked for more than "
        f"{t.blocked_warning_seconds:g} s; chain head pid(s) {heads}"
        if result.findings
        else f"{len(rows)} short lock wait(s)"
        if rows
        else "no blocked session"
    )
    if result.findings:
        result.advice = (
            "Commit or roll back the blocking transaction; as a last resort run "
            "`dbops terminate-blocking --yes` (pg_terminate_backend on the chain head)."
        )
    return result


# ---------------------------------------------------------------------------
# Indexes
# ---------------------------------------------------------------------------


def stats_age_days(conn: psycopg.Connection) -> float:
    """How long usage statistics have been collected, at least (reset or server start)."""
    row = conn.execute(
        """
        SELECT extract(epoch FROM clock_timestamp()
                       - coalesce(stats_reset, pg_postmaster_start_time())) / 86400
        FROM pg_stat_database WHERE datname = current_database()
        """
    ).fetchone()
    return float(row[0]) if row and row[0] is not None else 0.0


def check_unused_indexes(ctx: Context) -> CheckResult:
    t = ctx.thresholds
    result = CheckResult("unused-indexes", "Unused indexes (never scanned, not unique)")
    age = stats_age_days(ctx.conn)
    if age < t.unused_index_min_stats_days:
        result.summary = (
            f"statistics are only {age:.1f} days old; unused indexes are judged after "
            f"{t.unused_index_min_stats_days:g} days"
        )
        return result
    rows = ctx.rows(
        f"""
        SELECT s.schemaname AS schema, s.relname AS "table", s.indexrelname AS index,
               s.idx_scan AS scans, pg_relation_size(s.indexrelid) AS bytes,
               pg_size_pretty(pg_relation_size(s.indexrelid)) AS size,
               pg_get_indexdef(s.indexrelid) AS definition
        FROM pg_stat_user_indexes s
        JOIN pg_index i ON i.indexrelid = s.indexrelid
        JOIN pg_class c ON c.oid = s.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE s.idx_scan = 0 AND NOT i.indisunique AND NOT i.indisprimary AND i.indisvalid
          AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = s.indexrelid)
          AND pg_relation_size(s.indexrelid) >= %s AND {USER_SCHEMAS}
        ORDER BY bytes DESC, 1, 2, 3
        """,
        [int(t.unused_index_min_mb * MB)],
    )
    result.findings = rows
    result.status = "warning" if rows else "ok"
    total = sum(r["bytes"] for r in rows)
    result.summary = (
        f"{len(rows)} index(es) never used in {age:.0f} days, {total / MB:.1f} MB"
        if rows
        else f"every index was used in the last {age:.0f} days"
    )
    if rows:
        result.advice = (
            "Unused indexes slow every write. Check replicas too (statistics are per server), "
            "then DROP INDEX CONCURRENTLY."
        )
    return result


def _index_rows_sql() -> str:
    return f"""
        SELECT i.indexrelid AS oid, n.nspname AS schema, t.relname AS "table",
               c.relname AS index, c.relam, i.indisunique, i.indisvalid,
               i.indnatts = i.indnkeyatts AS no_include,
               (string_to_array(i.indkey::text, ' ')::int[])[1:i.indnkeyatts] AS keys,
               (string_to_array(i.indclass::text, ' ')::oid[])[1:i.indnkeyatts] AS opclasses,
               (string_to_array(i.indcollation::text, ' ')::oid[])[1:i.indnkeyatts] AS colls,
               (string_to_array(i.indoption::text, ' ')::int[])[1:i.indnkeyatts] AS options,
               pg_get_expr(i.indexprs, i.indrelid) AS exprs,
               pg_get_expr(i.indpred, i.indrelid) AS pred,
               EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)
                   AS is_constraint,
               pg_relation_size(i.indexrelid) AS bytes,
               pg_get_indexdef(i.indexrelid) AS definition, i.indrelid
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_class t ON t.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {USER_SCHEMAS}
    """


def _covers(dup: dict[str, Any], cov: dict[str, Any]) -> bool:
    """True when cov makes dup unneeded: dup's key columns lead cov's, same kind of index."""
    n = len(dup["keys"])
    if not (dup["indisvalid"] and cov["indisvalid"] and dup["no_include"]):
        return False
    if dup["indrelid"] != cov["indrelid"] or dup["relam"] != cov["relam"]:
        return False
    if dup["exprs"] != cov["exprs"] or dup["pred"] != cov["pred"] or dup["is_constraint"]:
        return False
    for key in ("keys", "opclasses", "colls", "options"):
        if list(cov[key][:n]) != list(dup[key]):
            return False
    # A unique index is only redundant next to another unique index on the same columns.
    return not dup["indisunique"] or (cov["indisunique"] and len(cov["keys"]) == n)


def check_duplicate_indexes(ctx: Context) -> CheckResult:
    result = CheckResult("duplicate-indexes", "Duplicate indexes (covered by another index)")
    indexes = ctx.rows(_index_rows_sql() + " ORDER BY i.indexrelid")
    by_table: dict[int, list[dict[str, Any]]] = {}
    for idx in indexes:
        by_table.setdefault(idx["indrelid"], []).append(idx)
    findings = []
    for group in by_table.values():
        for dup in group:
            for cov in group:
                if dup is cov or not _covers(dup, cov):
                    continue
                if _covers(cov, dup) and dup["oid"] < cov["oid"]:
                    continue  # identical pair: report the newer one only
                findings.append(
                    {
                        "schema": dup["schema"],
                        "table": dup["table"],
                        "index": dup["index"],
                        "covered_by": cov["index"],
                        "bytes": dup["bytes"],
                        "definition": dup["definition"],
                        "covering_definition": cov["definition"],
                    }
                )
                break
    result.findings = findings
    result.status = "warning" if findings else "ok"
    result.summary = (
        f"{len(findings)} duplicate index(es), {sum(f['bytes'] for f in findings) / MB:.1f} MB"
        if findings
        else "no duplicate index"
    )
    if findings:
        result.advice = "DROP INDEX CONCURRENTLY the duplicate; its covering index serves it."
    return result


LEFTOVER_SUFFIX = re.compile(r"_cc(new|old)\d*$")


def invalid_indexes(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Invalid indexes, each marked as a REINDEX CONCURRENTLY leftover or not.

    An index being built right now is invalid too: indexes of tables with a
    build in progress are left out.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        indexes = list(cur.execute(_index_rows_sql()).fetchall())  # type: ignore[arg-type]
        building = {
            r["relid"]
            for r in cur.execute("SELECT relid FROM pg_stat_progress_create_index").fetchall()
        }
    found = []
    for idx in indexes:
        if idx["indisvalid"] or idx["indrelid"] in building:
            continue
        twin = next(
            (
                other
                for other in indexes
                if other is not idx
                and other["indrelid"] == idx["indrelid"]
                and not LEFTOVER_SUFFIX.search(other["index"])
                and all(
                    other[k] == idx[k]
                    for k in ("relam", "keys", "opclasses", "colls", "options", "exprs", "pred")
                )
                and other["indisunique"] == idx["indisunique"]
            ),
            None,
        )
        leftover = bool(LEFTOVER_SUFFIX.search(idx["index"])) and twin is not None
        found.append(
            {
                "schema": idx["schema"],
                "table": idx["table"],
                "index": idx["index"],
                "bytes": idx["bytes"],
                "kind": "leftover of an interrupted REINDEX CONCURRENTLY"
                if leftover
                else "invalid",
                "leftover_of": twin["index"] if leftover and twin else None,
                "definition": idx["definition"],
            }
        )
    return found


def check_invalid_indexes(ctx: Context) -> CheckResult:
    result = CheckResult("invalid-indexes", "Invalid indexes (failed concurrent builds)")
    result.findings = invalid_indexes(ctx.conn)
    result.status = "warning" if result.findings else "ok"
    result.summary = (
        f"{len(result.findings)} invalid index(es)" if result.findings else "no invalid index"
    )
    if result.findings:
        result.advice = (
            "Invalid indexes are maintained on every write but never used: run `dbops reindex` "
            "(REINDEX INDEX CONCURRENTLY; drops leftover _ccnew copies)."
        )
    return result


def check_index_sizes(ctx: Context) -> CheckResult:
    result = CheckResult("index-sizes", "Largest indexes")
    result.details = ctx.rows(
        f"""
        SELECT n.nspname AS schema, t.relname AS "table", c.relname AS index,
               pg_relation_size(c.oid) AS bytes, pg_size_pretty(pg_relation_size(c.oid)) AS size,
               coalesce(s.idx_scan, 0) AS scans
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_class t ON t.oid = i.indrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = i.indexrelid
        WHERE {USER_SCHEMAS}
        ORDER BY bytes DESC, 1, 2, 3 LIMIT %s
        """,
        [ctx.top_n],
    )
    total = ctx.value(
        f"""
        SELECT coalesce(sum(pg_relation_size(c.oid)), 0) FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'i' AND {USER_SCHEMAS}
        """
    )
    result.summary = f"indexes take {int(total) / MB:.1f} MB in all"
    return result


def index_bloat(conn: psycopg.Connection, min_bytes: int = 0) -> list[dict[str, Any]]:
    """Estimated bloat of B-tree indexes, from planner statistics (no table scan).

    Expected size = tuples x (aligned tuple + line pointer) / (page x fillfactor).
    Deduplication (PostgreSQL 13+) makes real indexes smaller than expected, so
    the estimate errs towards reporting too little, never too much.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""
            WITH idx AS (
                SELECT i.indexrelid, i.indrelid, n.nspname, c.relname AS index,
                       t.relname AS tbl, c.reltuples, c.relpages, i.indnatts,
                       coalesce((SELECT substr(o, 12)::int FROM unnest(c.reloptions) o
                                 WHERE o LIKE 'fillfactor=%%'), 90) AS fillfactor
                FROM pg_index i
                JOIN pg_class c ON c.oid = i.indexrelid
                JOIN pg_class t ON t.oid = i.indrelid
                JOIN pg_namespace n ON n.oid = c.relnamespace
                JOIN pg_am am ON am.oid = c.relam
                WHERE am.amname = 'btree' AND i.indisvalid AND c.relpages > 1
                  AND c.reltuples >= 0 AND {USER_SCHEMAS}
            ),
            cols AS (
                SELECT idx.indexrelid,
                       sum((1 - coalesce(s.null_frac, 0)) * s.avg_width) AS data_width,
                       bool_or(coalesce(s.null_frac, 0) > 0) AS has_nulls,
                       count(s.avg_width) = max(idx.indnatts) AS complete
                FROM idx
                JOIN pg_attribute ia ON ia.attrelid = idx.indexrelid AND ia.attnum > 0
                LEFT JOIN LATERAL (
                    SELECT (string_to_array(x.indkey::text, ' ')::int[])[ia.attnum] AS attnum
                    FROM pg_index x WHERE x.indexrelid = idx.indexrelid
                ) k ON true
                LEFT JOIN pg_attribute ta
                       ON ta.attrelid = idx.indrelid AND ta.attnum = k.attnum AND k.attnum > 0
                LEFT JOIN pg_stats s ON s.schemaname = idx.nspname AND NOT s.inherited
                       AND ((k.attnum > 0 AND s.tablename = idx.tbl AND s.attname = ta.attname)
                         OR (k.attnum = 0 AND s.tablename = idx.index
                             AND s.attname = ia.attname))
                GROUP BY idx.indexrelid
            )
            SELECT idx.indexrelid AS oid, idx.nspname AS schema, idx.tbl AS "table",
                   idx.index, idx.reltuples, idx.relpages, idx.fillfactor,
                   cols.data_width, cols.has_nulls, current_setting('block_size')::int AS bs
            FROM idx JOIN cols USING (indexrelid)
            WHERE cols.complete
            """
        ).fetchall()
    found = []
    for row in rows:
        bs = row["bs"]
        header = 8 + (4 if row["has_nulls"] else 0)
        tuple_bytes = _align(header) + _align(float(row["data_width"])) + 4  # + line pointer
        usable = (bs - 24 - 16) * row["fillfactor"] / 100.0  # page header, btree special space
        leaf = -(-max(float(row["reltuples"]), 0) * tuple_bytes // usable)
        expected = int(leaf + leaf / 100 + 1)  # ~1% inner pages + metapage
        pages = int(row["relpages"])
        wasted = max(pages - expected, 0) * bs
        if wasted < max(min_bytes, 1):
            continue
        found.append(
            {
                "schema": row["schema"],
                "table": row["table"],
                "index": row["index"],
                "bytes": pages * bs,
                "wasted_bytes": wasted,
                "bloat_pct": round(100.0 * wasted / (pages * bs), 1),
            }
        )
    return sorted(found, key=lambda r: -r["wasted_bytes"])


def _align(n: float, to: int = 8) -> int:
    whole = int(-(-n // 1))
    return -(-whole // to) * to


def check_index_bloat(ctx: Context) -> CheckResult:
    t = ctx.thresholds
    result = CheckResult("index-bloat", "Index bloat (estimated from statistics)")
    rows = index_bloat(ctx.conn, int(t.index_bloat_min_mb * MB))
    result.findings = [r for r in rows if r["bloat_pct"] >= t.index_bloat_warning_pct]
    result.status = "warning" if result.findings else "ok"
    wasted = sum(r["wasted_bytes"] for r in result.findings)
    result.summary = (
        f"{len(result.findings)} bloated index(es), about {wasted / MB:.1f} MB reclaimable"
        if result.findings
        else "no index over the bloat threshold"
    )
    if result.findings:
        result.advice = "Run `dbops reindex` (REINDEX INDEX CONCURRENTLY, no write lock)."
    return result


# ---------------------------------------------------------------------------
# Queries
# ---------------------------------------------------------------------------


def pg_stat_statements_state(ctx: Context) -> str | None:
    """None when usable, else what is missing and how to enable it."""
    preload = (ctx.setting("shared_preload_libraries") or "").replace(" ", "").split(",")
    if "pg_stat_statements" not in preload:
        return (
            "extension not installed: pg_stat_statements is not in shared_preload_libraries; "
            "add it (ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements', or the "
            "parameter group on RDS), restart PostgreSQL, then run "
            "CREATE EXTENSION pg_stat_statements in this database"
        )
    present = ctx.value("SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'")
    if not present:
        return (
            "extension not installed: the library is loaded but this database lacks the "
            "extension; run CREATE EXTENSION pg_stat_statements"
        )
    return None


def _statements(ctx: Context, order: str, where: str = "true", params: list | None = None):
    schema = ctx.value(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_stat_statements'"
    )
    from psycopg import sql

    query = sql.SQL(
        """
        SELECT query, round(mean_exec_time::numeric, 1) AS mean_ms, calls,
               round(total_exec_time::numeric, 1) AS total_ms,
               round(max_exec_time::numeric, 1) AS max_ms, rows, queryid::text AS queryid
        FROM {}.pg_stat_statements s
        WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
          AND calls >= %s AND {}
        ORDER BY {} DESC LIMIT %s
        """
    ).format(sql.Identifier(schema), sql.SQL(where), sql.SQL(order))
    with ctx.conn.cursor(row_factory=dict_row) as cur:
        rows = list(
            cur.execute(
                query, [ctx.thresholds.slow_query_min_calls, *(params or []), ctx.top_n]
            ).fetchall()
        )
    for row in rows:
        row["query"] = redact_sql(row["query"])
        for key in ("total_ms", "mean_ms", "max_ms"):
            row[key] = float(row[key])
    return rows


def check_slow_queries(ctx: Context) -> CheckResult:
    t = ctx.thresholds
    result = CheckResult("slow-queries", "Slowest queries (pg_stat_statements)")
    missing = pg_stat_statements_state(ctx)
    if missing:
        result.status = "warning"
        result.summary = missing
        result.findings = [{"extension": "pg_stat_statements", "problem": missing}]
        result.advice = "Without pg_stat_statements there is no per-query timing to report."
        return result
    slow = _statements(ctx, "mean_exec_time", "mean_exec_time >= %s", [t.slow_query_warning_ms])
    for row in slow:
        row["status"] = level(row["mean_ms"], t.slow_query_warning_ms, t.slow_query_critical_ms)
    result.findings = slow
    result.details = _statements(ctx, "total_exec_time")
    result.status = worst([r["status"] for r in slow])
    result.summary = (
        f"{len(slow)} statement(s) with a mean above {t.slow_query_warning_ms:g} ms"
        if slow
        else f"no statement with a mean above {t.slow_query_warning_ms:g} ms"
    )
    if slow:
        result.advice = (
            "EXPLAIN (ANALYZE, BUFFERS) these statements; add the missing index with "
            "CREATE INDEX CONCURRENTLY."
        )
    return result


def check_sequential_scans(ctx: Context) -> CheckResult:
    t = ctx.thresholds
    result = CheckResult("sequential-scans", "Large tables read by sequential scans")
    rows = ctx.rows(
        """
        SELECT schemaname AS schema, relname AS "table", n_live_tup AS rows,
               seq_scan AS sequential_scans, coalesce(idx_scan, 0) AS index_scans,
               round(100.0 * coalesce(idx_scan, 0)
                     / greatest(seq_scan + coalesce(idx_scan, 0), 1), 1) AS index_usage_pct,
               seq_tup_read / greatest(seq_scan, 1) AS rows_per_sequential_scan
        FROM pg_stat_user_tables
        WHERE n_live_tup >= %s AND seq_scan >= %s
          AND 100.0 * coalesce(idx_scan, 0) / greatest(seq_scan + coalesce(idx_scan, 0), 1) < %s
        ORDER BY seq_tup_read DESC
        """,
        [t.seq_scan_min_rows, t.seq_scan_min_scans, t.seq_scan_index_usage_pct],
    )
    can_hint = pg_stat_statements_state(ctx) is None
    for row in rows:
        row["index_usage_pct"] = float(row["index_usage_pct"])
        if can_hint:
            hints = _statements(ctx, "total_exec_time", "query ILIKE %s", [f"%{row['table']}%"])[:3]
            row["queries"] = [h["query"] for h in hints]
    result.findings = rows
    result.status = "warning" if rows else "ok"
    result.summary = (
        f"{len(rows)} large table(s) mostly read by sequential scans (missing index?)"
        if rows
        else "large tables are read through indexes"
    )
    if rows:
        result.advice = (
            "Find the filtering columns of these tables' queries (EXPLAIN shows Seq Scan) and "
            "CREATE INDEX CONCURRENTLY on them."
        )
    return result


# ---------------------------------------------------------------------------
# Storage, vacuum, wraparound
# ---------------------------------------------------------------------------


def check_wraparound(ctx: Context) -> CheckResult:
    t = ctx.thresholds
    result = CheckResult("transaction-id-wraparound", "Transaction ID wraparound age")
    databases = ctx.rows(
        """
        SELECT datname AS database, age(datfrozenxid) AS xid_age,
               mxid_age(datminmxid) AS multixact_age
        FROM pg_database WHERE datallowconn ORDER BY 2 DESC
        """
    )
    tables = ctx.rows(
        f"""
        SELECT n.nspname AS schema, c.relname AS "table", age(c.relfrozenxid) AS xid_age,
               mxid_age(c.relminmxid) AS multixact_age
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'm') AND {USER_SCHEMAS}
        ORDER BY 3 DESC LIMIT %s
        """,
        [ctx.top_n],
    )
    findings = []
    for row in [*databases, *tables]:
        age = max(int(row["xid_age"]), int(row["multixact_age"]))
        status = level(age, t.xid_age_warning, t.xid_age_critical)
        if status != "ok":
            findings.append({**row, "status": status})
    result.findings = findings
    result.details = databases
    result.status = worst([f["status"] for f in findings])
    oldest = max((int(r["xid_age"]) for r in databases), default=0)
    result.summary = f"oldest unfrozen transaction ID age {oldest:,} of ~2,147,483,647"
    if findings:
        result.advice = (
            "Autovacuum cannot keep up: VACUUM (FREEZE) the listed tables (`dbops vacuum "
            "--table ...`), look for long transactions and abandoned replication slots."
        )
    return result


INT_MAX = {"int2": 32767, "int4": 2147483647, "int8": 9223372036854775807}


def check_sequences(ctx: Context) -> CheckResult:
    t = ctx.thresholds
    result = CheckResult("sequences", "Sequences near their maximum (and their columns')")
    rows = ctx.rows(
        f"""
        WITH cols AS (
            SELECT d.objid AS seq, d.refobjid AS rel, d.refobjsubid AS attnum
            FROM pg_depend d
            WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
              AND d.deptype IN ('a', 'i') AND d.refobjsubid > 0
            UNION
            SELECT d.refobjid, ad.adrelid, ad.adnum
            FROM pg_depend d JOIN pg_attrdef ad ON ad.oid = d.objid
            WHERE d.classid = 'pg_attrdef'::regclass AND d.refclassid = 'pg_class'::regclass
        )
        SELECT n.nspname AS schema, c.relname AS sequence, s.seqtypid::regtype::text AS type,
               s.seqmin AS min_value, s.seqmax AS max_value, s.seqincrement AS increment,
               s.seqcycle AS cycle, ps.last_value,
               (SELECT string_agg(quote_ident(tn.nspname) || '.' || quote_ident(tc.relname)
                                  || '.' || quote_ident(a.attname), ', ')
                FROM cols JOIN pg_class tc ON tc.oid = cols.rel
                JOIN pg_namespace tn ON tn.oid = tc.relnamespace
                JOIN pg_attribute a ON a.attrelid = cols.rel AND a.attnum = cols.attnum
                WHERE cols.seq = c.oid) AS columns,
               (SELECT array_agg(DISTINCT ty.typname::text)
                FROM cols JOIN pg_attribute a ON a.attrelid = cols.rel AND a.attnum = cols.attnum
                JOIN pg_type ty ON ty.oid = a.atttypid
                WHERE cols.seq = c.oid) AS column_types
        FROM pg_sequence s
        JOIN pg_class c ON c.oid = s.seqrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_sequences ps ON ps.schemaname = n.nspname AND ps.sequencename = c.relname
        WHERE {USER_SCHEMAS}
        """
    )
    findings = []
    for row in rows:
        if row["last_value"] is None or row["cycle"]:
            continue
        limits = [INT_MAX[ty] for ty in row.pop("column_types") or [] if ty in INT_MAX]
        hi = min([int(row["max_value"]), *limits])
        lo = max([int(row["min_value"]), *(-m - 1 for m in limits)])
        last = int(row["last_value"])
        if row["increment"] > 0:
            pct = 100.0 * (last - int(row["min_value"])) / max(hi - int(row["min_value"]), 1)
        else:
            pct = 100.0 * (int(row["max_value"]) - last) / max(int(row["max_value"]) - lo, 1)
        status = level(pct, t.sequence_warning_pct, t.sequence_critical_pct)
        if status != "ok":
            findings.append(
                {
                    "schema": row["schema"],
                    "sequence": row["sequence"],
                    "used_pct": round(pct, 2),
                    "last_value": last,
                    "limit": hi if row["increment"] > 0 else lo,
                    "columns": row["columns"],
                    "type": row["type"],
                    "increment": row["increment"],
                    "status": status,
                }
            )
    result.findings = sorted(findings, key=lambda r: -r["used_pct"])
    result.status = worst([f["status"] for f in findings])
    result.summary = (
        f"{len(findings)} sequence(s) above {t.sequence_warning_pct:g}% of their range"
        if findings
        else f"{len(rows)} sequence(s), all far from their limit"
    )
    if findings:
        result.advice = (
            "Widen the column and the sequence to bigint (ALTER TABLE ... ALTER COLUMN ... TYPE "
            "bigint; ALTER SEQUENCE ... AS bigint) before inserts start failing."
        )
    return result


def check_cache_hit_ratio(ctx: Context) -> CheckResult:
    t = ctx.thresholds
    result = CheckResult("cache-hit-ratio", "Buffer cache hit ratio (tables and indexes)")
    rows = ctx.rows(
        """
        SELECT 'tables' AS scope, coalesce(sum(heap_blks_hit), 0) AS hits,
               coalesce(sum(heap_blks_read), 0) AS reads FROM pg_statio_user_tables
        UNION ALL
        SELECT 'indexes', coalesce(sum(idx_blks_hit), 0), coalesce(sum(idx_blks_read), 0)
        FROM pg_statio_user_indexes
        """
    )
    statuses: list[Status] = []
    for row in rows:
        total = int(row["hits"]) + int(row["reads"])
        row["hit_ratio_pct"] = round(100.0 * int(row["hits"]) / total, 2) if total else None
        if total < t.cache_min_blocks:
            row["status"] = "ok"
            row["note"] = f"only {total} block reads so far; too few to judge"
        else:
            row["status"] = level(
                row["hit_ratio_pct"],
                t.cache_hit_warning_pct,
                t.cache_hit_critical_pct,
                higher_is_worse=False,
            )
        statuses.append(row["status"])
    result.details = rows
    result.findings = [r for r in rows if r["status"] != "ok"]
    result.status = worst(statuses)
    result.summary = ", ".join(f"{r['scope']} {r['hit_ratio_pct']}%" for r in rows)
    if result.findings:
        result.advice = (
            "The working set does not fit in shared_buffers: add memory (shared_buffers ~25% "
            "of RAM), drop unused indexes, or fix queries that scan whole tables."
        )
    return result


def table_bloat(conn: psycopg.Connection, min_bytes: int = 0) -> list[dict[str, Any]]:
    """Estimated wasted space of tables, from planner statistics (no table scan).

    Expected pages = live tuples / tuples that fit a page at the table's
    fillfactor. Tables without statistics (never analyzed) are not estimated.
    """
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            f"""
            SELECT c.oid, n.nspname AS schema, c.relname AS "table", c.reltuples, c.relpages,
                   coalesce((SELECT substr(o, 12)::int FROM unnest(c.reloptions) o
                             WHERE o LIKE 'fillfactor=%%'), 100) AS fillfactor,
                   current_setting('block_size')::int AS bs,
                   count(a.attnum) AS columns, count(s.avg_width) AS with_stats,
                   coalesce(sum((1 - coalesce(s.null_frac, 0)) * s.avg_width), 0) AS data_width,
                   bool_or(coalesce(s.null_frac, 0) > 0) AS has_nulls
            FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
            LEFT JOIN pg_stats s ON s.schemaname = n.nspname AND s.tablename = c.relname
                 AND s.attname = a.attname AND NOT s.inherited
            WHERE c.relkind IN ('r', 'm') AND c.relpages > 1 AND {USER_SCHEMAS}
            GROUP BY c.oid, n.nspname, c.relname
            """
        ).fetchall()
    found = []
    for row in rows:
        if row["with_stats"] < row["columns"] or float(row["reltuples"]) < 0:
            continue
        bs = row["bs"]
        header = 23 + ((int(row["columns"]) + 7) // 8 if row["has_nulls"] else 0)
        tuple_bytes = _align(header) + _align(float(row["data_width"])) + 4
        per_page = max(int((bs - 24) * row["fillfactor"] / 100 // tuple_bytes), 1)
        expected = int(-(-float(row["reltuples"]) // per_page))
        pages = int(row["relpages"])
        wasted = max(pages - expected, 0) * bs
        if wasted < max(min_bytes, 1):
            continue
        found.append(
            {
                "schema": row["schema"],
                "table": row["table"],
                "bytes": pages * bs,
                "wasted_bytes": wasted,
                "bloat_pct": round(100.0 * wasted / (pages * bs), 1),
            }
        )
    return sorted(found, key=lambda r: -r["wasted_bytes"])


def check_table_bloat(ctx: Context) -> CheckResult:
    t = ctx.thresholds
    result = CheckResult("table-bloat", "Table bloat (estimated from statistics)")
    rows = table_bloat(ctx.conn, int(t.table_bloat_min_mb * MB))
    for row in rows:
        row["status"] = level(
            row["bloat_pct"], t.table_bloat_warning_pct, t.table_bloat_critical_pct
        )
    result.findings = [r for r in rows if r["status"] != "ok"]
    result.status = worst([r["status"] for r in result.findings])
    wasted = sum(r["wasted_bytes"] for r in result.findings)
    result.summary = (
        f"{len(result.findings)} bloated table(s), about {wasted / MB:.1f} MB wasted"
        if result.findings
        else "no table over the bloat threshold"
    )
    if result.findings:
        result.advice = (
            "VACUUM makes the space reusable; only VACUUM FULL (`dbops vacuum --full --table "
            "...`, locks the table) or pg_repack gives it back to the operating system."
        )
    return result


def check_dead_tuples(ctx: Context) -> CheckResult:
    from tasks.maintenance.vacuum import VacuumThresholds, vacuum_candidates

    t = ctx.thresholds
    result = CheckResult("dead-tuples", "Tables that need VACUUM (dead tuples)")
    candidates = vacuum_candidates(
        ctx.conn,
        VacuumThresholds(dead_ratio=t.dead_tuple_ratio, min_dead_tuples=t.dead_tuple_min),
        mode="vacuum",
    )
    result.findings = [
        {
            "schema": c.schema,
            "table": c.table,
            "dead_tuples": c.dead_tuples,
            "live_tuples": c.live_tuples,
            "dead_pct": round(100 * c.dead_ratio, 1),
            "last_vacuum": c.last_vacuum,
        }
        for c in candidates
        if "dead tuples" in c.reason
    ]
    result.status = "warning" if result.findings else "ok"
    result.summary = (
        f"{len(result.findings)} table(s) with more than {100 * t.dead_tuple_ratio:g}% dead tuples"
        if result.findings
        else "autovacuum keeps up"
    )
    if result.findings:
        result.advice = "Run `dbops vacuum`; check autovacuum settings of these tables."
    return result


def check_invalid_constraints(ctx: Context) -> CheckResult:
    result = CheckResult("invalid-constraints", "Constraints added NOT VALID, never validated")
    result.findings = ctx.rows(
        f"""
        SELECT n.nspname AS schema, t.relname AS "table", k.conname AS constraint,
               pg_get_constraintdef(k.oid) AS definition
        FROM pg_constraint k
        JOIN pg_class t ON t.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = t.relnamespace
        WHERE NOT k.convalidated AND {USER_SCHEMAS}
        ORDER BY 1, 2, 3
        """
    )
    result.status = "warning" if result.findings else "ok"
    result.summary = (
        f"{len(result.findings)} constraint(s) not validated"
        if result.findings
        else "every constraint is validated"
    )
    if result.findings:
        result.advice = "ALTER TABLE ... VALIDATE CONSTRAINT ... (takes no write lock)."
    return result


def check_replication_slots(ctx: Context) -> CheckResult:
    t = ctx.thresholds
    result = CheckResult("replication-slots", "Replication slots holding WAL")
    if ctx.value("SELECT pg_is_in_recovery()"):
        result.summary = "standby server: slots are checked on the primary"
        return result
    rows = ctx.rows(
        """
        SELECT slot_name AS slot, slot_type AS type, database, active,
               pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn) AS retained_bytes
        FROM pg_replication_slots ORDER BY retained_bytes DESC NULLS LAST
        """
    )
    for row in rows:
        row["retained_bytes"] = int(row["retained_bytes"] or 0)
        big = row["retained_bytes"] >= t.replication_slot_wal_warning_mb * MB
        row["status"] = "warning" if big or not row["active"] else "ok"
    result.details = rows
    result.findings = [r for r in rows if r["status"] != "ok"]
    result.status = worst([r["status"] for r in rows])
    result.summary = (
        f"{len(result.findings)} slot(s) inactive or holding much WAL"
        if result.findings
        else f"{len(rows)} replication slot(s), all active"
    )
    if result.findings:
        result.advice = (
            "An abandoned slot keeps WAL forever and fills the disk: "
            "SELECT pg_drop_replication_slot('name') if its consumer is gone."
        )
    return result


def check_connection_pool(ctx: Context) -> CheckResult:
    t = ctx.thresholds
    pool = ctx.pool
    result = CheckResult("connection-pool", "The app's pool settings against max_connections")
    max_conn, usable = usable_connections(ctx)
    detail: dict[str, Any] = {
        "connection_limit": pool.connection_limit,
        "app_instances": pool.app_instances,
        "max_connections": max_conn,
        "usable_connections": usable,
        "pgbouncer": pool.pgbouncer,
    }
    result.details = [detail]
    guide = (
        "The guide: connection_limit=10 for one instance, 5 per instance for three, "
        "PgBouncer (transaction pooling) from ten instances on."
    )
    if pool.pgbouncer:
        result.summary = (
            "connections go through PgBouncer: keep DEFAULT_POOL_SIZE x databases x users "
            f"below {usable}"
        )
        return result
    findings: list[dict[str, Any]] = []
    if pool.app_instances >= 10:
        findings.append(
            {
                "problem": f"{pool.app_instances} app instances connect directly",
                "fix": "put PgBouncer in front (POOL_MODE transaction, DEFAULT_POOL_SIZE 20)",
                "status": "warning",
                **detail,
            }
        )
    if pool.connection_limit is None:
        result.summary = (
            "DATABASE_URL sets no connection_limit: Prisma opens num_cpus x 2 + 1 per instance"
        )
    else:
        planned = pool.connection_limit * pool.app_instances
        pct = round(100.0 * planned / usable, 1)
        detail["planned_connections"] = planned
        result.summary = (
            f"connection_limit {pool.connection_limit} x {pool.app_instances} instance(s) = "
            f"{planned} of {usable} usable connections ({pct}%)"
        )
        if planned > usable:
            status: Status = "critical"
        elif pct >= t.pool_warning_pct:
            status = "warning"
        else:
            status = "ok"
        if status != "ok":
            findings.append(
                {
                    "problem": f"the app's pools can open {planned} of {usable} connections",
                    "fix": "lower connection_limit, raise max_connections, or add PgBouncer",
                    "status": status,
                    **detail,
                }
            )
    result.findings = findings
    result.status = worst([f["status"] for f in findings])
    result.advice = guide
    return result


CHECKS: dict[str, Callable[[Context], CheckResult]] = {
    "connections": check_connections,
    "idle-in-transaction": check_idle_in_transaction,
    "long-running-queries": check_long_queries,
    "blocking": check_blocking,
    "unused-indexes": check_unused_indexes,
    "duplicate-indexes": check_duplicate_indexes,
    "invalid-indexes": check_invalid_indexes,
    "index-sizes": check_index_sizes,
    "index-bloat": check_index_bloat,
    "slow-queries": check_slow_queries,
    "sequential-scans": check_sequential_scans,
    "transaction-id-wraparound": check_wraparound,
    "sequences": check_sequences,
    "cache-hit-ratio": check_cache_hit_ratio,
    "table-bloat": check_table_bloat,
    "dead-tuples": check_dead_tuples,
    "invalid-constraints": check_invalid_constraints,
    "replication-slots": check_replication_slots,
    "connection-pool": check_connection_pool,
}


def select_checks(names: list[str] | None) -> list[str]:
    if not names:
        return list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise DbopsError(f"unknown health check(s) {unknown}; choose from {', '.join(CHECKS)}")
    return list(dict.fromkeys(names))


def run_checks(
    info: ConnInfo,
    thresholds: HealthThresholds,
    pool: PoolSettings,
    names: list[str] | None = None,
    top_n: int = 10,
) -> list[CheckResult]:
    """Run the chosen checks on one read-only connection; a check that errors is a warning."""
    chosen = select_checks(names)
    results = []
    with info.connect() as conn:
        conn.execute("SET application_name = 'dbops-health'")
        conn.execute("SET default_transaction_read_only = on")
        conn.execute("SET statement_timeout = '60s'")
        conn.execute("SET lock_timeout = '5s'")
        with contextlib.suppress(psycopg.Error):  # superusers only: keep our own queries out
            conn.execute("SET pg_stat_statements.track = 'none'")
        ctx = Context(conn=conn, thresholds=thresholds, pool=pool, top_n=top_n)
        for name in chosen:
            try:
                results.append(CHECKS[name](ctx))
            except psycopg.Error as exc:
                message = first_line(exc)
                results.append(
                    CheckResult(
                        name,
                        name,
                        status="warning",
                        summary=f"check could not run: {message}",
                        findings=[{"error": message}],
                    )
                )
    return results

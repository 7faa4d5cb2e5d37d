"""Catalog and statistics queries shared by health checks, maintenance and security.

They sit below all three so that none of those imports another: health reports
what maintenance fixes (bloat, invalid indexes, dead tuples) and security ends
the lock chains health finds, from the same queries. Everything here only reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

MB = 1024 * 1024
QUERY_CHARS = 500
# No % in it: it is formatted into queries that also take parameters.
USER_SCHEMAS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'"
)
LEFTOVER_SUFFIX = re.compile(r"_cc(new|old)\d*$")

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


def seconds(value: Any) -> float:
    """An interval in seconds as the reports show it (one decimal)."""
    return round(float(value or 0), 1)


def dict_rows(
    conn: psycopg.Connection, query: str | sql.Composable, params: object = None
) -> list[dict[str, Any]]:
    """The rows of a query as dicts keyed by column name."""
    with conn.cursor(row_factory=dict_row) as cur:
        return list(cur.execute(query, params).fetchall())  # type: ignore[arg-type]


def _align(n: float, to: int = 8) -> int:
    whole = int(-(-n // 1))
    return -(-whole // to) * to


def _wasted(row: dict[str, Any], pages: int, expected: int) -> dict[str, Any]:
    wasted = max(pages - expected, 0) * row["bs"]
    return {
        "bytes": pages * row["bs"],
        "wasted_bytes": wasted,
        "bloat_pct": round(100.0 * wasted / (pages * row["bs"]), 1),
    }


# ---------------------------------------------------------------------------
# Sessions
# ---------------------------------------------------------------------------


def blocking_pairs(conn: psycopg.Connection, major: int) -> list[dict[str, Any]]:
    """Every (blocked, blocking) session pair in this database, from pg_blocking_pids."""
    wait_start = (
        "(SELECT min(l.waitstart) FROM pg_locks l WHERE l.pid = blocked.pid AND NOT l.granted)"
        if major >= 14
        else "NULL::timestamptz"
    )
    rows = dict_rows(
        conn,
        f"""
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
        """,
    )
    blocked_pids = {r["blocked_pid"] for r in rows}
    for row in rows:
        row["waiting_seconds"] = seconds(row["waiting_seconds"])
        row["blocking_transaction_seconds"] = seconds(row["blocking_transaction_seconds"])
        row["blocked_query"] = redact_sql(row["blocked_query"])
        row["blocking_query"] = redact_sql(row["blocking_query"])
        # The head of a chain blocks others without waiting itself: ending it frees the chain.
        row["blocking_is_head"] = row["blocking_pid"] not in blocked_pids
    return rows


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


# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------

TABLE_STATS = """
    SELECT s.relid AS oid, s.schemaname AS schema, s.relname AS "table",
           s.n_live_tup AS live, s.n_dead_tup AS dead, s.n_mod_since_analyze AS mods,
           pg_total_relation_size(s.relid) AS bytes,
           greatest(s.last_vacuum, s.last_autovacuum)::text AS last_vacuum,
           greatest(s.last_analyze, s.last_autoanalyze)::text AS last_analyze
    FROM pg_stat_user_tables s
    JOIN pg_class c ON c.oid = s.relid
    WHERE c.relkind IN ('r', 'm')
    ORDER BY 2, 3
"""


@dataclass
class TableActivity:
    """A user table's tuple counts and last VACUUM/ANALYZE, from pg_stat_user_tables."""

    oid: int
    schema: str
    table: str
    live_tuples: int
    dead_tuples: int
    modifications: int
    bytes: int
    last_vacuum: str | None
    last_analyze: str | None

    @property
    def dead_ratio(self) -> float:
        return self.dead_tuples / max(self.live_tuples + self.dead_tuples, 1)

    @property
    def dead_bytes(self) -> float:
        """Bytes a VACUUM can make reusable, estimated from the share of dead tuples."""
        return self.bytes * self.dead_ratio

    def needs_vacuum(self, dead_ratio: float, min_dead_tuples: int) -> bool:
        """Autovacuum's rule made explicit: enough dead tuples, and a large enough share."""
        return self.dead_tuples >= max(min_dead_tuples, 1) and self.dead_ratio >= dead_ratio


def table_activity(conn: psycopg.Connection) -> list[TableActivity]:
    """Every user table, by schema and name, with statistics as of now (no cached snapshot)."""
    conn.execute("SELECT pg_stat_clear_snapshot()")
    return [
        TableActivity(
            oid=int(r["oid"]),
            schema=r["schema"],
            table=r["table"],
            live_tuples=int(r["live"]),
            dead_tuples=int(r["dead"]),
            modifications=int(r["mods"]),
            bytes=int(r["bytes"]),
            last_vacuum=r["last_vacuum"],
            last_analyze=r["last_analyze"],
        )
        for r in dict_rows(conn, TABLE_STATS)
    ]


def table_bloat(conn: psycopg.Connection, min_bytes: int = 0) -> list[dict[str, Any]]:
    """Estimated wasted space of tables, from planner statistics (no table scan).

    Expected pages = live tuples / tuples that fit a page at the table's
    fillfactor. Tables without statistics (never analyzed) are not estimated.
    """
    rows = dict_rows(
        conn,
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
        """,
    )
    found = []
    for row in rows:
        if row["with_stats"] < row["columns"] or float(row["reltuples"]) < 0:
            continue
        header = 23 + ((int(row["columns"]) + 7) // 8 if row["has_nulls"] else 0)
        tuple_bytes = _align(header) + _align(float(row["data_width"])) + 4
        per_page = max(int((row["bs"] - 24) * row["fillfactor"] / 100 // tuple_bytes), 1)
        expected = int(-(-float(row["reltuples"]) // per_page))
        waste = _wasted(row, int(row["relpages"]), expected)
        if waste["wasted_bytes"] >= max(min_bytes, 1):
            found.append({"schema": row["schema"], "table": row["table"], **waste})
    return sorted(found, key=lambda r: -r["wasted_bytes"])


# ---------------------------------------------------------------------------
# Indexes
# ---------------------------------------------------------------------------

INDEX_ROWS = f"""
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
"""Every user index with what makes two indexes the same (keys, classes, expressions)."""

_SAME_INDEX = ("relam", "keys", "opclasses", "colls", "options", "exprs", "pred", "indisunique")


def invalid_indexes(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Invalid indexes, each marked as a REINDEX CONCURRENTLY leftover or not.

    An index being built right now is invalid too: indexes of tables with a
    build in progress are left out.
    """
    indexes = dict_rows(conn, INDEX_ROWS)
    building = {
        r["relid"] for r in dict_rows(conn, "SELECT relid FROM pg_stat_progress_create_index")
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
                and all(other[k] == idx[k] for k in _SAME_INDEX)
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


def index_bloat(conn: psycopg.Connection, min_bytes: int = 0) -> list[dict[str, Any]]:
    """Estimated bloat of B-tree indexes, from planner statistics (no table scan).

    Expected size = tuples x (aligned tuple + line pointer) / (page x fillfactor).
    Deduplication (PostgreSQL 13+) makes real indexes smaller than expected, so
    the estimate errs towards reporting too little, never too much.
    """
    rows = dict_rows(
        conn,
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
        """,
    )
    found = []
    for row in rows:
        header = 8 + (4 if row["has_nulls"] else 0)
        tuple_bytes = _align(header) + _align(float(row["data_width"])) + 4  # + line pointer
        usable = (row["bs"] - 24 - 16) * row["fillfactor"] / 100.0  # page header, btree special
        leaf = -(-max(float(row["reltuples"]), 0) * tuple_bytes // usable)
        expected = int(leaf + leaf / 100 + 1)  # ~1% inner pages + metapage
        waste = _wasted(row, int(row["relpages"]), expected)
        if waste["wasted_bytes"] >= max(min_bytes, 1):
            found.append(
                {"schema": row["schema"], "table": row["table"], "index": row["index"], **waste}
            )
    return sorted(found, key=lambda r: -r["wasted_bytes"])

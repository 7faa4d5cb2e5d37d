"""Checks of statements: the slowest (pg_stat_statements) and large tables read by sequential
scans, with the statements that read them when pg_stat_statements can tell."""

from __future__ import annotations

from typing import Any

from psycopg import sql

from tasks.core.statistics import dict_rows, redact_sql
from tasks.health.model import Context, HealthCheck, rate


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


def _statements(
    ctx: Context, order: str, where: str = "true", params: list | None = None
) -> list[dict[str, Any]]:
    schema = ctx.value(
        "SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace "
        "WHERE e.extname = 'pg_stat_statements'"
    )
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
    rows = dict_rows(
        ctx.conn,
        query,
        [ctx.thresholds.slow_query_min_calls, *(params or []), ctx.top_n],
    )
    for row in rows:
        row["query"] = redact_sql(row["query"])
        for key in ("total_ms", "mean_ms", "max_ms"):
            row[key] = float(row[key])
    return rows


def check_slow_queries(ctx: Context) -> HealthCheck:
    t = ctx.thresholds
    result = HealthCheck(name="slow-queries", title="Slowest queries (pg_stat_statements)")
    missing = pg_stat_statements_state(ctx)
    if missing:
        return result.conclude(
            [{"extension": "pg_stat_statements", "problem": missing}],
            found=missing,
            clean=missing,
            advice="Without pg_stat_statements there is no per-query timing to report.",
        )
    slow = _statements(ctx, "mean_exec_time", "mean_exec_time >= %s", [t.slow_query_warning_ms])
    rate(slow, "mean_ms", t.slow_query_warning_ms, t.slow_query_critical_ms)
    result.details = _statements(ctx, "total_exec_time")
    return result.conclude(
        slow,
        found=f"{len(slow)} statement(s) with a mean above {t.slow_query_warning_ms:g} ms",
        clean=f"no statement with a mean above {t.slow_query_warning_ms:g} ms",
        advice="EXPLAIN (ANALYZE, BUFFERS) these statements; add the missing index with "
        "CREATE INDEX CONCURRENTLY.",
    )


def check_sequential_scans(ctx: Context) -> HealthCheck:
    t = ctx.thresholds
    result = HealthCheck(name="sequential-scans", title="Large tables read by sequential scans")
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
    return result.conclude(
        rows,
        found=f"{len(rows)} large table(s) mostly read by sequential scans (missing index?)",
        clean="large tables are read through indexes",
        advice="Find the filtering columns of these tables' queries (EXPLAIN shows Seq Scan) "
        "and CREATE INDEX CONCURRENTLY on them.",
    )

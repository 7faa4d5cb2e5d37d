"""Checks of indexes: unused, duplicate, invalid, the largest, and bloated ones."""

from __future__ import annotations

from typing import Any

from tasks.core.statistics import (
    INDEX_ROWS,
    MB,
    USER_SCHEMAS,
    index_bloat,
    invalid_indexes,
    stats_age_days,
)
from tasks.health.model import Context, HealthCheck


def check_unused_indexes(ctx: Context) -> HealthCheck:
    t = ctx.thresholds
    result = HealthCheck(name="unused-indexes", title="Unused indexes (never scanned, not unique)")
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
    total = sum(r["bytes"] for r in rows)
    return result.conclude(
        rows,
        found=f"{len(rows)} index(es) never used in {age:.0f} days, {total / MB:.1f} MB",
        clean=f"every index was used in the last {age:.0f} days",
        advice="Unused indexes slow every write. Check replicas too (statistics are per "
        "server), then DROP INDEX CONCURRENTLY.",
    )


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


def _covering(group: list[dict[str, Any]], dup: dict[str, Any]) -> dict[str, Any] | None:
    for cov in group:
        if dup is cov or not _covers(dup, cov):
            continue
        if _covers(cov, dup) and dup["oid"] < cov["oid"]:
            continue  # identical pair: report the newer one only
        return cov
    return None


def check_duplicate_indexes(ctx: Context) -> HealthCheck:
    result = HealthCheck(
        name="duplicate-indexes", title="Duplicate indexes (covered by another index)"
    )
    by_table: dict[int, list[dict[str, Any]]] = {}
    for idx in ctx.rows(INDEX_ROWS + " ORDER BY i.indexrelid"):
        by_table.setdefault(idx["indrelid"], []).append(idx)
    findings = [
        {
            "schema": dup["schema"],
            "table": dup["table"],
            "index": dup["index"],
            "covered_by": cov["index"],
            "bytes": dup["bytes"],
            "definition": dup["definition"],
            "covering_definition": cov["definition"],
        }
        for group in by_table.values()
        for dup in group
        if (cov := _covering(group, dup)) is not None
    ]
    return result.conclude(
        findings,
        found=f"{len(findings)} duplicate index(es), "
        f"{sum(f['bytes'] for f in findings) / MB:.1f} MB",
        clean="no duplicate index",
        advice="DROP INDEX CONCURRENTLY the duplicate; its covering index serves it.",
    )


def check_invalid_indexes(ctx: Context) -> HealthCheck:
    result = HealthCheck(name="invalid-indexes", title="Invalid indexes (failed concurrent builds)")
    findings = invalid_indexes(ctx.conn)
    return result.conclude(
        findings,
        found=f"{len(findings)} invalid index(es)",
        clean="no invalid index",
        advice="Invalid indexes are maintained on every write but never used: run `dbops "
        "reindex` (REINDEX INDEX CONCURRENTLY; drops leftover _ccnew copies).",
    )


def check_index_sizes(ctx: Context) -> HealthCheck:
    result = HealthCheck(name="index-sizes", title="Largest indexes")
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


def check_index_bloat(ctx: Context) -> HealthCheck:
    t = ctx.thresholds
    result = HealthCheck(name="index-bloat", title="Index bloat (estimated from statistics)")
    rows = index_bloat(ctx.conn, int(t.index_bloat_min_mb * MB))
    findings = [r for r in rows if r["bloat_pct"] >= t.index_bloat_warning_pct]
    wasted = sum(r["wasted_bytes"] for r in findings)
    return result.conclude(
        findings,
        found=f"{len(findings)} bloated index(es), about {wasted / MB:.1f} MB reclaimable",
        clean="no index over the bloat threshold",
        advice="Run `dbops reindex` (REINDEX INDEX CONCURRENTLY, no write lock).",
    )

"""Checks of storage and of what keeps writes going: wraparound, sequences, cache hit ratio,
table bloat, dead tuples, unvalidated constraints and replication slots."""

from __future__ import annotations

from typing import Any

from tasks.core.statistics import MB, USER_SCHEMAS, table_activity, table_bloat
from tasks.health.model import Context, HealthCheck, HealthStatus, level, not_ok, rate

INT_MAX = {"int2": 32767, "int4": 2147483647, "int8": 9223372036854775807}


def check_wraparound(ctx: Context) -> HealthCheck:
    t = ctx.thresholds
    result = HealthCheck(name="transaction-id-wraparound", title="Transaction ID wraparound age")
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
    rated = [
        {
            **row,
            "status": level(
                max(int(row["xid_age"]), int(row["multixact_age"])),
                t.xid_age_warning,
                t.xid_age_critical,
            ),
        }
        for row in [*databases, *tables]
    ]
    result.details = databases
    oldest = max((int(r["xid_age"]) for r in databases), default=0)
    summary = f"oldest unfrozen transaction ID age {oldest:,} of ~2,147,483,647"
    return result.conclude(
        not_ok(rated),
        found=summary,
        clean=summary,
        advice="Autovacuum cannot keep up: VACUUM (FREEZE) the listed tables (`dbops vacuum "
        "--table ...`), look for long transactions and abandoned replication slots.",
    )


SEQUENCES = f"""
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
"""User sequences with their range and the columns (and column types) they feed."""


def _sequence_use(row: dict[str, Any]) -> tuple[float, int]:
    """(% of the range used, the limit it runs into): the sequence's own or its columns'."""
    limits = [INT_MAX[ty] for ty in row.pop("column_types") or [] if ty in INT_MAX]
    hi = min([int(row["max_value"]), *limits])
    lo = max([int(row["min_value"]), *(-m - 1 for m in limits)])
    last = int(row["last_value"])
    if row["increment"] > 0:
        return 100.0 * (last - int(row["min_value"])) / max(hi - int(row["min_value"]), 1), hi
    return 100.0 * (int(row["max_value"]) - last) / max(int(row["max_value"]) - lo, 1), lo


def check_sequences(ctx: Context) -> HealthCheck:
    t = ctx.thresholds
    result = HealthCheck(
        name="sequences", title="Sequences near their maximum (and their columns')"
    )
    rows = ctx.rows(SEQUENCES)
    findings = []
    for row in rows:
        if row["last_value"] is None or row["cycle"]:
            continue
        pct, limit = _sequence_use(row)
        status = level(pct, t.sequence_warning_pct, t.sequence_critical_pct)
        if status != HealthStatus.OK:
            findings.append(
                {
                    "schema": row["schema"],
                    "sequence": row["sequence"],
                    "used_pct": round(pct, 2),
                    "last_value": int(row["last_value"]),
                    "limit": limit,
                    "columns": row["columns"],
                    "type": row["type"],
                    "increment": row["increment"],
                    "status": status,
                }
            )
    return result.conclude(
        sorted(findings, key=lambda r: -r["used_pct"]),
        found=f"{len(findings)} sequence(s) above {t.sequence_warning_pct:g}% of their range",
        clean=f"{len(rows)} sequence(s), all far from their limit",
        advice="Widen the column and the sequence to bigint (ALTER TABLE ... ALTER COLUMN ... "
        "TYPE bigint; ALTER SEQUENCE ... AS bigint) before inserts start failing.",
    )


def check_cache_hit_ratio(ctx: Context) -> HealthCheck:
    t = ctx.thresholds
    result = HealthCheck(
        name="cache-hit-ratio", title="Buffer cache hit ratio (tables and indexes)"
    )
    rows = ctx.rows(
        """
        SELECT 'tables' AS scope, coalesce(sum(heap_blks_hit), 0) AS hits,
               coalesce(sum(heap_blks_read), 0) AS reads FROM pg_statio_user_tables
        UNION ALL
        SELECT 'indexes', coalesce(sum(idx_blks_hit), 0), coalesce(sum(idx_blks_read), 0)
        FROM pg_statio_user_indexes
        """
    )
    for row in rows:
        total = int(row["hits"]) + int(row["reads"])
        row["hit_ratio_pct"] = round(100.0 * int(row["hits"]) / total, 2) if total else None
        if total < t.cache_min_blocks:
            row["status"] = HealthStatus.OK
            row["note"] = f"only {total} block reads so far; too few to judge"
        else:
            row["status"] = level(
                row["hit_ratio_pct"],
                t.cache_hit_warning_pct,
                t.cache_hit_critical_pct,
                higher_is_worse=False,
            )
    result.details = rows
    summary = ", ".join(f"{r['scope']} {r['hit_ratio_pct']}%" for r in rows)
    return result.conclude(
        not_ok(rows),
        found=summary,
        clean=summary,
        advice="The working set does not fit in shared_buffers: add memory (shared_buffers "
        "~25% of RAM), drop unused indexes, or fix queries that scan whole tables.",
    )


def check_table_bloat(ctx: Context) -> HealthCheck:
    t = ctx.thresholds
    result = HealthCheck(name="table-bloat", title="Table bloat (estimated from statistics)")
    rows = table_bloat(ctx.conn, int(t.table_bloat_min_mb * MB))
    findings = not_ok(
        rate(rows, "bloat_pct", t.table_bloat_warning_pct, t.table_bloat_critical_pct)
    )
    wasted = sum(r["wasted_bytes"] for r in findings)
    return result.conclude(
        findings,
        found=f"{len(findings)} bloated table(s), about {wasted / MB:.1f} MB wasted",
        clean="no table over the bloat threshold",
        advice="VACUUM makes the space reusable; only VACUUM FULL (`dbops vacuum --full "
        "--table ...`, locks the table) or pg_repack gives it back to the operating system.",
    )


def check_dead_tuples(ctx: Context) -> HealthCheck:
    t = ctx.thresholds
    result = HealthCheck(name="dead-tuples", title="Tables that need VACUUM (dead tuples)")
    tables = [
        a for a in table_activity(ctx.conn) if a.needs_vacuum(t.dead_tuple_ratio, t.dead_tuple_min)
    ]
    tables.sort(key=lambda a: (-a.dead_bytes, a.schema, a.table))
    findings = [
        {
            "schema": a.schema,
            "table": a.table,
            "dead_tuples": a.dead_tuples,
            "live_tuples": a.live_tuples,
            "dead_pct": round(100 * a.dead_ratio, 1),
            "last_vacuum": a.last_vacuum,
        }
        for a in tables
    ]
    return result.conclude(
        findings,
        found=f"{len(findings)} table(s) with more than {100 * t.dead_tuple_ratio:g}% dead tuples",
        clean="autovacuum keeps up",
        advice="Run `dbops vacuum`; check autovacuum settings of these tables.",
    )


def check_invalid_constraints(ctx: Context) -> HealthCheck:
    result = HealthCheck(
        name="invalid-constraints", title="Constraints added NOT VALID, never validated"
    )
    findings = ctx.rows(
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
    return result.conclude(
        findings,
        found=f"{len(findings)} constraint(s) not validated",
        clean="every constraint is validated",
        advice="ALTER TABLE ... VALIDATE CONSTRAINT ... (takes no write lock).",
    )


def check_replication_slots(ctx: Context) -> HealthCheck:
    t = ctx.thresholds
    result = HealthCheck(name="replication-slots", title="Replication slots holding WAL")
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
        row["status"] = HealthStatus.WARNING if big or not row["active"] else HealthStatus.OK
    result.details = rows
    findings = not_ok(rows)
    return result.conclude(
        findings,
        found=f"{len(findings)} slot(s) inactive or holding much WAL",
        clean=f"{len(rows)} replication slot(s), all active",
        advice="An abandoned slot keeps WAL forever and fills the disk: "
        "SELECT pg_drop_replication_slot('name') if its consumer is gone.",
    )

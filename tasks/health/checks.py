"""Which health checks exist, in report order, and running them on one read-only connection."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import psycopg

from tasks.core.errors import ParameterError, first_line
from tasks.core.postgres import ConnInfo
from tasks.health.indexes import (
    check_duplicate_indexes,
    check_index_bloat,
    check_index_sizes,
    check_invalid_indexes,
    check_unused_indexes,
)
from tasks.health.model import Context, HealthCheck, HealthStatus, HealthThresholds, PoolSettings
from tasks.health.queries import check_sequential_scans, check_slow_queries
from tasks.health.sessions import (
    check_blocking,
    check_connection_pool,
    check_connections,
    check_idle_in_transaction,
    check_long_queries,
)
from tasks.health.tables import (
    check_cache_hit_ratio,
    check_dead_tuples,
    check_invalid_constraints,
    check_replication_slots,
    check_sequences,
    check_table_bloat,
    check_wraparound,
)

CHECKS: dict[str, Callable[[Context], HealthCheck]] = {
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
        raise ParameterError(
            "checks", f"has unknown health check(s) {unknown}; choose from {', '.join(CHECKS)}"
        )
    return list(dict.fromkeys(names))


def run_checks(
    info: ConnInfo,
    thresholds: HealthThresholds,
    pool: PoolSettings,
    names: list[str] | None = None,
    top_n: int = 10,
) -> list[HealthCheck]:
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
                    HealthCheck(
                        name=name,
                        title=name,
                        status=HealthStatus.WARNING,
                        summary=f"check could not run: {message}",
                        findings=[{"error": message}],
                    )
                )
    return results

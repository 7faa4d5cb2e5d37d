"""Checks of sessions: connections in use, idle transactions, long statements, lock waits, and
the application's pool settings against what the server allows."""

from __future__ import annotations

from typing import Any

from tasks.core.statistics import blocking_pairs, redact_sql, seconds
from tasks.health.model import Context, HealthCheck, HealthStatus, level, not_ok, rate, worst


def usable_connections(ctx: Context) -> tuple[int, int]:
    """(max_connections, connections a non-superuser can open before 'too many connections')."""
    max_conn = int(ctx.setting("max_connections") or 100)
    reserved = int(ctx.setting("superuser_reserved_connections") or 0)
    reserved += int(ctx.setting("reserved_connections") or 0)
    return max_conn, max(max_conn - reserved, 1)


def check_connections(ctx: Context) -> HealthCheck:
    t = ctx.thresholds
    result = HealthCheck(name="connections", title="Connections by state against max_connections")
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
    if result.status != HealthStatus.OK:
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


def _aged_sessions(
    ctx: Context,
    ages: dict[str, str],
    where: str,
    since: str,
    warning: float,
    critical: float,
    columns: str = "",
) -> list[dict[str, Any]]:
    """This database's other sessions matching `where` for at least `warning` seconds after
    the timestamp column `since`, oldest first: their ages in seconds (`ages`: name ->
    timestamp column; the first one rates the session) and their query, redacted."""
    age_columns = ", ".join(
        f"extract(epoch FROM clock_timestamp() - {column}) AS {name}"
        for name, column in ages.items()
    )
    rows = ctx.rows(
        f"""
        SELECT pid, usename AS user, application_name AS application, state, {columns}
               {age_columns}, query
        FROM pg_stat_activity
        WHERE datname = current_database() AND pid <> pg_backend_pid() AND {where}
          AND clock_timestamp() - {since} >= make_interval(secs => %s)
        ORDER BY {since}
        """,
        [warning],
    )
    for row in rows:
        row["query"] = redact_sql(row["query"])
        for name in ages:
            row[name] = seconds(row[name])
    return rate(rows, next(iter(ages)), warning, critical)


def check_idle_in_transaction(ctx: Context) -> HealthCheck:
    t = ctx.thresholds
    result = HealthCheck(name="idle-in-transaction", title="Sessions idle in a transaction")
    rows = _aged_sessions(
        ctx,
        {"idle_seconds": "state_change", "transaction_seconds": "xact_start"},
        "state LIKE 'idle in transaction%%'",
        "state_change",
        t.idle_in_transaction_warning_seconds,
        t.idle_in_transaction_critical_seconds,
    )
    return result.conclude(
        rows,
        found=f"{len(rows)} session(s) idle in transaction for more than "
        f"{t.idle_in_transaction_warning_seconds:g} s",
        clean="no session idle in a transaction",
        advice="An open transaction holds locks and stops VACUUM from removing dead rows: fix "
        "the app (commit/rollback) or set idle_in_transaction_session_timeout.",
    )


def check_long_queries(ctx: Context) -> HealthCheck:
    t = ctx.thresholds
    result = HealthCheck(name="long-running-queries", title="Long-running queries")
    rows = _aged_sessions(
        ctx,
        {"seconds": "query_start"},
        "backend_type = 'client backend' AND state NOT LIKE 'idle%%'",
        "query_start",
        t.long_query_warning_seconds,
        t.long_query_critical_seconds,
        columns="wait_event_type, wait_event,",
    )
    return result.conclude(
        rows,
        found=f"{len(rows)} statement(s) running for more than {t.long_query_warning_seconds:g} s",
        clean="no long-running statement",
        advice="EXPLAIN (ANALYZE, BUFFERS) the statement; cancel it with "
        "SELECT pg_cancel_backend(pid) if it must stop; set statement_timeout for the app.",
    )


def check_blocking(ctx: Context) -> HealthCheck:
    t = ctx.thresholds
    result = HealthCheck(
        name="blocking", title="Blocked sessions and what blocks them (pg_blocking_pids)"
    )
    rows = blocking_pairs(ctx.conn, ctx.conn.info.server_version // 10000)
    for row in rows:
        row.pop("blocking_backend_start", None)
    rate(rows, "waiting_seconds", t.blocked_warning_seconds, t.blocked_critical_seconds)
    result.details = rows
    findings = not_ok(rows)
    heads = sorted({r["blocking_pid"] for r in findings if r["blocking_is_head"]})
    return result.conclude(
        findings,
        found=f"{len({r['blocked_pid'] for r in findings})} session(s) blocked for more than "
        f"{t.blocked_warning_seconds:g} s; chain head pid(s) {heads}",
        clean=f"{len(rows)} short lock wait(s)" if rows else "no blocked session",
        advice="Commit or roll back the blocking transaction; as a last resort run "
        "`dbops terminate-blocking --yes` (pg_terminate_backend on the chain head).",
    )


def check_connection_pool(ctx: Context) -> HealthCheck:
    t = ctx.thresholds
    pool = ctx.pool
    result = HealthCheck(
        name="connection-pool", title="The app's pool settings against max_connections"
    )
    max_conn, usable = usable_connections(ctx)
    detail: dict[str, Any] = {
        "connection_limit": pool.connection_limit,
        "app_instances": pool.app_instances,
        "max_connections": max_conn,
        "usable_connections": usable,
        "pgbouncer": pool.pgbouncer,
    }
    result.details = [detail]
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
                "status": HealthStatus.WARNING,
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
        status = (
            HealthStatus.CRITICAL
            if planned > usable
            else level(pct, t.pool_warning_pct, float("inf"))
        )
        if status != HealthStatus.OK:
            findings.append(
                {
                    "problem": f"the app's pools can open {planned} of {usable} connections",
                    "fix": "lower connection_limit, raise max_connections, or add PgBouncer",
                    "status": status,
                    **detail,
                }
            )
    result.findings = findings
    result.status = worst(f["status"] for f in findings)
    result.advice = (
        "The guide: connection_limit=10 for one instance, 5 per instance for three, "
        "PgBouncer (transaction pooling) from ten instances on."
    )
    return result

"""What a health check is: its status, verdict, thresholds and the read-only context it runs in.

Every threshold lives in HealthThresholds, so a deployment parameter can
change it. A check turns catalog rows into findings (each naming the schema,
table, index, pid or query it is about) and findings into a status.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg
from pydantic import BaseModel, Field

from tasks.core.errors import ConfigError
from tasks.core.postgres import ConnInfo
from tasks.core.statistics import dict_rows

PGBOUNCER_PORT = "6432"


class HealthStatus(StrEnum):
    """A check's verdict, mildest first; compares equal to its string."""

    OK = "ok"
    WARNING = "warning"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        return list(HealthStatus).index(self)


def worst(statuses: Iterable[str]) -> HealthStatus:
    return max((HealthStatus(s) for s in statuses), key=lambda s: s.rank, default=HealthStatus.OK)


def level(
    value: float, warning: float, critical: float, higher_is_worse: bool = True
) -> HealthStatus:
    if higher_is_worse:
        crossed_critical, crossed_warning = value >= critical, value >= warning
    else:
        crossed_critical, crossed_warning = value <= critical, value <= warning
    if crossed_critical:
        return HealthStatus.CRITICAL
    return HealthStatus.WARNING if crossed_warning else HealthStatus.OK


def rate(
    rows: list[dict[str, Any]], key: str, warning: float, critical: float
) -> list[dict[str, Any]]:
    """Give each row the status its `key` value earns; returns the rows."""
    for row in rows:
        row["status"] = level(row[key], warning, critical)
    return rows


def not_ok(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if r["status"] != HealthStatus.OK]


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


class HealthCheck(BaseModel):
    """One check's verdict: status, the findings that explain it, details for the report."""

    name: str
    title: str
    status: HealthStatus = HealthStatus.OK
    summary: str = ""
    advice: str = ""
    findings: list[dict[str, Any]] = Field(default_factory=list)
    details: list[dict[str, Any]] = Field(default_factory=list)

    def conclude(
        self, findings: list[dict[str, Any]], found: str, clean: str, advice: str
    ) -> HealthCheck:
        """Findings decide: the worst of their statuses (warning when they carry none), the
        summary of what was found or that all is well, and advice only when something was."""
        self.findings = findings
        self.status = worst(f.get("status", HealthStatus.WARNING) for f in findings)
        self.summary = found if findings else clean
        self.advice = advice if findings else ""
        return self


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
                raise ConfigError(
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
    """A read-only connection and what every check may consult."""

    conn: psycopg.Connection
    thresholds: HealthThresholds
    pool: PoolSettings
    top_n: int = 10

    def rows(self, query: str, params: object = None) -> list[dict[str, Any]]:
        return dict_rows(self.conn, query, params)

    def value(self, query: str, params: object = None) -> Any:
        row = self.conn.execute(query, params).fetchone()  # type: ignore[arg-type]
        return row[0] if row else None

    def setting(self, name: str) -> str | None:
        return self.value("SELECT current_setting(%s, true)", [name])

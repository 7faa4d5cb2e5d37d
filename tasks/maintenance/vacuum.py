"""VACUUM and ANALYZE where they pay off, one table at a time.

Targeted by default: the tables whose dead tuples or changes since the last
ANALYZE cross a threshold, biggest payoff first, within an optional time
budget; every table when asked (the guide's `vacuumdb -z`). VACUUM FULL runs
only on what was chosen, under a lock_timeout, so it never queues behind (and
in front of) the application's locks for long.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field

from tasks.core.errors import ConfigError, NotFoundError
from tasks.core.postgres import ConnInfo
from tasks.core.statistics import MB, TableActivity, table_activity
from tasks.maintenance.outcome import (
    ItemRunner,
    ItemStatus,
    Outcome,
    maintenance_session,
    qualified,
    regclass,
    sql_name_forms,
)


class Mode(StrEnum):
    VACUUM = "vacuum"
    ANALYZE = "analyze"


class VacuumThresholds(BaseModel):
    """When a table needs VACUUM or ANALYZE (autovacuum's own rule, made explicit)."""

    dead_ratio: float = Field(0.1, ge=0, le=1, description="dead / (live + dead) tuples")
    min_dead_tuples: int = Field(1000, ge=0, description="ignore fewer dead tuples")
    analyze_ratio: float = Field(0.1, ge=0, description="changes since ANALYZE / live tuples")
    min_modifications: int = Field(1000, ge=0, description="ignore fewer changes")


class TableJob(BaseModel):
    """Which tables a run looks at and what it does to them."""

    mode: Mode
    all_tables: bool = False
    tables: list[str] | None = None
    thresholds: VacuumThresholds = Field(default_factory=VacuumThresholds)
    full: bool = False

    @property
    def kind(self) -> str:
        """The run's name in reports and artifact keys."""
        return "vacuum-full" if self.full else str(self.mode)


@dataclass
class TableCandidate(TableActivity):
    """A table chosen for this run, why, and what doing it is worth."""

    reason: str = ""
    needs_vacuum: bool = False
    payoff: float = 0.0

    @classmethod
    def of(cls, activity: TableActivity, reason: str, needs_vacuum: bool) -> TableCandidate:
        # Payoff: bytes a VACUUM can reclaim; for ANALYZE-only tables, the share of changed rows.
        payoff = (
            activity.dead_bytes
            if needs_vacuum
            else activity.modifications / max(activity.live_tuples, 1)
        )
        base = {f.name: getattr(activity, f.name) for f in fields(TableActivity)}
        return cls(**base, reason=reason, needs_vacuum=needs_vacuum, payoff=payoff)

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"


def _candidate(a: TableActivity, t: VacuumThresholds, mode: Mode) -> TableCandidate | None:
    reasons = []
    needs_vacuum = mode == Mode.VACUUM and a.needs_vacuum(t.dead_ratio, t.min_dead_tuples)
    if needs_vacuum:
        reasons.append(f"dead tuples {100 * a.dead_ratio:.0f}%")
    mods = a.modifications
    if a.last_analyze is None and a.live_tuples + mods > 0:
        reasons.append("never analyzed")
    elif mods >= max(t.min_modifications, 1) and mods / max(a.live_tuples, 1) >= t.analyze_ratio:
        reasons.append(f"{mods} changes since last analyze")
    if not reasons:
        return None
    return TableCandidate.of(a, "; ".join(reasons), needs_vacuum)


def _order(candidates: list[TableCandidate]) -> list[TableCandidate]:
    """Tables to vacuum by reclaimable bytes, then tables to analyze by share of changes."""
    return sorted(candidates, key=lambda c: (not c.needs_vacuum, -c.payoff, c.schema, c.table))


def resolve_tables(conn: psycopg.Connection, names: list[str]) -> list[int]:
    """Table names as given -> oids; a clear error for the first one not found."""
    oids = []
    for name in names:
        oid = next((o for form in sql_name_forms(conn, name) if (o := regclass(conn, form))), None)
        if oid is None:
            raise NotFoundError(f"table {name!r} not found; give it as schema.table")
        oids.append(oid)
    return oids


def vacuum_candidates(
    conn: psycopg.Connection,
    thresholds: VacuumThresholds,
    mode: Mode = Mode.VACUUM,
    all_tables: bool = False,
    tables: list[str] | None = None,
) -> list[TableCandidate]:
    """The tables to process, biggest payoff first."""
    activity = table_activity(conn)
    vacuum = mode == Mode.VACUUM
    if tables:
        wanted = resolve_tables(conn, tables)
        by_oid = {a.oid: a for a in activity}
        missing = [n for n, oid in zip(tables, wanted, strict=True) if oid not in by_oid]
        if missing:
            raise ConfigError(f"{missing} are not user tables; give ordinary tables (schema.table)")
        picked = [TableCandidate.of(by_oid[oid], "requested", vacuum) for oid in wanted]
        return list({c.oid: c for c in picked}.values())
    if all_tables:
        return _order([TableCandidate.of(a, "all tables", vacuum) for a in activity])
    return _order([c for a in activity if (c := _candidate(a, thresholds, mode)) is not None])


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


def maintenance_statement(
    candidate: TableCandidate, mode: Mode, full: bool
) -> tuple[str, sql.Composable]:
    """(what the report calls it, the statement) for one table."""
    target = qualified(candidate.schema, candidate.table)
    if mode == Mode.VACUUM and full:
        return "VACUUM (FULL, ANALYZE)", sql.SQL("VACUUM (FULL, ANALYZE) {}").format(target)
    if mode == Mode.VACUUM and candidate.needs_vacuum:
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
    with maintenance_session(info, "dbops-maintenance", lock_timeout_seconds) as conn:
        runner = ItemRunner(conn, lock_timeout_seconds, time_budget_seconds)
        for candidate, outcome in zip(plan, outcomes, strict=True):
            if not runner.due(outcome):
                continue
            outcome.before = _table_state(conn, candidate.oid) or outcome.before
            warnings = runner.execute(maintenance_statement(candidate, mode, full)[1], outcome)
            if outcome.state is ItemStatus.LOCKED:
                outcome.note = "another session holds a conflicting lock; run again later"
            skipped = [m for m in warnings if "skipping" in m]  # the server's own wording
            if outcome.state is ItemStatus.DONE and skipped:
                outcome.end(ItemStatus.SKIPPED, skipped[0])
            outcome.after = _table_state(conn, candidate.oid)
    return outcomes

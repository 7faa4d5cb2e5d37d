"""The last resort: pg_terminate_backend on the sessions at the head of lock chains that have
kept others waiting long enough, only when confirmed, each re-checked right before."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field, computed_field

from tasks.core.errors import first_line
from tasks.core.postgres import ConnInfo
from tasks.core.statistics import blocking_pairs, redact_sql


class SessionAction(StrEnum):
    """What was done about a blocking session."""

    PLANNED = "planned"
    LEFT_ALONE = "left alone"
    WOULD_TERMINATE = "would terminate"
    NOT_TERMINATED = "not terminated"
    TERMINATED = "terminated"
    FAILED = "failed"


class BlockingSession(BaseModel):
    """The head of a lock chain, whom it keeps waiting, and what was done about it."""

    pid: int
    user: str | None
    application: str | None
    state: str | None
    transaction_seconds: float
    query: str
    blocked_pids: list[int]
    longest_wait_seconds: float
    backend_start: Any = Field(None, exclude=True)
    outcome: SessionAction = Field(SessionAction.PLANNED, exclude=True)
    detail: str = Field("", exclude=True)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def action(self) -> str:
        """As the report shows it: 'terminated', 'failed: <why>', 'would terminate (...)'."""
        if self.outcome is SessionAction.WOULD_TERMINATE:
            return f"{self.outcome} ({self.detail})"
        return f"{self.outcome}: {self.detail}" if self.detail else str(self.outcome)

    def end(self, outcome: SessionAction, detail: str = "") -> None:
        self.outcome, self.detail = outcome, detail


class TerminationReport(BaseModel):
    """The result of terminate-blocking."""

    confirmed: bool
    min_blocked_seconds: float
    terminated: list[BlockingSession]
    sessions: list[BlockingSession]

    @classmethod
    def of(
        cls, confirmed: bool, min_blocked_seconds: float, sessions: list[BlockingSession]
    ) -> TerminationReport:
        return cls(
            confirmed=confirmed,
            min_blocked_seconds=min_blocked_seconds,
            terminated=[s for s in sessions if s.outcome is SessionAction.TERMINATED],
            sessions=sessions,
        )


def blocking_heads(conn: psycopg.Connection, min_blocked_seconds: float) -> list[BlockingSession]:
    """Sessions at the head of a lock chain that has kept others waiting long enough."""
    pairs = blocking_pairs(conn, conn.info.server_version // 10000)
    heads: dict[int, BlockingSession] = {}
    for pair in pairs:
        if not pair["blocking_is_head"] or pair["waiting_seconds"] < min_blocked_seconds:
            continue
        head = heads.get(pair["blocking_pid"])
        if head is None:
            head = heads[pair["blocking_pid"]] = BlockingSession(
                pid=pair["blocking_pid"],
                user=pair["blocking_user"],
                application=pair["blocking_application"],
                state=pair["blocking_state"],
                transaction_seconds=pair["blocking_transaction_seconds"],
                query=redact_sql(pair["blocking_query"]),
                blocked_pids=[],
                longest_wait_seconds=0.0,
                backend_start=pair["blocking_backend_start"],
            )
            if pair["blocking_backend_type"] != "client backend":
                head.end(
                    SessionAction.LEFT_ALONE,
                    f"{pair['blocking_backend_type']} is not a client session",
                )
        head.blocked_pids.append(pair["blocked_pid"])
        head.longest_wait_seconds = max(head.longest_wait_seconds, pair["waiting_seconds"])
    return sorted(heads.values(), key=lambda h: -h.longest_wait_seconds)


def terminate_blocking_sessions(
    info: ConnInfo, min_blocked_seconds: float, confirm: bool
) -> list[BlockingSession]:
    """pg_terminate_backend on each chain head, only when confirmed, re-checking it first."""
    with info.connect() as conn:
        conn.execute("SET application_name = 'dbops-terminate-blocking'")
        heads = blocking_heads(conn, min_blocked_seconds)
        with_timeout = conn.info.server_version >= 140000
        for head in heads:
            if head.outcome is not SessionAction.PLANNED:
                continue
            if not confirm:
                head.end(SessionAction.WOULD_TERMINATE, "confirmation not given")
                continue
            terminate = sql.SQL(
                "pg_terminate_backend(%s, 5000)" if with_timeout else "pg_terminate_backend(%s)"
            )
            query = sql.SQL(
                """
                SELECT {} FROM pg_stat_activity a
                WHERE a.pid = %s AND a.backend_start = %s
                  AND EXISTS (SELECT 1 FROM pg_stat_activity w
                              WHERE a.pid = ANY(pg_blocking_pids(w.pid)))
                """
            ).format(terminate)
            try:
                row = conn.execute(query, [head.pid, head.pid, head.backend_start]).fetchone()
            except psycopg.Error as exc:
                head.end(SessionAction.FAILED, first_line(exc))
                continue
            if row is None:
                head.end(SessionAction.NOT_TERMINATED, "it no longer blocks anyone")
            elif row[0]:
                head.end(SessionAction.TERMINATED)
            else:
                head.end(SessionAction.FAILED, "pg_terminate_backend returned false")
    return heads

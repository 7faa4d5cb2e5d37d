"""What happened to each table or index of a maintenance run, and how items are run: one at a
time on one connection, under a lock_timeout, within an optional time budget."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import psycopg
from psycopg import sql
from pydantic import BaseModel

from tasks.core.errors import first_line
from tasks.core.postgres import ConnInfo


class ItemStatus(StrEnum):
    """Where an item of a maintenance run ended."""

    PLANNED = "planned"
    DONE = "done"
    SKIPPED = "skipped"
    LOCKED = "locked"
    FAILED = "failed"


class RunLimits(BaseModel):
    """How a run spares the application: lock waits, time budget, the database's slot."""

    lock_timeout_seconds: float = 5.0
    time_budget_seconds: float | None = None
    slot_wait_seconds: float = 3600

    @classmethod
    def of(
        cls,
        lock_timeout_seconds: float,
        time_budget_minutes: float | None,
        slot_wait_seconds: float,
    ) -> RunLimits:
        return cls(
            lock_timeout_seconds=lock_timeout_seconds,
            time_budget_seconds=time_budget_minutes * 60 if time_budget_minutes else None,
            slot_wait_seconds=slot_wait_seconds,
        )


@dataclass
class Outcome:
    """One row of the run's table artifact."""

    target: str
    action: str
    reason: str
    state: ItemStatus = ItemStatus.PLANNED
    detail: str = ""
    seconds: float = 0.0
    before: dict[str, Any] = field(default_factory=dict)
    after: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    @property
    def status(self) -> str:
        """The state as the report shows it: 'done', 'locked: lock not granted within 5 s'."""
        return f"{self.state}: {self.detail}" if self.detail else str(self.state)

    @property
    def failed(self) -> bool:
        return self.state in (ItemStatus.FAILED, ItemStatus.LOCKED)

    def end(self, state: ItemStatus, detail: str = "") -> None:
        self.state, self.detail = state, detail

    def row(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "target": self.target,
            "action": self.action,
            "reason": self.reason,
            "status": self.status,
            "seconds": self.seconds,
            "note": self.note,
        }
        data.update({f"{k}_before": v for k, v in self.before.items()})
        data.update({f"{k}_after": v for k, v in self.after.items()})
        return data


class _ServerWarnings:
    """Collects the server's WARNINGs of one statement (VACUUM skips tables it may not touch)."""

    def __init__(self, conn: psycopg.Connection) -> None:
        self.messages: list[str] = []
        self.conn = conn

    def __call__(self, diag: psycopg.errors.Diagnostic) -> None:
        if diag.severity_nonlocalized == "WARNING" and diag.message_primary:
            self.messages.append(diag.message_primary)

    def __enter__(self) -> _ServerWarnings:
        self.conn.add_notice_handler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.remove_notice_handler(self)


class ItemRunner:
    """Runs planned items in order; once the budget is spent no new item starts.

    The first item always runs, however small the budget. A statement whose
    lock is not granted within lock_timeout is given up, not waited for: a
    waiting VACUUM FULL or REINDEX would queue every other query behind it.
    """

    def __init__(
        self, conn: psycopg.Connection, lock_timeout_seconds: float, budget_seconds: float | None
    ) -> None:
        self.conn = conn
        self.lock_timeout_seconds = lock_timeout_seconds
        self.deadline = time.monotonic() + budget_seconds if budget_seconds else None
        self.started_any = False

    def due(self, outcome: Outcome) -> bool:
        """Whether to run this item now; marks it skipped when the budget is spent."""
        if outcome.state is not ItemStatus.PLANNED:
            return False  # the plan already decided (an index that cannot be rebuilt online)
        if self.started_any and self.deadline is not None and time.monotonic() >= self.deadline:
            outcome.end(ItemStatus.SKIPPED, "time budget spent")
            return False
        self.started_any = True
        return True

    def execute(self, statement: sql.Composable, outcome: Outcome) -> list[str]:
        """Run one statement for the item: DONE, LOCKED or FAILED; the server's warnings."""
        started = time.monotonic()
        warnings = _ServerWarnings(self.conn)
        try:
            with warnings:
                self.conn.execute(statement)
        except psycopg.errors.LockNotAvailable:
            outcome.end(
                ItemStatus.LOCKED, f"lock not granted within {self.lock_timeout_seconds:g} s"
            )
        except psycopg.Error as exc:
            outcome.end(ItemStatus.FAILED, first_line(exc))
        else:
            outcome.end(ItemStatus.DONE)
        outcome.seconds = round(time.monotonic() - started, 3)
        return warnings.messages


@contextlib.contextmanager
def maintenance_session(
    info: ConnInfo, application: str, lock_timeout_seconds: float
) -> Iterator[psycopg.Connection]:
    with info.connect() as conn:
        conn.execute(sql.SQL("SET application_name = {}").format(sql.Literal(application)))
        conn.execute(
            sql.SQL("SET lock_timeout = {}").format(
                sql.Literal(f"{int(lock_timeout_seconds * 1000)}ms")
            )
        )
        yield conn


def regclass(conn: psycopg.Connection, text: str) -> int | None:
    """The oid of a relation named as SQL text, or None."""
    try:
        row = conn.execute("SELECT to_regclass(%s)::oid", [text]).fetchone()
    except psycopg.errors.InvalidNameSyntax:
        return None
    return int(row[0]) if row and row[0] is not None else None


def sql_name_forms(conn: psycopg.Connection, name: str) -> list[str]:
    """A name as the user wrote it: SQL syntax, schema.name with raw parts, or one raw name."""
    forms = [name]
    if "." in name:
        schema, _, rel = name.partition(".")
        forms.append(
            sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(rel)).as_string(conn)
        )
    forms.append(sql.Identifier(name).as_string(conn))
    return forms


def qualified(schema: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))

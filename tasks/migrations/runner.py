"""Applying one migration: in its own transaction with its history row, under bounded lock waits.

A migration runs in one transaction together with its row in the history
table, so it is either applied and recorded or neither. One whose first line is
`-- dbops:no-transaction` runs statement by statement outside a transaction
(needed for CREATE INDEX CONCURRENTLY). `lock_timeout` bounds every lock wait;
a lock timeout (SQLSTATE 55P03) or a deadlock is retried with backoff, after
the transaction released every lock it held, so a migration never queues
traffic behind it for long.

A failure raises `MigrationFailed`, which says how much of the migration
committed (nothing for a transactional one; the statements before the failing
one outside a transaction), so the flow restores a backup only when something
changed. The history row of a migration outside a transaction is committed
before its first statement and stays unfinished when it stops part way. When
the run is interrupted (a cancel's SIGTERM), the running statement is cancelled
in the server before the exception goes on, so no transaction is left behind.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum

import psycopg
from pydantic import BaseModel, Field

from tasks.core.errors import DbopsError, first_line
from tasks.core.postgres import ConnInfo
from tasks.migrations.files import NO_TRANSACTION_MARKER, Migration, read_planned
from tasks.migrations.history import ensure_history_table, finish_history, insert_history
from tasks.migrations.statements import Statement, split_statements

# Lock timeout and deadlock: both mean "another session was in the way", worth another try.
RETRY_SQLSTATES = {"55P03": "lock timeout", "40P01": "deadlock"}

Log = Callable[[str], None]
# Runs one statement of a migration: (connection, 1-based index, statement). The rehearsal
# passes one that observes locks and rewrites around the same execution.
Execute = Callable[[psycopg.Connection, int, Statement], object]


def execute_statement(conn: psycopg.Connection, index: int, statement: Statement) -> object:
    return conn.execute(statement.sql.encode())


# The server checks this often that dbops is still connected during a long statement, so a
# killed dbops (SIGKILL, OOM) does not leave a migration's transaction holding its locks.
CLIENT_CHECK_INTERVAL = "1s"


class FailureKind(StrEnum):
    CANNOT_START = "cannot-start"  # its history row could not be written: nothing ran
    LOCK_NOT_GRANTED = "lock-not-granted"  # lock timeouts (or deadlocks) outlasted the retries
    STATEMENT_FAILED = "statement-failed"


class MigrationFailed(DbopsError):
    """One migration failed; `committed_statements` of it committed (always 0 in a transaction)."""

    def __init__(
        self,
        message: str,
        migration_id: str,
        transactional: bool,
        kind: FailureKind,
        committed_statements: int = 0,
    ) -> None:
        super().__init__(message)
        self.migration_id = migration_id
        self.transactional = transactional
        self.kind = kind
        self.committed_statements = committed_statements


def _quiet(_: str) -> None:
    return None


class RunOptions(BaseModel):
    lock_timeout_seconds: float = Field(5.0, gt=0)
    statement_timeout_seconds: float = Field(1800.0, ge=0, description="0: no limit")
    lock_retries: int = Field(5, ge=0)
    retry_delay_seconds: float = Field(1.0, ge=0)
    max_retry_delay_seconds: float = Field(30.0, ge=0)

    def backoff(self, attempt: int) -> float:
        return min(self.retry_delay_seconds * (2**attempt), self.max_retry_delay_seconds)


class AppliedResult(BaseModel):
    id: str
    seconds: float
    statements: int
    transactional: bool
    lock_retries: int = 0


@dataclass(frozen=True)
class _Run:
    """One migration being applied on one connection."""

    conn: psycopg.Connection
    migration: Migration
    applied_by: str
    options: RunOptions
    log: Log
    execute: Execute = execute_statement

    def start(self, local: bool) -> None:
        """Bound lock and statement time, and write the history row (finished_at empty)."""
        settings = [
            ("lock_timeout", _milliseconds(self.options.lock_timeout_seconds)),
            ("statement_timeout", _milliseconds(self.options.statement_timeout_seconds)),
        ]
        if self.conn.info.server_version >= 140000:
            settings.append(("client_connection_check_interval", CLIENT_CHECK_INTERVAL))
        for name, value in settings:
            self.conn.execute("SELECT set_config(%s, %s, %s)", [name, value, local])
        ensure_history_table(self.conn)  # in the migration's transaction: gone if it rolls back
        insert_history(self.conn, self.migration, self.applied_by)

    def failed(
        self, message: str, kind: FailureKind, committed_statements: int = 0
    ) -> MigrationFailed:
        migration = self.migration
        return MigrationFailed(
            message, migration.id, migration.transactional, kind, committed_statements
        )

    def cannot_start(self, exc: psycopg.Error) -> MigrationFailed:
        if isinstance(exc, psycopg.errors.UniqueViolation):
            message = (
                f"migration {self.migration.id} is already recorded as applied (another "
                "migrator ran it just now?); run again to see the new plan"
            )
        else:
            message = f"cannot record migration {self.migration.id}: {_error_text(exc)}"
        return self.failed(message, FailureKind.CANNOT_START)

    def retry_or_raise(
        self, statement: Statement, index: int, exc: psycopg.Error, attempt: int
    ) -> None:
        """Sleep before another attempt, or raise the one-line failure."""
        migration, options = self.migration, self.options
        committed = 0 if migration.transactional else index - 1
        reason = RETRY_SQLSTATES.get(exc.sqlstate or "")
        if reason is None:
            message = _failure(migration, statement, index, exc)
            raise self.failed(message, FailureKind.STATEMENT_FAILED, committed) from None
        if attempt >= options.lock_retries:
            raise self.failed(
                f"migration {migration.id} gave up after {attempt + 1} attempts at statement "
                f"{index} (line {statement.line}: {statement.summary}): {reason} "
                f"({_error_text(exc)}); another session holds a conflicting lock: retry when "
                "traffic is lower, or raise lock_timeout / lock_retries",
                FailureKind.LOCK_NOT_GRANTED,
                committed,
            ) from None
        delay = options.backoff(attempt)
        self.log(
            f"{migration.id}: {reason} at statement {index} (line {statement.line}); attempt "
            f"{attempt + 1} of {options.lock_retries + 1} failed, retrying in {delay:.1f} s"
        )
        time.sleep(delay)


def _milliseconds(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _error_text(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = first_line(exc)
    if diag.sqlstate:
        text = f"{diag.sqlstate} {text}"
    if diag.message_hint:
        text += f" (hint: {diag.message_hint})"
    return text


def _failure(migration: Migration, statement: Statement, index: int, exc: psycopg.Error) -> str:
    where = f"statement {index} (line {statement.line}: {statement.summary})"
    message = f"migration {migration.id} failed at {where}: {_error_text(exc)}"
    if exc.sqlstate == "25001":
        message += f"; make '{NO_TRANSACTION_MARKER}' the first line of {migration.path}"
    elif exc.sqlstate == "57014":
        message += "; it ran longer than statement_timeout, raise it for this migration"
    return message


def apply_migration(
    info: ConnInfo,
    migration: Migration,
    applied_by: str,
    options: RunOptions,
    log: Log = _quiet,
    execute: Execute = execute_statement,
) -> AppliedResult:
    """Apply one migration and record it; retried from its start after a lock timeout.
    `execute` runs each statement (the rehearsal observes them through it)."""
    statements = split_statements(read_planned(migration))
    with info.connect(autocommit=True) as conn, _cancel_when_interrupted(conn):
        conn.add_notice_handler(lambda d: log(f"{migration.id}: {d.severity} {d.message_primary}"))
        run = _Run(conn, migration, applied_by, options, log, execute)
        started = time.perf_counter()
        if migration.transactional:
            retries = _apply_in_transaction(run, statements)
        else:
            retries = _apply_outside_transaction(run, statements)
    return AppliedResult(
        id=migration.id,
        seconds=round(time.perf_counter() - started, 3),
        statements=len(statements),
        transactional=migration.transactional,
        lock_retries=retries,
    )


@contextlib.contextmanager
def _cancel_when_interrupted(conn: psycopg.Connection) -> Iterator[None]:
    """A signal (a cancel's SIGTERM, Ctrl-C) cancels the running statement in the server and
    ends the session, so its transaction rolls back now, not when the statement would end."""
    try:
        yield
    except Exception:
        raise
    except BaseException:
        with contextlib.suppress(Exception):
            conn.cancel_safe(timeout=5)
        with contextlib.suppress(Exception):
            conn.close()
        raise


def _apply_in_transaction(run: _Run, statements: list[Statement]) -> int:
    """All statements and the history row commit together; a lock timeout retries them all.
    Returns how many attempts were retried."""
    conn = run.conn
    attempt = 0
    while True:
        index, current = 0, Statement("", 0)
        try:
            with conn.transaction():
                run.start(local=True)
                for number, statement in enumerate(statements, start=1):
                    index, current = number, statement
                    run.execute(conn, number, statement)
                finish_history(conn, run.migration)
            return attempt
        except psycopg.Error as exc:
            if index == 0:
                raise run.cannot_start(exc) from None
            run.retry_or_raise(current, index, exc, attempt)
        attempt += 1


def _apply_outside_transaction(run: _Run, statements: list[Statement]) -> int:
    """Each statement commits on its own; a lock timeout retries that statement only.
    Returns how many statement attempts were retried."""
    conn = run.conn
    retries = 0
    try:
        run.start(local=False)
    except psycopg.Error as exc:
        raise run.cannot_start(exc) from None
    try:
        for index, statement in enumerate(statements, start=1):
            attempt = 0
            while True:
                try:
                    run.execute(conn, index, statement)
                    break
                except psycopg.Error as exc:
                    run.retry_or_raise(statement, index, exc, attempt)
                    attempt += 1
                    retries += 1
        try:
            finish_history(conn, run.migration)
        except psycopg.Error as exc:
            message = f"migration {run.migration.id} ran but cannot be recorded: {_error_text(exc)}"
            raise run.failed(message, FailureKind.STATEMENT_FAILED, len(statements)) from None
    finally:
        if not conn.closed and not conn.broken:
            with contextlib.suppress(psycopg.Error):  # never hide the migration's own error
                conn.execute("RESET lock_timeout")
                conn.execute("RESET statement_timeout")
    return retries

"""After a migration: is the schema what it should be?

User checks are SQL queries, each run read-only in its own transaction: a check
passes when it returns no rows, or when every row's first value is true (so both
`SELECT id FROM "User" WHERE email IS NULL` and `SELECT count(*) > 0 FROM "User"`
are checks). Built-in checks compare with a baseline taken before the migration:
no index left INVALID (a failed CREATE INDEX CONCURRENTLY leaves one behind) and
no constraint left NOT VALID that was not so before.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psycopg
from pydantic import BaseModel, Field

from tasks.core.errors import DbopsError, ParameterError, first_line
from tasks.core.postgres import ConnInfo
from tasks.core.settings import Settings
from tasks.migrations.command import run_command
from tasks.migrations.statements import split_statements

MAX_ROWS = 1000


class CheckResult(BaseModel):
    name: str
    ok: bool
    detail: str = ""


class SchemaBaseline(BaseModel):
    """Objects already broken before the migration, which it is not blamed for."""

    invalid_indexes: list[str] = Field(default_factory=list)
    not_valid_constraints: list[str] = Field(default_factory=list)


def invalid_indexes(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        """
        SELECT format('%I.%I', n.nspname, c.relname)
        FROM pg_index i
        JOIN pg_class c ON c.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT i.indisvalid
        ORDER BY 1
        """
    ).fetchall()
    return [r[0] for r in rows]


def not_valid_constraints(conn: psycopg.Connection) -> list[str]:
    rows = conn.execute(
        """
        SELECT format('%I on %s', conname,
                      CASE WHEN conrelid <> 0 THEN conrelid::regclass::text
                           ELSE 'domain ' || contypid::regtype::text END)
        FROM pg_constraint
        WHERE NOT convalidated
        ORDER BY 1
        """
    ).fetchall()
    return [r[0] for r in rows]


def capture_baseline(info: ConnInfo) -> SchemaBaseline:
    with info.connect() as conn:
        return SchemaBaseline(
            invalid_indexes=invalid_indexes(conn), not_valid_constraints=not_valid_constraints(conn)
        )


def builtin_checks(info: ConnInfo, baseline: SchemaBaseline) -> list[CheckResult]:
    with info.connect() as conn:
        new_invalid = sorted(set(invalid_indexes(conn)) - set(baseline.invalid_indexes))
        new_not_valid = sorted(
            set(not_valid_constraints(conn)) - set(baseline.not_valid_constraints)
        )
    return [
        CheckResult(
            name="no invalid indexes",
            ok=not new_invalid,
            detail=(
                f"invalid index {', '.join(new_invalid)} (a failed CREATE INDEX CONCURRENTLY?)"
                if new_invalid
                else ""
            ),
        ),
        CheckResult(
            name="no NOT VALID constraints",
            ok=not new_not_valid,
            detail=(
                f"constraint {', '.join(new_not_valid)} is NOT VALID; add "
                "ALTER TABLE ... VALIDATE CONSTRAINT to the migration"
                if new_not_valid
                else ""
            ),
        ),
    ]


def _passes(rows: list[tuple]) -> bool:
    return all(row and row[0] is True for row in rows)


def _shown(row: tuple) -> str:
    text = repr(row[0]) if len(row) == 1 else repr(tuple(row))
    return text if len(text) <= 120 else text[:117] + "..."


def read_checks_file(path: str) -> str:
    file = Path(path).expanduser()
    if not file.is_file():
        raise ParameterError(
            "verify_sql", f"file {path!r} does not exist; pass a file of SQL queries"
        )
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ParameterError("verify_sql", f"file {path!r} is not UTF-8 text") from None


def sql_checks(
    info: ConnInfo, text: str, source: str, statement_timeout_seconds: float = 60
) -> list[CheckResult]:
    """Run every query of text read-only; one result per query."""
    statements = split_statements(text)
    if not statements:
        raise DbopsError(f"{source} holds no SQL query; write one check per statement")
    results = []
    with info.connect() as conn:
        for number, statement in enumerate(statements, start=1):
            name = f"{source} check {number} (line {statement.line}: {statement.summary})"
            try:
                with conn.transaction():
                    conn.execute("SET TRANSACTION READ ONLY")
                    conn.execute(
                        "SELECT set_config('statement_timeout', %s, true)",
                        [f"{round(statement_timeout_seconds * 1000)}ms"],
                    )
                    cursor = conn.execute(statement.sql.encode())
                    if cursor.description is None:
                        results.append(CheckResult(name=name, ok=False, detail="not a query"))
                        continue
                    rows = cursor.fetchmany(MAX_ROWS)
            except psycopg.Error as exc:
                detail = first_line(exc)
                results.append(CheckResult(name=name, ok=False, detail=f"error: {detail}"))
                continue
            if _passes(rows):
                results.append(CheckResult(name=name, ok=True))
            else:
                bad = next(row for row in rows if not (row and row[0] is True))
                results.append(CheckResult(name=name, ok=False, detail=f"returned {_shown(bad)}"))
    return results


def failure_summary(results: list[CheckResult]) -> str | None:
    """One line naming every failed check, or None when all passed."""
    failed = [r for r in results if not r.ok]
    if not failed:
        return None
    parts = "; ".join(f"{r.name}: {r.detail}" for r in failed)
    return f"verification failed ({len(failed)} of {len(results)} checks): {parts}"


def run_checks(
    settings: Settings,
    baseline: SchemaBaseline,
    builtin: bool,
    checks_sql: str | None,
    checks_source: str,
    verify_command: str | None,
    workdir: str | None,
    timeout_seconds: float,
    log: Callable[[str], None],
) -> list[CheckResult]:
    """Every check on the database `settings` names, all of them run (production after a
    migration, or the rehearsal's copy); failures are results, not raised."""
    info = settings.connection()
    results: list[CheckResult] = []
    if builtin:
        results += builtin_checks(info, baseline)
    if checks_sql is not None:
        results += sql_checks(info, checks_sql, checks_source)
    if verify_command:
        try:
            run_command(verify_command, settings, workdir, timeout_seconds, log, "verify_command")
            results.append(CheckResult(name=f"verify command {verify_command!r}", ok=True))
        except DbopsError as exc:
            results.append(CheckResult(name="verify command", ok=False, detail=str(exc)))
    return results

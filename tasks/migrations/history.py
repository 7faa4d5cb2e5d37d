"""What a database says was applied: dbops' own history table, and Prisma's.

`public.dbops_schema_history` has one row per migration (SHA-256, started and
finished times, the Prefect run that applied it). A transactional migration's
row commits with its changes, so it is either applied and recorded or neither.
A migration outside a transaction commits its row (finished_at NULL) before its
first statement and finishes it after its last: a row left unfinished means it
stopped part way, and runs are refused until an operator has checked the
database and removed the row (`delete_unfinished`, the flow's repair).
Prisma's `_prisma_migrations` is read only, for teams moving over from
`prisma migrate deploy`, whose applied migrations must not run a second time.
"""

from __future__ import annotations

import psycopg
from psycopg import sql
from pydantic import BaseModel

from tasks.migrations.files import Migration

HISTORY_SCHEMA = "public"
HISTORY_TABLE = "dbops_schema_history"
PRISMA_HISTORY = "_prisma_migrations"


class AppliedMigration(BaseModel):
    id: str
    checksum: str
    started_at: str
    finished_at: str | None
    applied_by: str


def _table(schema: str, table: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(table))


def _table_exists(conn: psycopg.Connection, schema: str, table: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", [f'"{schema}"."{table}"']).fetchone()
    return bool(row and row[0])


def history_name() -> sql.Composed:
    return _table(HISTORY_SCHEMA, HISTORY_TABLE)


def read_history(conn: psycopg.Connection) -> list[AppliedMigration]:
    """What the history table says; an absent table means nothing was applied yet."""
    if not _table_exists(conn, HISTORY_SCHEMA, HISTORY_TABLE):
        return []
    rows = conn.execute(
        sql.SQL(
            "SELECT id, checksum, started_at::text, finished_at::text, applied_by "
            "FROM {} ORDER BY started_at, id"
        ).format(history_name())
    ).fetchall()
    return [
        AppliedMigration(id=r[0], checksum=r[1], started_at=r[2], finished_at=r[3], applied_by=r[4])
        for r in rows
    ]


def read_prisma_history(conn: psycopg.Connection, schema: str) -> dict[str, bool]:
    """Prisma's own record: migration name -> finished (not rolled back)."""
    if not _table_exists(conn, schema, PRISMA_HISTORY):
        return {}
    rows = conn.execute(
        sql.SQL(
            "SELECT migration_name, bool_or(finished_at IS NOT NULL) FROM {} "
            "WHERE rolled_back_at IS NULL GROUP BY migration_name"
        ).format(_table(schema, PRISMA_HISTORY))
    ).fetchall()
    return {name: bool(finished) for name, finished in rows}


def ensure_history_table(conn: psycopg.Connection) -> None:
    conn.execute(
        sql.SQL(
            """
            CREATE TABLE IF NOT EXISTS {} (
                id text PRIMARY KEY,
                checksum text NOT NULL,
                started_at timestamptz NOT NULL,
                finished_at timestamptz,
                execution_ms integer,
                applied_by text NOT NULL,
                transactional boolean NOT NULL
            )
            """
        ).format(history_name())
    )


def insert_history(conn: psycopg.Connection, migration: Migration, applied_by: str) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, checksum, started_at, applied_by, transactional) "
            "VALUES (%s, %s, clock_timestamp(), %s, %s)"
        ).format(history_name()),
        [migration.id, migration.sha256, applied_by, migration.transactional],
    )


def finish_history(conn: psycopg.Connection, migration: Migration) -> None:
    conn.execute(
        sql.SQL(
            "UPDATE {} SET finished_at = clock_timestamp(), "
            "execution_ms = (extract(epoch FROM clock_timestamp() - started_at) * 1000)::int "
            "WHERE id = %s"
        ).format(history_name()),
        [migration.id],
    )


def delete_unfinished(conn: psycopg.Connection) -> list[AppliedMigration]:
    """Forget migrations that started and never finished (after an operator checked them)."""
    unfinished = [row for row in read_history(conn) if row.finished_at is None]
    if unfinished:
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE finished_at IS NULL AND id = ANY(%s)").format(
                history_name()
            ),
            [[row.id for row in unfinished]],
        )
    return unfinished

"""Exact per-table row counts without one transaction that locks every table.

A plain dump carries its rows in `COPY ... FROM stdin;` blocks, so the counts come from the
stream itself as it passes (no second read of the database). A custom-format archive cannot
be read on the way, so its tables are counted in batches of transactions that import the
dump's exported snapshot: the same rows pg_dump sees, holding at most one batch of locks.
Counts are of each table's own rows (`ONLY`), as pg_dump's COPY writes them.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import sql

from tasks.core.postgres import ConnInfo
from tasks.core.sql_text import scan_quotes

BATCH = 500  # tables counted per snapshot transaction: far below max_locks_per_transaction * 100
COPY_HEADER = re.compile(rb"^COPY (.+?) (?:\(.*\) )?FROM stdin;\n", re.M)
TERMINATOR = b"\\.\n"

USER_TABLES = """
    SELECT n.nspname, c.relname
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind = 'r'
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
      AND NOT EXISTS (
          SELECT 1 FROM pg_depend d
          WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e')
    ORDER BY 1, 2
"""


def user_tables(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """The tables pg_dump writes rows of: ordinary tables and partitions, no extension's."""
    return [(schema, table) for schema, table in conn.execute(USER_TABLES).fetchall()]


def _count(conn: psycopg.Connection, schema: str, table: str) -> int:
    query = sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
        sql.Identifier(schema), sql.Identifier(table)
    )
    return int(conn.execute(query).fetchone()[0])  # type: ignore[index]


def table_row_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Row counts of every user table; each count is its own statement (autocommit)."""
    return {f"{s}.{t}": _count(conn, s, t) for s, t in user_tables(conn)}


def count_in_snapshot(
    info: ConnInfo, snapshot: str, tables: list[tuple[str, str]]
) -> dict[str, int]:
    """Counts in the exported snapshot, BATCH tables per transaction, so locks stay few."""
    counts: dict[str, int] = {}
    with info.connect() as conn:
        for start in range(0, len(tables), BATCH):
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            for schema, table in tables[start : start + BATCH]:
                counts[f"{schema}.{table}"] = _count(conn, schema, table)
            conn.execute("COMMIT")
    return counts


def _unquote(name: bytes) -> str:
    """pg_dump's quoted, qualified name split and unquoted as the catalog spells it."""
    parts: list[str] = []
    current, quoted, i = bytearray(), False, 0
    while i < len(name):
        char = name[i : i + 1]
        if quoted and char == b'"' and name[i + 1 : i + 2] == b'"':
            current += b'"'
            i += 1
        elif char == b'"':
            quoted = not quoted
        elif char == b"." and not quoted:
            parts.append(current.decode())
            current = bytearray()
        else:
            current += char
        i += 1
    parts.append(current.decode())
    return ".".join(parts)


class CopyRowCounter:
    """Counts the rows of each `COPY ... FROM stdin;` block of a plain dump, chunk by chunk.

    Every position the parser stops at is a line start, so markers split across chunks are
    simply carried over; data rows are counted with bytes.count, at C speed.
    """

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self._table: str | None = None
        self._carry = b""
        self._quote: bytes | None = None  # the SQL between blocks is inside a literal or body

    def feed(self, chunk: bytes) -> None:
        data = self._carry + chunk
        pos = 0
        while True:
            if self._table is None:
                # Outside COPY blocks, line by line: a COPY line inside a function body or a
                # literal (pg_dump's SQL is small there) is text, not a block.
                end = data.find(b"\n", pos)
                if end < 0:
                    self._carry = data[pos:]
                    return
                found = COPY_HEADER.match(data, pos) if self._quote is None else None
                if found is None:
                    self._quote = scan_quotes(data[pos : end + 1], self._quote)
                    pos = end + 1
                    continue
                self._table = _unquote(found.group(1))
                self.counts[self._table] = 0
                pos = found.end()
                continue
            if data.startswith(TERMINATOR, pos):
                self._table, pos = None, pos + len(TERMINATOR)
                continue
            end = data.find(b"\n" + TERMINATOR, pos)
            if end >= 0:
                self.counts[self._table] += data.count(b"\n", pos, end + 1)
                self._table, pos = None, end + 1 + len(TERMINATOR)
                continue
            last = data.rfind(b"\n", pos)
            if last >= 0:
                self.counts[self._table] += data.count(b"\n", pos, last + 1)
                pos = last + 1
            self._carry = data[pos:]
            return

"""What a parallel backup copies: every user table whole, in ctid chunks, or in a batch.

Planned in the exported snapshot (`parallel.py` runs it): the names, OIDs and relfilenodes the
workers check their tables against, and each table's size on disk, which decides its objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql

from tasks.backup.batches import batch_bytes
from tasks.backup.row_counts import USER_TABLES
from tasks.core.postgres import free_connection_slots

COMPRESSED_SUFFIX = {"gzip": ".gz", "zstd": ".zst", "none": ""}

PLAN_QUERY = f"""
    SELECT t.nspname, t.relname, c.oid::int8, c.relfilenode::int8,
           pg_relation_size(c.oid) AS bytes,
           pg_table_size(c.oid) AS total,
           current_setting('block_size')::int AS block,
           array(SELECT a.attname::text FROM pg_attribute a
                 WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
                   AND a.attgenerated = '' ORDER BY a.attnum) AS columns
    FROM ({USER_TABLES}) t
    JOIN pg_namespace n ON n.nspname = t.nspname
    JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = t.relname
    ORDER BY 1, 2
"""


@dataclass
class TablePart:
    """One data object to write: a whole table, or a range of its pages."""

    name: str
    schema: str
    table: str
    columns: list[str]
    size: int  # bytes on disk of what this part reads (for ordering, largest first)
    oid: int = 0  # the table's, and its relfilenode, as the snapshot saw them
    filenode: int = 0
    pages: tuple[int | None, int | None] = (None, None)  # [from, to) pages; None: open end

    @property
    def chunk(self) -> str | None:
        if self.pages == (None, None):
            return None
        start, end = self.pages
        return f"ctid >= '({start or 0},0)'" + (f" AND ctid < '({end},0)'" if end else "")

    @property
    def target(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.table)

    def lock(self) -> list[sql.Composed]:
        """The table's lock, taken NOWAIT in the worker's snapshot transaction, then a check
        that nothing replaced its rows since the snapshot: the lock resolves the name and the
        catalog as now, the `pg_class` read is the snapshot's. A dropped or renamed table fails
        the LOCK; a TRUNCATE, VACUUM FULL, CLUSTER or rewriting ALTER (rows the snapshot can no
        longer see) a changed relfilenode; a dropped or renamed column the COPY's column list."""
        check = sql.SQL(
            "DO $dbops$BEGIN IF {name}::regclass::oid <> {oid} OR pg_relation_filenode({oid}) "
            "IS DISTINCT FROM (SELECT relfilenode FROM pg_class WHERE oid = {oid}) THEN "
            "RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state', MESSAGE = "
            "{message}; END IF; END$dbops$"
        ).format(
            name=sql.Literal(self.target.as_string()),
            oid=sql.Literal(self.oid),
            message=sql.Literal(
                f"table {self.schema}.{self.table} was dropped, truncated or rewritten "
                "after the backup's snapshot"
            ),
        )
        nowait = sql.SQL("LOCK TABLE {} IN ACCESS SHARE MODE NOWAIT").format(self.target)
        return [nowait, check]

    def query(self) -> sql.Composed:
        target = self.target
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in self.columns)
        if self.chunk is None:
            listed = sql.SQL(" ({})").format(columns) if self.columns else sql.SQL("")
            return sql.SQL("COPY {}{} TO STDOUT").format(target, listed)
        start, end = self.pages
        where = sql.SQL("ctid >= {}::tid").format(sql.Literal(f"({start or 0},0)"))
        if end is not None:
            where += sql.SQL(" AND ctid < {}::tid").format(sql.Literal(f"({end},0)"))
        return sql.SQL("COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT").format(
            columns, target, where
        )


@dataclass
class Batch:
    """Small tables' sections in one shared object (`tasks/backup/batches.py`)."""

    name: str
    tables: list[TablePart]

    @property
    def size(self) -> int:
        return sum(t.size for t in self.tables)


def plan_parts(
    conn: psycopg.Connection, backup_id: str, compression: str, chunk_bytes: int, after: str = ""
) -> list[TablePart | Batch]:
    """Every user table as one part, or several ctid ranges when it is over `chunk_bytes`, or,
    under `batch_bytes`, a section of a batch object. The last range has no end, so rows on
    pages added since the size was read are kept."""
    suffix = ".copy" + COMPRESSED_SUFFIX[compression] + after
    batch_suffix = ".batch.sql" + COMPRESSED_SUFFIX[compression] + after
    small = batch_bytes(chunk_bytes)
    parts: list[TablePart | Batch] = []
    batch: Batch | None = None
    for index, row in enumerate(conn.execute(PLAN_QUERY), 1):
        schema, table, oid, filenode, size, total, block, columns = row
        pages = int(size) // int(block)
        count = min(-(-int(size) // chunk_bytes), pages) if columns else 1
        if int(total) < small:  # TOAST counted: a batched table is buffered whole
            if batch is None or batch.size + int(total) > small:
                batch = Batch(f"{backup_id}.b{len(parts) + 1:05d}{batch_suffix}", [])
                parts.append(batch)
            batch.tables.append(TablePart("", schema, table, columns, total, oid, filenode))
            continue
        if count <= 1:
            parts.append(
                TablePart(
                    f"{backup_id}.t{index:05d}{suffix}", schema, table, columns, size, oid, filenode
                )
            )
            continue
        bounds = [pages * i // count for i in range(count)] + [None]
        for i in range(count):
            start, end = bounds[i], bounds[i + 1]
            parts.append(
                TablePart(
                    f"{backup_id}.t{index:05d}-{i + 1:03d}{suffix}",
                    schema,
                    table,
                    columns,
                    size // count,
                    oid,
                    filenode,
                    (start if i else None, end),
                )
            )
    return parts


def usable_jobs(conn: psycopg.Connection, jobs: int) -> int:
    """At most half the connection slots left (each worker may run a pg_dump beside it)."""
    return max(1, min(jobs, free_connection_slots(conn) // 2))


def tables_of(parts: list[TablePart | Batch]) -> list[tuple[str, str]]:
    """Every table the workers copy, whether whole, in chunks or in a batch."""
    every = [t for p in parts for t in (p.tables if isinstance(p, Batch) else [p])]
    return sorted({(t.schema, t.table) for t in every})

"""Small tables packed into shared batch objects, so a parallel backup's object count grows with
its data, not its table count.

A table whose data is under `batch_bytes(chunk)` on disk, TOAST included (8 MiB, or
`--chunk-mb` when smaller), goes into a batch object with its neighbours, in name order, until
the batch holds that much; a batch is one compressed, SHA-256 hashed object,
`<id>.b00007.batch.sql.gz`. Decompressed, it is a psql script (stock tools restore it with
`gunzip -c | psql`), and each table's section starts with a header line that lets the loader
split it exactly, without parsing COPY text:

    SET client_encoding = 'UTF8';
    -- dbops section {"relation": ["public", "t"], "rows": 50, "bytes": 2041}
    COPY "public"."t" ("id", "v") FROM stdin;
    <exactly `bytes` bytes of COPY text: `rows` lines>
    \\.

The manifest lists each section (`DataObject.tables`: table, columns, rows, bytes) in order.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from psycopg import sql

from tasks.backup.manifest import BatchedTable
from tasks.core.errors import BackupCheck, BackupFaultError

BATCH_BYTES = 8 * 1024**2  # on-disk bytes: tables under it are batched, and a batch holds that
SECTION = b"-- dbops section "
END = b"\\.\n"


def batch_bytes(chunk_bytes: int) -> int:
    """The threshold and a batch's size: never above the chunk size of large tables."""
    return min(chunk_bytes, BATCH_BYTES)


def copy_from(relation: list[str], columns: list[str]) -> sql.Composed:
    """`COPY schema.table (columns) FROM STDIN`, as the loader and the batch script run it."""
    listed = sql.SQL(" ({})").format(sql.SQL(", ").join(sql.Identifier(c) for c in columns))
    return sql.SQL("COPY {}{} FROM stdin").format(
        sql.Identifier(*relation), listed if columns else sql.SQL("")
    )


def prelude(encoding: str) -> bytes:
    """The script's first line: its COPY text is in the source server's encoding."""
    return f"SET client_encoding = '{encoding}';\n".encode()


def section(relation: list[str], columns: list[str], rows: int, data: bytes) -> bytes:
    """One table's section: header line, COPY statement, its COPY text, the end mark."""
    head = json.dumps({"relation": relation, "rows": rows, "bytes": len(data)})
    statement = copy_from(relation, columns).as_string() + ";\n"
    return SECTION + head.encode() + b"\n" + statement.encode() + data + END


def split(
    data: bytes, tables: list[BatchedTable], where: str
) -> Iterator[tuple[BatchedTable, bytes]]:
    """Each section's COPY text with the manifest's entry for it, checked to agree exactly."""

    def fault(why: str) -> BackupFaultError:
        return BackupFaultError(
            f"{where} is not the batch its manifest lists: {why}", BackupCheck.ARCHIVE
        )

    first = data.find(b"\n") + 1
    if not data.startswith(b"SET client_encoding") or not first:
        raise fault("no encoding line")
    at = first
    for entry in tables:
        if not data.startswith(SECTION, at):
            raise fault(f"no section header for {entry.table}")
        line_end = data.index(b"\n", at) + 1
        head = json.loads(data[at + len(SECTION) : line_end])
        if head["relation"] != entry.relation or head["rows"] != entry.rows:
            raise fault(f"section {head} where {entry.table} was expected")
        start = data.index(b"\n", line_end) + 1  # past the COPY statement
        end = start + int(head["bytes"])
        if int(head["bytes"]) != entry.raw_size or data[end : end + len(END)] != END:
            raise fault(f"the section of {entry.table} does not end where it says")
        yield entry, data[start:end]
        at = end + len(END)
    if at != len(data):
        raise fault("bytes after the last section")

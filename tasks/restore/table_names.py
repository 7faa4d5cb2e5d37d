"""Which tables a table restore takes from a backup, and under which names they arrive.

Everything here is checked before the backup is read: names are matched against the
manifest's row counts (an unknown one is refused with the closest names), and a table that
would arrive under a name the target already uses is refused: nothing is ever overwritten.
"""

from __future__ import annotations

import psycopg
from pydantic import BaseModel, Field

from tasks.core.errors import ParameterError
from tasks.restore.sql_filter import Selection, Table, closest, qualified

NAME_BYTES = 63


class TableRequest(BaseModel):
    """What the user asked for: tables and schemas, and where their copies go."""

    tables: list[str] = Field(default_factory=list, description="SCHEMA.TABLE names")
    schemas: list[str] = Field(default_factory=list, description="every table of these schemas")
    into_schema: str | None = Field(None, description="restore into this schema (created)")
    as_table: str | None = Field(None, description="the one restored table's new name")


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def sql_name(table: Table) -> str:
    return f"{quote_ident(table[0])}.{quote_ident(table[1])}"


def split_name(text: str) -> tuple[str | None, str]:
    """`schema.table`, `"Odd Schema"."Weird Table"` or a bare table name."""
    text = text.strip()
    if text.startswith('"'):
        parts, current, i, quoted = [], "", 0, False
        while i < len(text):
            char = text[i]
            if char == '"' and quoted and text[i + 1 : i + 2] == '"':
                current, i = current + '"', i + 2
                continue
            if char == '"':
                quoted = not quoted
            elif char == "." and not quoted:
                parts.append(current)
                current = ""
            else:
                current += char
            i += 1
        parts.append(current)
        return (parts[0], parts[1]) if len(parts) == 2 else (None, text)
    schema, dot, table = text.partition(".")
    return (schema, table) if dot else (None, text)


def resolve_table(text: str, known: list[str]) -> Table:
    """A name the user typed as a (schema, table); a bare name when only one schema has it."""
    schema, table = split_name(text)
    if schema is None:
        matches = [name for name in known if name.split(".", 1)[-1] == table]
        if len(matches) == 1:
            found = matches[0].split(".", 1)
            return found[0], found[1]
        where = f"several schemas have it ({', '.join(matches)})" if matches else "no schema"
        raise ParameterError(
            "tables",
            f"{text!r} needs its schema, as SCHEMA.TABLE: {where}; closest: {closest(text, known)}",
        )
    if not schema or not table:
        raise ParameterError("tables", f"{text!r} is not SCHEMA.TABLE (e.g. public.users)")
    name = qualified(schema, table)
    if name not in known and not any(k.startswith(schema + ".") for k in known):
        # Not even a partitioned parent (their partitions are counted, in their schema).
        raise ParameterError(
            "tables", f"{name} is not a table in this backup; closest: {closest(name, known)}"
        )
    return schema, table


def selection_of(request: TableRequest, known: list[str]) -> Selection:
    """The request checked against the backup's tables; partitioned parents are checked
    once the backup's definitions are read (the manifest counts rows of partitions only)."""
    if not request.tables and not request.schemas:
        raise ParameterError("tables", "is empty: name at least one SCHEMA.TABLE or a schema")
    selection = Selection({resolve_table(text, known) for text in request.tables})
    schemas = {name.split(".", 1)[0] for name in known}
    for schema in request.schemas:
        if schema not in schemas:
            raise ParameterError(
                "schemas",
                f"{schema!r} has no tables in this backup; schemas with tables: "
                f"{closest(schema, sorted(schemas))}",
            )
        selection.schemas.add(schema)
    if request.as_table is not None:
        if len(request.tables) != 1 or request.schemas:
            raise ParameterError(
                "as_table", "renames one table: give exactly one tables entry and no schemas"
            )
        check_name("as_table", request.as_table)
    if request.into_schema is not None:
        check_name("into_schema", request.into_schema)
    return selection


def check_name(parameter: str, name: str) -> None:
    if not name or len(name.encode()) > NAME_BYTES:
        raise ParameterError(parameter, f"{name!r} must be 1 to {NAME_BYTES} bytes long")


def final_table(table: Table, request: TableRequest) -> Table:
    """Where one restored table lands in the target."""
    return (request.into_schema or table[0], request.as_table or table[1])


def refuse_existing(target: psycopg.Connection, tables: list[Table], database: str) -> None:
    """One line naming the first table (or other relation or type) already at a final name."""
    for schema, name in tables:
        row = target.execute(
            """
            SELECT 'relation' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = %(s)s AND c.relname = %(t)s
            UNION ALL
            SELECT 'type' FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
            WHERE n.nspname = %(s)s AND t.typname = %(t)s
            """,
            {"s": schema, "t": name},
        ).fetchone()
        if row is not None:
            raise ParameterError(
                "as_table",
                f"cannot restore: {qualified(schema, name)} already exists in database "
                f"{database!r} (nothing is overwritten); choose another name with as_table or "
                "another schema with into_schema",
                related=("into_schema",),
            )

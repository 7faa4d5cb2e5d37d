"""From the scratch database into the target: checked, renamed, then moved in one transaction.

The scratch database holds every definition of the backup and the chosen tables' rows. There
the tables are counted against the manifest, cut loose from what stays behind (a partition
from a parent that is not restored, an inheritance child from its parent, foreign keys to
tables that are not restored) and renamed to their final names, so that PostgreSQL itself
carries indexes, constraints and owned sequences along. `pg_dump -t` of exactly those tables
then writes correct SQL for the target, which psql runs inside BEGIN ... COMMIT; the COMMIT is
sent only after pg_dump succeeded and a check of every row count inside the same
transaction: the tables appear in the target complete, or not at all.
"""

from __future__ import annotations

import contextlib
import subprocess
from dataclasses import dataclass, field

import psycopg

from tasks.backup.manifest import Manifest
from tasks.core.children import spawn
from tasks.core.client_tools import find_client_tool
from tasks.core.errors import BackupCheck, BackupFaultError, ConfigError, DbopsError, first_line
from tasks.core.postgres import ConnInfo
from tasks.core.streams import CHUNK_SIZE, StderrTail
from tasks.restore.sql_filter import Selection, Table, qualified
from tasks.restore.streaming import psql_command, tool_failure
from tasks.restore.table_names import (
    NAME_BYTES,
    TableRequest,
    final_table,
    quote_ident,
    refuse_existing,
    sql_name,
)


@dataclass
class Moved:
    """One restored table: its name in the backup, its final name, its rows."""

    source: Table
    final: Table
    partitioned: bool
    rows: int | None = None


@dataclass
class Plan:
    tables: list[Moved] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)  # foreign keys not restored


CHOSEN = """
WITH RECURSIVE chosen AS (
    SELECT c.oid FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p')
      AND ((n.nspname, c.relname) IN (SELECT * FROM unnest(%(s)s::text[], %(t)s::text[]))
           OR n.nspname = ANY(%(schemas)s))
    UNION
    SELECT i.inhrelid FROM pg_inherits i JOIN chosen ON i.inhparent = chosen.oid
    JOIN pg_class k ON k.oid = i.inhrelid WHERE k.relispartition
)
SELECT c.oid, n.nspname, c.relname, c.relkind = 'p'
FROM chosen JOIN pg_class c ON c.oid = chosen.oid JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY c.relispartition, 2, 3
"""


def prepare(
    scratch: psycopg.Connection, selection: Selection, request: TableRequest, manifest: Manifest
) -> Plan:
    """Count, cut loose and rename the chosen tables inside the scratch database."""
    wanted = sorted(selection.tables)
    rows = scratch.execute(
        CHOSEN,
        {
            "s": [s for s, _ in wanted],
            "t": [t for _, t in wanted],
            "schemas": sorted(selection.schemas),
        },
    ).fetchall()
    oids = [oid for oid, *_ in rows]
    plan = Plan()
    for oid, schema, name, partitioned in rows:
        moved = Moved((schema, name), final_table((schema, name), request), partitioned)
        if request.as_table and (schema, name) not in selection.tables:
            raise ConfigError(
                f"as_table renames one table, but {qualified(*sorted(selection.tables)[0])} is "
                "partitioned; restore it with into_schema instead"
            )
        if not partitioned:
            moved.rows = _count(scratch, (schema, name))
            expected = manifest.row_counts.get(qualified(schema, name))
            if moved.rows != expected:
                raise BackupFaultError(
                    f"{qualified(schema, name)} restored {moved.rows} rows but the manifest "
                    f"says {expected}; the backup is inconsistent, nothing was restored",
                    BackupCheck.ROW_COUNTS,
                )
        _cut_loose(scratch, oid, oids)
        plan.tables.append(moved)
    plan.left_out = _drop_outside_keys(scratch, oids)
    _rename(scratch, plan, request, oids)
    return plan


def _count(conn: psycopg.Connection, table: Table) -> int:
    row = conn.execute(f"SELECT count(*) FROM ONLY {sql_name(table)}").fetchone()  # noqa: S608
    return int(row[0])  # type: ignore[index]


def _cut_loose(scratch: psycopg.Connection, oid: int, chosen: list[int]) -> None:
    """A table whose parent stays behind leaves it (it would attach to the target's)."""
    parents = scratch.execute(
        "SELECT i.inhparent::regclass::text, c.relispartition, %(oid)s::regclass::text "
        "FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhrelid = %(oid)s AND NOT i.inhparent = ANY(%(chosen)s)",
        {"oid": oid, "chosen": chosen},
    ).fetchall()
    for parent, is_partition, child in parents:
        if is_partition:
            scratch.execute(f"ALTER TABLE {parent} DETACH PARTITION {child}")
        else:
            scratch.execute(f"ALTER TABLE {child} NO INHERIT {parent}")


def _drop_outside_keys(scratch: psycopg.Connection, chosen: list[int]) -> list[str]:
    """Foreign keys to tables that are not restored are left out (and reported)."""
    keys = scratch.execute(
        "SELECT conrelid::regclass::text, quote_ident(conname), confrelid::regclass::text "
        "FROM pg_constraint WHERE contype = 'f' AND conparentid = 0 "
        "AND conrelid = ANY(%(c)s) AND NOT confrelid = ANY(%(c)s) ORDER BY 1, 2",
        {"c": chosen},
    ).fetchall()
    for table, name, _ in keys:
        scratch.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    return [f"{table} {name} -> {refers}" for table, name, refers in keys]


def _renamed(name: str, old: str, new: str) -> str:
    text = new + name[len(old) :] if name.startswith(old) else f"{new}_{name}"
    return text.encode()[:NAME_BYTES].decode(errors="ignore")


def _rename(
    scratch: psycopg.Connection, plan: Plan, request: TableRequest, oids: list[int]
) -> None:
    try:
        if request.into_schema:
            scratch.execute(f"CREATE SCHEMA IF NOT EXISTS {quote_ident(request.into_schema)}")
        for moved in plan.tables:
            if moved.final[0] != moved.source[0]:
                scratch.execute(
                    f"ALTER TABLE {sql_name(moved.source)} SET SCHEMA {quote_ident(moved.final[0])}"
                )
            if moved.final[1] != moved.source[1]:
                _rename_with_dependents(scratch, moved)
    except psycopg.Error as exc:
        raise ConfigError(
            f"cannot give the restored tables their names ({first_line(exc)}); choose another "
            "into_schema or as_table"
        ) from None


def _rename_with_dependents(scratch: psycopg.Connection, moved: Moved) -> None:
    """The table, its indexes and owned sequences take the new name (they share a schema)."""
    schema, old = moved.final[0], moved.source[1]
    new = moved.final[1]
    dependents = scratch.execute(
        """
        SELECT c.relname, c.relkind FROM pg_class c
        WHERE c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = %(t)s::regclass
                        UNION
                        SELECT d.objid FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
                        WHERE d.refobjid = %(t)s::regclass AND s.relkind = 'S'
                          AND d.deptype IN ('a', 'i'))
        """,
        {"t": sql_name((schema, old))},
    ).fetchall()
    scratch.execute(f"ALTER TABLE {sql_name((schema, old))} RENAME TO {quote_ident(new)}")
    for name, kind in dependents:
        what = "INDEX" if kind == "i" else "SEQUENCE"
        scratch.execute(
            f"ALTER {what} {sql_name((schema, name))} "
            f"RENAME TO {quote_ident(_renamed(name, old, new))}"
        )


def final_relations(scratch: psycopg.Connection, plan: Plan) -> list[Table]:
    """Every name the restore creates in the target: tables, their indexes and sequences."""
    names = [m.final for m in plan.tables]
    rows = scratch.execute(
        """
        SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.oid IN (SELECT indexrelid FROM pg_index WHERE indrelid = ANY(%(t)s::regclass[])
                        UNION
                        SELECT d.objid FROM pg_depend d JOIN pg_class s ON s.oid = d.objid
                        WHERE d.refobjid = ANY(%(t)s::regclass[]) AND s.relkind = 'S'
                          AND d.deptype IN ('a', 'i'))
        """,
        {"t": [sql_name(name) for name in names]},
    ).fetchall()
    return names + [(s, n) for s, n in rows]


def missing_types(scratch: psycopg.Connection, target: psycopg.Connection, plan: Plan) -> list[str]:
    """Types the restored columns use that the target lacks (another database, say)."""
    used = scratch.execute(
        """
        SELECT DISTINCT tn.nspname, t.typname FROM pg_attribute a
        JOIN pg_type t ON t.oid = a.atttypid JOIN pg_namespace tn ON tn.oid = t.typnamespace
        WHERE a.attrelid = ANY(%(t)s::regclass[]) AND a.attnum > 0 AND NOT a.attisdropped
          AND tn.nspname NOT IN ('pg_catalog', 'information_schema')
          AND NOT t.typrelid = ANY(%(t)s::regclass[])
        ORDER BY 1, 2
        """,
        {"t": [sql_name(m.final) for m in plan.tables]},
    ).fetchall()
    missing = []
    for schema, name in used:
        found = target.execute(
            "SELECT 1 FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace "
            "WHERE n.nspname = %s AND t.typname = %s",
            [schema, name],
        ).fetchone()
        if found is None:
            missing.append(qualified(schema, name))
    return missing


def check_target(scratch: psycopg.Connection, target: psycopg.Connection, plan: Plan) -> None:
    """Before anything is written: no name taken, every type the columns need present."""
    refuse_existing(target, final_relations(scratch, plan), target.info.dbname)
    missing = missing_types(scratch, target, plan)
    if missing:
        raise ConfigError(
            f"database {target.info.dbname!r} lacks the types the restored tables use "
            f"({', '.join(missing)}); create them there first, or restore into the database "
            "the backup is of"
        )


def _dump_pattern(table: Table) -> str:
    return ".".join('"' + part.replace('"', '""') + '"' for part in table)


def transfer(scratch: ConnInfo, target: ConnInfo, plan: Plan) -> None:
    """pg_dump -t of the final tables | psql in one transaction that commits only on proof."""
    with target.connect() as conn:
        major = conn.info.server_version // 10000
        schemas = sorted({m.final[0] for m in plan.tables})
        present = {
            name
            for (name,) in conn.execute(
                "SELECT nspname FROM pg_namespace WHERE nspname = ANY(%s)", [schemas]
            ).fetchall()
        }
    dump = [find_client_tool("pg_dump", major).path, "--no-password", "--strict-names"]
    for moved in plan.tables:
        dump += ["--table", _dump_pattern(moved.final)]
    load = [part.replace("{dbname}", target.dbname) for part in psql_command(major)]
    loader = spawn(
        load,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=target.child_env(),
    )
    dumper = spawn(dump, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=scratch.child_env())
    assert loader.stdin and loader.stderr and dumper.stdout and dumper.stderr
    load_tail, dump_tail = StderrTail(loader.stderr), StderrTail(dumper.stderr)
    try:
        try:
            loader.stdin.write(b"BEGIN;\n")
            for schema in schemas:  # into_schema, or the table's own in another database
                if schema not in present:
                    loader.stdin.write(f"CREATE SCHEMA {quote_ident(schema)};\n".encode())
            while chunk := dumper.stdout.read(CHUNK_SIZE):
                loader.stdin.write(chunk)
            if dumper.wait() != 0:
                raise DbopsError(
                    f"pg_dump of the restored tables failed: {dump_tail.last(scratch.password)}; "
                    f"nothing was written to {target.dbname!r}"
                )
            loader.stdin.write(_count_checks(plan).encode())
            loader.stdin.write(b"COMMIT;\n")
            loader.stdin.close()
        except BrokenPipeError:
            pass
        if loader.wait() != 0:
            failure = tool_failure("psql", loader.returncode, load_tail, target.password)
            if isinstance(failure, BackupFaultError):  # the backup was fine: the target refused
                failure = ConfigError(
                    f"{target.dbname!r} refused the restored tables ({failure}); nothing was "
                    "changed there"
                )
            raise failure
    finally:
        for process in (dumper, loader):
            if process.poll() is None:
                process.kill()
                process.wait()
        with contextlib.suppress(Exception):
            dumper.stdout.close()


def _count_checks(plan: Plan) -> str:
    """Inside the transaction: every table has exactly the rows the scratch copy had."""
    checks = [
        f"IF (SELECT count(*) FROM ONLY {sql_name(m.final)}) <> {int(m.rows)} THEN "
        f"RAISE EXCEPTION 'dbops: % has not the % rows of the backup', "
        f"{_literal(qualified(*m.final))}, {int(m.rows)}; END IF;"
        for m in plan.tables
        if m.rows is not None
    ]
    return "DO $dbops$ BEGIN\n" + "\n".join(checks) + "\nEND $dbops$;\n" if checks else ""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"

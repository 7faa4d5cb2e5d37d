"""Single-table restore: only the chosen tables arrive, complete or not at all, beside the rest.

One rich database (odd identifiers, partitions, inheritance, foreign keys, identity columns)
is backed up once in plain and once in custom format; each test restores from those.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.backup.catalog import resolve_source
from tasks.backup.parallel import run_parallel_backup
from tasks.backup.pipeline import BackupRequest, run_backup
from tasks.core.errors import BackupFaultError, ConfigError, DbopsError, ParameterError
from tasks.core.postgres import ConnInfo
from tasks.restore.table_names import TableRequest
from tasks.restore.tables import restore_tables
from tasks.storage.destinations import Destination
from tests.conftest import DATA, content_checksums, new_database, psql


@pytest.fixture(scope="module")
def rich(pg) -> str:
    url = new_database(pg, "rich_tables")
    psql(url, "-q", "-f", str(DATA / "rich_schema.sql"))
    return url


@pytest.fixture(scope="module")
def backups(rich, tmp_path_factory) -> dict[str, tuple[Path, str]]:
    """A plain, a custom and a parallel backup of `rich`, each in its own directory."""
    made = {}
    for fmt in ("plain", "custom", "parallel"):
        where = tmp_path_factory.mktemp(fmt)
        run = run_parallel_backup if fmt == "parallel" else run_backup
        manifest = run(
            BackupRequest(
                ConnInfo.parse(rich), Destination.from_url(str(where)), fmt, chunk_bytes=32768
            )
        )
        made[fmt] = (where, manifest.backup_id)
    return made


def restore(backups, fmt: str, target: str, **request):
    where, backup_id = backups[fmt]
    source = resolve_source(backup_id, str(where))
    return restore_tables(source, ConnInfo.parse(target), TableRequest(**request))


def leftovers(url: str) -> list[str]:
    with ConnInfo.parse(url).with_dbname("postgres").connect() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE '%%dbops_restore%%'"
        ).fetchall()
    return [name for (name,) in rows]


def scalar(url: str, query: str):
    with ConnInfo.parse(url).connect() as conn:
        return conn.execute(query).fetchone()[0]


@pytest.mark.parametrize("fmt", ["plain", "custom", "parallel"])
def test_one_table_into_another_schema_of_the_same_database(rich, backups, fmt):
    before = content_checksums(rich)
    schema = f"restore_{fmt}"
    with ConnInfo.parse(rich).connect() as conn:  # someone deletes rows after the backup
        conn.execute("DELETE FROM audit_log WHERE actor = 'actor 1'")
    damaged = content_checksums(rich)
    assert damaged != before

    result = restore(backups, fmt, rich, tables=["public.User", "audit_log"], into_schema=schema)

    after = content_checksums(rich)
    restored = f"{schema}.User"
    assert after.pop(restored) == before["public.User"]  # the rows as they were backed up
    assert after.pop(f"{schema}.audit_log") == before["public.audit_log"]
    assert after == damaged  # every other table untouched, byte for byte
    assert result.tables == {"public.User": restored, "public.audit_log": f"{schema}.audit_log"}
    assert result.row_counts == {restored: 300, f"{schema}.audit_log": 201}
    assert result.checksum_verified
    # Definitions came along: key, unique and identity sequence, trigger, comment.
    ident = f'{schema}."User"'
    assert scalar(rich, f"SELECT count(*) FROM pg_index WHERE indrelid = '{ident}'::regclass") == 2
    assert scalar(rich, f"SELECT count(*) FROM pg_trigger WHERE tgrelid = '{ident}'::regclass") == 1
    assert scalar(rich, f"SELECT obj_description('{ident}'::regclass)").startswith("people who")
    new_id = scalar(rich, f"INSERT INTO {ident}(email, name) VALUES ('n@x.io', 'n') RETURNING id")
    assert new_id == 301
    assert leftovers(rich) == []
    with ConnInfo.parse(rich).connect() as conn:
        # What the operator does next: copy the missing rows back, drop the copy.
        conn.execute(
            f"INSERT INTO audit_log SELECT * FROM {schema}.audit_log "
            "EXCEPT ALL SELECT * FROM audit_log"
        )
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
    assert content_checksums(rich) == before


def damage_other_objects(backups, chosen: set[str]) -> dict[Path, bytes]:
    """A flipped byte in every table data object (whole, chunk or batch) holding none of the
    `chosen` tables: a table restore that read one would fail its SHA-256 check."""
    where, backup_id = backups["parallel"]
    manifest = resolve_source(backup_id, str(where)).manifest
    assert manifest is not None
    damaged = {}
    for obj in manifest.objects:
        held = {e.table for e in obj.tables} | ({obj.table} if obj.table else set())
        if held and not held & chosen:
            path = where / obj.name
            good = path.read_bytes()
            damaged[path] = good
            path.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    return damaged


@pytest.mark.parametrize("fmt", ["plain", "custom", "parallel"])
def test_partitioned_and_odd_names_into_another_database(pg, backups, rich, fmt):
    target = new_database(pg, "other")
    psql(target, "-q", "-c", "CREATE TABLE keep(id int); INSERT INTO keep VALUES (1), (2)")
    before = content_checksums(target)
    source_sums = content_checksums(rich)

    chosen = {"public.Message_2025", "public.Message_2026", "public.Message_other"}
    chosen.add("Odd Schema.Weird Table")
    damaged = damage_other_objects(backups, chosen) if fmt == "parallel" else {}
    try:
        result = restore(
            backups, fmt, target, tables=["public.Message", '"Odd Schema"."Weird Table"']
        )
    finally:
        for path, good in damaged.items():
            path.write_bytes(good)
    if fmt == "parallel":  # the tables were in several batches; none of the others was read
        assert len(damaged) >= 2, damaged

    after = content_checksums(target)
    assert after.pop("public.keep") == before["public.keep"]
    for name in ("Message_2025", "Message_2026", "Message_other"):
        assert after.pop(f"public.{name}") == source_sums[f"public.{name}"]
    assert after.pop("Odd Schema.Weird Table") == source_sums["Odd Schema.Weird Table"]
    assert after == {}
    assert scalar(target, 'SELECT count(*) FROM "Message"') == 3050
    assert scalar(target, "SELECT relkind FROM pg_class WHERE relname = 'Message'") == "p"
    # The key to "Conversation", which was not restored, is left out and said so.
    assert result.left_out and "Conversation" in result.left_out[0]
    assert leftovers(target) == []


def test_as_table_renames_table_indexes_and_sequence(rich, backups):
    result = restore(backups, "plain", rich, tables=["public.User"], as_table="users_copy")
    assert result.tables == {"public.User": "public.users_copy"}
    names = {
        name
        for (name,) in ConnInfo.parse(rich)
        .connect()
        .execute("SELECT relname FROM pg_class WHERE relname LIKE 'users_copy%'")
    }
    assert names == {"users_copy", "users_copy_pkey", "users_copy_email_key", "users_copy_id_seq"}
    psql(rich, "-q", "-c", "DROP TABLE users_copy")


def test_a_partition_alone_arrives_standalone(rich, backups):
    """Left attached, it would join the live parent and change what the application reads."""
    live = scalar(rich, 'SELECT count(*) FROM "Message"')
    restore(backups, "custom", rich, tables=["public.Message_2026"], as_table="m26")
    assert scalar(rich, "SELECT relispartition FROM pg_class WHERE relname = 'm26'") is False
    assert scalar(rich, "SELECT count(*) FROM m26") == scalar(
        rich, 'SELECT count(*) FROM "Message_2026"'
    )
    assert scalar(rich, 'SELECT count(*) FROM "Message"') == live
    psql(rich, "-q", "-c", "DROP TABLE m26")


def test_the_filter_does_not_depend_on_chunk_boundaries(backups):
    import gzip

    from tasks.restore.sql_filter import Selection, TableFilter

    where, backup_id = backups["plain"]
    data = gzip.decompress(next(where.glob(f"{backup_id}.sql.gz")).read_bytes())
    outputs = set()
    for size in (97, 4096, len(data)):
        chosen = TableFilter(Selection({("public", "Message")}, {"Odd Schema"}), [])
        pieces = [chosen.feed(data[i : i + size]) for i in range(0, len(data), size)]
        outputs.add(b"".join(pieces) + chosen.finish())
    assert len(outputs) == 1
    kept = outputs.pop()
    assert kept.count(b"\n\\.\n") == 5  # 3 partitions of Message, 2 tables of "Odd Schema"
    assert b"lo_open" not in kept and b"REFRESH MATERIALIZED VIEW" not in kept


def test_refuses_an_existing_table_and_touches_nothing(rich, backups):
    before = content_checksums(rich)
    with pytest.raises(ParameterError) as refused:
        restore(backups, "custom", rich, tables=["public.User"])
    message = str(refused.value)
    assert "public.User already exists" in message and "as_table" in message
    assert "into_schema" in message and "\n" not in message
    assert content_checksums(rich) == before
    assert leftovers(rich) == []


def test_unknown_table_names_the_closest(rich, backups):
    with pytest.raises(ParameterError) as unknown:
        restore(backups, "plain", rich, tables=["public.Usr"], into_schema="x")
    # public has tables, so public.Usr could be a partitioned parent: the definitions decide.
    assert "public.Usr" in str(unknown.value) and "public.User" in str(unknown.value)
    assert leftovers(rich) == []


def test_a_name_in_no_schema_of_the_backup_is_refused_before_reading(rich, backups, tmp_path):
    where, backup_id = backups["plain"]
    manifest = next(where.glob(f"{backup_id}.manifest.json"))
    (tmp_path / manifest.name).write_bytes(manifest.read_bytes())
    dump = json.loads(manifest.read_text())["dump"]["name"]
    (tmp_path / dump).write_bytes(b"not read")  # reading it would fail its SHA-256 check
    source = resolve_source(backup_id, str(tmp_path))
    with pytest.raises(ParameterError, match="closest: public.User"):
        restore_tables(source, ConnInfo.parse(rich), TableRequest(tables=["pubic.User"]))
    with pytest.raises(ParameterError, match="schemas with tables: billing"):
        restore_tables(source, ConnInfo.parse(rich), TableRequest(schemas=["biling"]))
    assert leftovers(rich) == []


def test_missing_types_in_another_database_are_named(pg, backups):
    target = new_database(pg, "bare")
    with pytest.raises(ConfigError) as missing:
        restore(backups, "plain", target, tables=["public.User"])
    assert "public.mood" in str(missing.value) and "public.email" in str(missing.value)
    assert content_checksums(target) == {}
    assert leftovers(target) == []


def test_row_count_or_checksum_mismatch_restores_nothing(rich, backups, tmp_path):
    where, backup_id = backups["plain"]
    manifest = json.loads((where / f"{backup_id}.manifest.json").read_text())
    manifest["row_counts"]["public.audit_log"] += 1
    (tmp_path / f"{backup_id}.manifest.json").write_text(json.dumps(manifest))
    dump = (where / manifest["dump"]["name"]).read_bytes()
    (tmp_path / manifest["dump"]["name"]).write_bytes(dump)
    before = content_checksums(rich)
    source = resolve_source(backup_id, str(tmp_path))
    request = TableRequest(tables=["public.audit_log"], into_schema="bad_counts")
    with pytest.raises(BackupFaultError, match="manifest says 202"):
        restore_tables(source, ConnInfo.parse(rich), request)

    broken = bytearray(dump)
    broken[len(broken) // 2] ^= 0xFF
    (tmp_path / manifest["dump"]["name"]).write_bytes(bytes(broken))
    with pytest.raises(DbopsError):
        restore_tables(resolve_source(backup_id, str(tmp_path)), ConnInfo.parse(rich), request)
    assert content_checksums(rich) == before
    assert scalar(rich, "SELECT count(*) FROM pg_namespace WHERE nspname = 'bad_counts'") == 0
    assert leftovers(rich) == []


TRICKY = """
CREATE TABLE keep (id int PRIMARY KEY, note text);
INSERT INTO keep SELECT i, 'note ' || i FROM generate_series(1, 10) i;
CREATE FUNCTION tricky() RETURNS text LANGUAGE sql AS $body$
SELECT '
--
-- Data for Name: BLOBS; Type: BLOBS; Schema: -; Owner: -
--
'::text
$body$;
COMMENT ON TABLE keep IS 'a comment over lines
-- Name: keep; Type: MATERIALIZED VIEW DATA; Schema: public; Owner: x
with a header-shaped line';
"""


def test_header_shaped_lines_inside_bodies_and_literals_are_not_headers(pg, tmp_path):
    url = new_database(pg, "tricky")
    psql(url, "-q", "-c", TRICKY)
    manifest = run_backup(BackupRequest(ConnInfo.parse(url), Destination.from_url(str(tmp_path))))
    result = restore_tables(
        resolve_source(manifest.backup_id, str(tmp_path)),
        ConnInfo.parse(url),
        TableRequest(tables=["public.keep"], into_schema="copy"),
    )
    assert result.row_counts == {"copy.keep": 10}
    assert scalar(url, "SELECT obj_description('copy.keep'::regclass)").endswith(
        "header-shaped line"
    )


def test_a_copy_line_inside_a_function_body_is_not_counted_as_rows(pg, tmp_path):
    url = new_database(pg, "copy_in_body")
    psql(
        url,
        "-q",
        "-c",
        TRICKY.replace("--\n'::text", "--\nCOPY public.keep (id, note) FROM stdin;\n'::text"),
    )
    manifest = run_backup(BackupRequest(ConnInfo.parse(url), Destination.from_url(str(tmp_path))))
    assert manifest.row_counts["public.keep"] == 10

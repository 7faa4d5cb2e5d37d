"""The parallel format: one snapshot copied by N workers into one object per table (large
tables in ctid chunks) on moto's S3 server, restored by N loaders through the scratch
database and swap, exactly; a damaged object or a killed backup never passes for a backup."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from tasks.backup.catalog import resolve_source
from tasks.backup.manifest import MANIFEST_SUFFIX, Manifest, list_manifests
from tasks.backup.parallel import run_parallel_backup
from tasks.backup.pipeline import BackupRequest
from tasks.backup.row_counts import table_row_counts
from tasks.copies.records import records_by_backup
from tasks.core.client_tools import find_client_tool
from tasks.core.errors import BackupFaultError, DbopsError
from tasks.core.postgres import ConnInfo
from tasks.core.settings import s3_options_from_env
from tasks.restore.readback import read_back_dump
from tasks.restore.restore import run_restore
from tasks.retention.inventory import backup_object_names, take_inventory
from tasks.storage.destinations import Destination
from tests.backup_helpers import invoke_dbops, object_names
from tests.conftest import DATA, REPO, content_checksums, new_database, psql, schema_dump

EXTRAS = """
CREATE TABLE empty_one (id integer PRIMARY KEY, note text);
CREATE TABLE loose (a integer, b text, doubled integer GENERATED ALWAYS AS (a * 2) STORED);
INSERT INTO loose (a, b)
SELECT i, repeat('x', i % 100) || E'\\n\\ttab\\\\' || i FROM generate_series(1, 30000) i;
SELECT nextval('billing.invoice_number') FROM generate_series(1, 3);
DO $$ BEGIN FOR i IN 1..60 LOOP EXECUTE format(
  'CREATE TABLE small_%s (id integer PRIMARY KEY, v text);
   INSERT INTO small_%s SELECT g, md5(g::text) || E''\\\\.'' FROM generate_series(1, %s) g',
  i, i, i); END LOOP; END $$;
"""
SMALL = [f"public.small_{i}" for i in range(1, 61)]


def scalar(url: str, query: str):
    with ConnInfo.parse(url).connect() as conn:
        return conn.execute(query).fetchone()[0]  # type: ignore[index]


def scratch_databases(url: str) -> list[str]:
    with ConnInfo.parse(url).with_dbname("postgres").connect() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE '%%\\_\\_dbops\\_%%'"
        ).fetchall()
    return [name for (name,) in rows]


def test_parallel_backup_restores_exactly_and_a_damaged_object_changes_nothing(
    prefect, pg, rich_db, bucket, s3_client
):
    psql(rich_db, "-q", "-c", EXTRAS)
    url = f"s3://{bucket}/parallel"
    destination = Destination.from_url(url, s3_options_from_env())
    backed_up = invoke_dbops(
        "backup", "--format", "parallel", "--jobs", "2", "--chunk-mb", "1", "--to", url,
        "--database-url", rich_db, "--json",
    )  # fmt: skip
    assert backed_up.exit_code == 0, backed_up.output
    manifest = Manifest.model_validate(json.loads(backed_up.output))

    # The large table in ctid chunks, the small ones in batch objects: far fewer objects than
    # tables, rows counted from the stream, per table.
    assert manifest.format == "parallel" and manifest.jobs == 2
    batched = [o for o in manifest.objects if o.tables]
    in_batches = [entry.table for o in batched for entry in o.tables]
    assert set(SMALL) <= set(in_batches) and len(in_batches) == len(set(in_batches))
    assert len(manifest.objects) * 5 < len(manifest.row_counts), len(manifest.objects)
    assert all(manifest.row_counts[e.table] == e.rows for o in batched for e in o.tables)
    loose = [o for o in manifest.objects if o.table == "public.loose"]
    assert len(loose) > 1 and all(o.chunk for o in loose)
    assert sum(o.rows or 0 for o in loose) == manifest.row_counts["public.loose"] == 30000
    assert manifest.row_counts["public.empty_one"] == 0
    with ConnInfo.parse(rich_db).connect() as conn:
        assert manifest.row_counts == table_row_counts(conn)
    scripts: list[bytes] = []
    for obj in manifest.objects:  # plain gzip of COPY text: stock gunzip reads every object
        body = s3_client.get_object(Bucket=bucket, Key=f"parallel/{obj.name}")["Body"].read()
        text = subprocess.run(["gunzip", "-c"], input=body, capture_output=True, check=True)
        assert obj.table is None or text.stdout.count(b"\n") == obj.rows
        if obj.tables:
            scripts.append(text.stdout)
    # A batch is a psql script: stock pg_restore (pre-data) and psql load its tables exactly.
    stock = new_database(pg, "stock")
    schema = s3_client.get_object(Bucket=bucket, Key=f"parallel/{manifest.dump.name}")
    tools = {
        t: find_client_tool(t, int(manifest.server_version.split(".")[0])).path
        for t in ("pg_restore", "psql")
    }
    env = ConnInfo.parse(stock).child_env()
    pre = [tools["pg_restore"], "--section=pre-data", "-d", ConnInfo.parse(stock).dbname]
    subprocess.run(pre, input=schema["Body"].read(), env=env, check=True, capture_output=True)
    for script in scripts:
        load = [tools["psql"], "--no-psqlrc", "-q", "-v", "ON_ERROR_STOP=1"]
        subprocess.run(load, input=script, env=env, check=True, capture_output=True)
    loaded, source = content_checksums(stock), content_checksums(rich_db)
    assert {t: loaded[t] for t in in_batches} == {t: source[t] for t in in_batches}
    rest = [o for o in manifest.objects if o.table is None and not o.tables]
    assert len(rest) == 1  # sequences and large objects: pg_dump's data section, tables left out
    # Every stored object is the manifest's, and prune's list of the backup names them all.
    stored = {n for n in object_names(destination) if n.startswith(manifest.backup_id + ".")}
    assert stored == set(backup_object_names(manifest, records_by_backup(stored))) - {
        manifest.backup_id + ".verified.json"
    }
    assert read_back_dump(destination, manifest).stored_bytes == manifest.dump.size
    for name in (manifest.dump.name, loose[0].name):  # any of its objects: the whole backup
        assert resolve_source(f"{url}/{name}", url).manifest == manifest

    # Restore from S3 by two loaders, then verify: content, schema, sequence values exact.
    target = new_database(pg, "parallel_target")
    result = invoke_dbops(
        "restore", manifest.backup_id, "--from", url, "--database-url", target, "--jobs", "2",
        "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    restored = json.loads(result.output)
    assert restored["checksum_verified"] and restored["row_counts_checked"]
    assert restored["mismatched_tables"] == {}
    assert content_checksums(target) == content_checksums(rich_db)
    assert "pg_largeobject" in content_checksums(target)
    assert schema_dump(target) == schema_dump(rich_db)
    sequence = "SELECT last_value, is_called FROM billing.invoice_number"
    assert scalar(target, sequence) == scalar(rich_db, sequence)

    verified = invoke_dbops(
        "verify", manifest.backup_id, "--from", url, "--database-url", rich_db, "--json"
    )
    assert verified.exit_code == 0, verified.output
    record = json.loads(verified.output)
    assert record["ok"] and record["row_counts_match"], record

    # One flipped byte in a batch, then in one chunk: the restore fails before the swap, the
    # target untouched.
    psql(target, "-q", "-c", "INSERT INTO empty_one VALUES (1, 'only in the target')")
    before = content_checksums(target)
    for victim in (batched[0].name, loose[len(loose) // 2].name):
        key = f"parallel/{victim}"
        good = s3_client.get_object(Bucket=bucket, Key=key)["Body"].read()
        data = bytearray(good)
        data[len(data) // 2] ^= 0x01
        s3_client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
        failed = invoke_dbops(
            "restore", manifest.backup_id, "--from", url, "--database-url", target, "--clean"
        )
        assert failed.exit_code != 0
        assert victim in failed.output or "corrupt" in failed.output, failed.output
        assert content_checksums(target) == before
        assert scratch_databases(target) == []
        with pytest.raises(BackupFaultError):
            read_back_dump(destination, manifest)
        s3_client.put_object(Bucket=bucket, Key=key, Body=good)


KILLED = """
import sys, time
from pathlib import Path
from tasks.backup.parallel import run_parallel_backup
from tasks.backup.pipeline import BackupRequest
from tasks.core.postgres import ConnInfo
from tasks.storage.destinations import Destination

url, where, marker = sys.argv[1:]
calls = []

def progress(raw: int) -> None:
    calls.append(raw)
    if len(calls) == 3:  # some objects are stored by now: die here, before the manifest
        Path(marker).touch()
        time.sleep(120)

request = BackupRequest(ConnInfo.parse(url), Destination.from_url(where), "parallel", jobs=1,
                        chunk_bytes=64 * 1024)
run_parallel_backup(request, progress)
"""


def test_a_killed_parallel_backup_leaves_no_manifest(pg, tmp_path):
    url = new_database(pg, "killed")
    psql(
        url, "-q", "-c",
        "CREATE TABLE t (id integer PRIMARY KEY, body text);"
        "INSERT INTO t SELECT i, repeat(md5(i::text), 4) FROM generate_series(1, 20000) i",
    )  # fmt: skip
    where, marker = tmp_path / "backups", tmp_path / "marker"
    where.mkdir()
    process = subprocess.Popen(
        [sys.executable, "-c", KILLED, url, str(where), str(marker)], cwd=REPO, env=os.environ
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), "the backup never got going"
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.kill()
        process.wait()

    destination = Destination.from_url(str(where))
    names = object_names(destination)
    assert any(".t00001-" in n for n in names)  # chunks were stored...
    assert not any(n.endswith(MANIFEST_SUFFIX) for n in names)  # ...but no manifest
    assert list_manifests(destination) == []
    (started,) = take_inventory(destination).started  # prune's to clean, claim last
    assert set(started.present) == {n for n in names if not Path(n).name.startswith(".")}
    assert started.present[-1].endswith(".started.json")


def test_parallel_backup_of_postgresql_15_with_its_own_pg_dump(pg15, tmp_path):
    """pg_dump 15 has no --filter: the workers' tables are left out table by table."""
    url = new_database(pg15, "old_server")
    psql(url, "-q", "-f", str(DATA / "rich_schema.sql"))
    psql(url, "-q", "-c", "CREATE TABLE loose AS SELECT i, repeat('y', 80) AS b "
         "FROM generate_series(1, 20000) i")  # fmt: skip
    destination = Destination.from_url(str(tmp_path))
    manifest = run_parallel_backup(
        BackupRequest(ConnInfo.parse(url), destination, "parallel", chunk_bytes=512 * 1024)
    )
    assert manifest.pg_dump_version.startswith("15")
    assert len([o for o in manifest.objects if o.table == "public.loose"]) > 1
    target = new_database(pg15, "restored")  # empty: restored into without --clean
    run_restore(resolve_source(manifest.backup_id, str(tmp_path)), ConnInfo.parse(target))
    assert content_checksums(target) == content_checksums(url)
    assert schema_dump(target) == schema_dump(url)
    sequence = "SELECT last_value, is_called FROM billing.invoice_number"
    assert scalar(target, sequence) == scalar(url, sequence)

    # A LATIN1 database: its rows are stored as LATIN1 text and converted into a UTF8 target.
    latin = f"latin_{uuid.uuid4().hex[:8]}"
    with ConnInfo.parse(pg15.url("postgres", password="")).connect() as conn:
        conn.execute(
            f"CREATE DATABASE {latin} TEMPLATE template0 ENCODING 'LATIN1' "
            "LC_COLLATE 'C' LC_CTYPE 'C'"
        )
    source = pg15.url(latin, password="")
    with ConnInfo.parse(source).connect() as conn:  # psycopg encodes to LATIN1
        conn.execute("CREATE TABLE word (w text)")
        conn.execute("INSERT INTO word VALUES (%s)", ["café ñ"])
    where = Destination.from_url(str(tmp_path / "latin"))
    latin_backup = run_parallel_backup(BackupRequest(ConnInfo.parse(source), where, "parallel"))
    assert latin_backup.encoding == "LATIN1"
    utf8 = pg15.url(f"{latin}_utf8", password="")  # created by the restore, in UTF8
    run_restore(resolve_source(latin_backup.backup_id, where.url), ConnInfo.parse(utf8))
    assert scalar(utf8, "SELECT w || current_setting('server_encoding') FROM word") == "café ñUTF8"


HELD = """SELECT count(*) FROM pg_locks
            WHERE relation = 'small'::regclass AND mode = 'AccessExclusiveLock'"""


def test_ddl_during_a_parallel_backup_fails_it_and_leaves_nothing(pg, tmp_path):
    """An ALTER TABLE not yet committed when a worker reaches its table: the worker's NOWAIT
    lock fails, every object already stored is deleted, claim included, and no manifest is
    written."""
    url = new_database(pg, "ddl")
    psql(
        url, "-q", "-c",
        "CREATE TABLE big AS SELECT i, repeat('z', 200) AS b FROM generate_series(1, 30000) i;"
        "CREATE TABLE small (i integer); INSERT INTO small VALUES (1)",
    )  # fmt: skip
    destination = Destination.from_url(str(tmp_path))
    queued = threading.Event()
    locker = ConnInfo.parse(url).connect(autocommit=False)

    def alter_small() -> None:
        with contextlib.suppress(Exception):  # a backup that waited would fail this test
            locker.execute("SET lock_timeout = '30s'")  # after 30 s, not hang it
            locker.execute("ALTER TABLE small ADD COLUMN j integer")  # held, uncommitted

    def progress(raw: int) -> None:  # the large table is being copied, `small` comes next
        if not queued.is_set():
            queued.set()
            threading.Thread(target=alter_small, daemon=True).start()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and not scalar(url, HELD):
                time.sleep(0.05)

    try:
        request = BackupRequest(ConnInfo.parse(url), destination, "parallel", jobs=1)
        with pytest.raises(DbopsError, match="locked exclusively"):
            run_parallel_backup(request, progress)
    finally:
        locker.rollback()
        locker.close()
    assert queued.is_set()
    assert object_names(destination) == set()  # stored objects and the claim deleted


@pytest.mark.parametrize(
    "ddl", ["TRUNCATE small", "DROP TABLE small", "ALTER TABLE small ALTER COLUMN i TYPE bigint"]
)
def test_a_table_dropped_or_rewritten_during_a_parallel_backup_fails_it(pg, tmp_path, ddl):
    """No connection holds every table's lock (the lock table would need twice a plain
    backup's slots): DDL committed after the snapshot but before a worker reaches its table
    is caught there (a gone name, a new relfilenode), never stored as an empty or wrong table."""
    url = new_database(pg, "dropped")
    psql(
        url, "-q", "-c",
        "CREATE TABLE big AS SELECT i, repeat('z', 200) AS b FROM generate_series(1, 30000) i;"
        "CREATE TABLE small (i integer); INSERT INTO small VALUES (1)",
    )  # fmt: skip
    destination = Destination.from_url(str(tmp_path))
    done: list[str] = []

    def progress(raw: int) -> None:  # `big` is being copied, `small` comes next
        if not done:
            with ConnInfo.parse(url).connect() as conn:  # autocommit: committed before `small`
                conn.execute(ddl)
            done.append(ddl)

    request = BackupRequest(ConnInfo.parse(url), destination, "parallel", jobs=1)
    with pytest.raises(DbopsError, match="dropped or changed during the backup"):
        run_parallel_backup(request, progress)
    assert done
    assert object_names(destination) == set()

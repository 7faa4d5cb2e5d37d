"""restore-database: refuses to overwrite, replaces only when asked, never commits a corrupt backup."""

from __future__ import annotations

import gzip
import subprocess

import pytest

from flows.backup import backup_database
from flows.restore import restore_database
from tasks.core.client_tools import find_client_tool
from tasks.core.postgres import ConnInfo
from tests.conftest import content_checksums, new_database


def run_backup(url, where):
    state = backup_database(database_url=url, backup_url=str(where), return_state=True)
    assert state.is_completed(), state.message
    return state.result()


def run_restore(**kwargs):
    return restore_database(**kwargs, retries=0, return_state=True)


def make_table(url: str, rows: int) -> None:
    with ConnInfo.parse(url).connect() as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS keepme(id int)")
        conn.execute("INSERT INTO keepme SELECT generate_series(1, %s)", [rows])


def test_refuses_to_overwrite_a_non_empty_database(prefect, pg, sample_db, tmp_path):
    manifest = run_backup(sample_db, tmp_path)
    target = new_database(pg, "busy")
    make_table(target, 5)
    before = content_checksums(target)
    state = run_restore(source=manifest.backup_id, database_url=target, backup_url=str(tmp_path))
    assert state.is_failed()
    assert "is not empty" in state.message and "--clean" in state.message
    assert content_checksums(target) == before


def test_clean_replaces_the_database(prefect, pg, sample_db, tmp_path):
    manifest = run_backup(sample_db, tmp_path)
    target = new_database(pg, "replace")
    make_table(target, 5)
    state = run_restore(
        source=manifest.backup_id, database_url=target, backup_url=str(tmp_path), clean=True
    )
    assert state.is_completed(), state.message
    assert state.result().replaced_existing is True
    assert content_checksums(target) == content_checksums(sample_db)


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_backup_is_refused_and_target_untouched(prefect, pg, sample_db, tmp_path, damage):
    manifest = run_backup(sample_db, tmp_path)
    dump = tmp_path / manifest.dump.name
    data = bytearray(dump.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0xFF
    else:
        data = data[: len(data) - 1000]
    dump.write_bytes(bytes(data))
    target = new_database(pg, "victim")
    make_table(target, 7)
    before = content_checksums(target)
    state = run_restore(
        source=manifest.backup_id, database_url=target, backup_url=str(tmp_path), clean=True
    )
    assert state.is_failed()
    assert any(word in state.message for word in ("SHA-256", "corrupt", "truncated", "bytes but"))
    assert content_checksums(target) == before
    with ConnInfo.parse(target).with_dbname("postgres").connect() as conn:
        leftovers = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE '%dbops_restore%'"
        ).fetchall()
    assert leftovers == []


def test_restores_a_dump_made_by_the_guides_own_script(prefect, pg, sample_db, tmp_path):
    """`pg_dump $DATABASE_URL | gzip > backup.sql.gz`, no manifest: restorable, flagged unverified."""
    info = ConnInfo.parse(sample_db)
    dump = subprocess.run(
        [find_client_tool("pg_dump", 18).path],
        env=info.child_env(),
        capture_output=True,
        check=True,
    ).stdout
    guide_file = tmp_path / "ai_saas_20251009_020000.sql.gz"
    guide_file.write_bytes(gzip.compress(dump))
    target = new_database(pg, "fromguide")
    state = run_restore(source=str(guide_file), database_url=target)
    assert state.is_completed(), state.message
    assert state.result().checksum_verified is False
    assert content_checksums(target) == content_checksums(sample_db)


def test_a_sql_error_stops_the_restore_and_leaves_nothing(prefect, pg, tmp_path):
    broken = tmp_path / "broken.sql"
    broken.write_text(
        "CREATE TABLE a(id int);\nINSERT INTO a VALUES (1);\nSELECT nonsense FROM;\n"
        "CREATE TABLE b(id int);\n"
    )
    target = new_database(pg, "stops")
    state = run_restore(source=str(broken), database_url=target)
    assert state.is_failed()
    assert "psql stopped at the first error" in state.message
    assert content_checksums(target) == {}


def test_latest_picks_the_newest_backup_of_the_database(prefect, pg, sample_db, tmp_path):
    run_backup(sample_db, tmp_path)
    make_table(sample_db, 3)
    newest = run_backup(sample_db, tmp_path)
    target = new_database(pg, "latest")
    state = run_restore(
        source="latest",
        database_url=target,
        backup_url=str(tmp_path),
        from_database=sample_db.rsplit("/", 1)[-1],
    )
    assert state.is_completed(), state.message
    assert state.result().backup_id == newest.backup_id
    assert content_checksums(target)["public.keepme"][0] == 3


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("nothing_here_20200101_000000", "is not a backup"),
        ("latest", "no backup of database"),
        ("/etc/hostname", "is not a backup"),
        ("/tmp/missing.sql.gz", "does not exist"),
    ],
)
def test_bad_sources_get_one_line_errors(prefect, pg, tmp_path, source, expected):
    target = new_database(pg, "bad")
    state = run_restore(source=source, database_url=target, backup_url=str(tmp_path))
    assert state.is_failed()
    assert expected in state.message

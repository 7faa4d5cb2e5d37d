"""migrate-database restores only when something of the run committed, says exactly what, records
a migration that started and did not finish, and holds the database's dbops slot for the whole
run. Real PostgreSQL sessions block it, write beside it and hold its slot."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from flows.backup import backup_database
from tasks.core.postgres import ConnInfo
from tasks.core.slots import database_slot
from tasks.migrations.files import discover_migrations
from tasks.migrations.runner import RunOptions, apply_migration
from tests.test_migrate import (
    BASE_SCHEMA,
    GOOD,
    backups,
    execute,
    history,
    migrate,
    migrate_impatiently,
    run_dbops,
    snapshot,
    write_migrations,
)


@pytest.fixture
def app_db(pg) -> str:
    from tests.conftest import new_database

    url = new_database(pg, "safe")
    execute(url, BASE_SCHEMA + "CREATE TABLE writes (id bigint PRIMARY KEY);")
    return url


class Writer(threading.Thread):
    """The application: inserts one row at a time and remembers every acknowledged one."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.acknowledged: list[int] = []
        self.stop = threading.Event()

    def run(self) -> None:
        with psycopg.connect(**ConnInfo.parse(self.url).params, autocommit=True) as conn:
            n = 0
            while not self.stop.is_set():
                n += 1
                conn.execute("INSERT INTO writes VALUES (%s)", [n])
                self.acknowledged.append(n)
                time.sleep(0.005)


def ids_in(url: str) -> set[int]:
    with ConnInfo.parse(url).connect() as conn:
        return {row[0] for row in conn.execute("SELECT id FROM writes")}


def test_lock_never_granted_restores_nothing_and_loses_no_write(prefect, app_db, tmp_path):
    """A report holds a lock on "User" for the whole run; the application keeps writing."""
    root = write_migrations(tmp_path / "m", {"0001_plan.sql": 'ALTER TABLE "User" ADD plan text;'})
    report = psycopg.connect(**ConnInfo.parse(app_db).params)  # an open transaction
    report.execute('LOCK TABLE "User" IN ACCESS SHARE MODE')
    report.execute('SELECT count(*) FROM "User", "Message"')
    writer = Writer(app_db)
    writer.start()
    where = tmp_path / "backups"
    try:
        state = migrate_impatiently(app_db, where, root)
        time.sleep(0.3)  # a few more writes after the run ended
    finally:
        writer.stop.set()
        writer.join()
        report.close()
    assert state.is_failed()
    [manifest] = backups(where)
    message = state.message
    assert "gave up after 3 attempts" in message and "55P03" in message
    assert "nothing was applied; the database was not restored (no write lost)" in message
    assert f"pre-migration backup {manifest.backup_id}" in message
    assert "rolled back" not in message
    # Writes were acknowledged after the backup was taken: a restore would have lost them.
    assert manifest.row_counts["public.writes"] < len(writer.acknowledged)
    assert set(writer.acknowledged) <= ids_in(app_db)
    assert history(app_db) == []
    assert "plan" not in snapshot(app_db)[0]


def test_rollback_says_which_migrations_were_applied_and_undone(prefect, app_db, tmp_path):
    root = write_migrations(
        tmp_path / "m",
        {
            "0001_email.sql": GOOD["0001_add_email.sql"],
            "0002_audit.sql": "-- dbops:no-transaction\n"
            'CREATE TABLE "Audit" (id int);\nCREATE INDEX CONCURRENTLY a_id ON "Audit" (id);\n'
            "SELECT 1/0;\n",
        },
    )
    before = snapshot(app_db)
    where = tmp_path / "backups"
    state = migrate(database_url=app_db, backup_url=str(where), migrations=str(root))
    assert state.is_failed()
    [manifest] = backups(where)
    message = state.message
    assert f"restored from pre-migration backup {manifest.backup_id}" in message
    assert "migration 0002_audit failed at statement 3" in message
    assert (
        "applied and undone: 0001_email, 0002_audit (statements 1-2 of it, outside a "
        "transaction)" in message
    )
    assert snapshot(app_db) == before


def test_history_row_outside_a_transaction_is_committed_before_the_first_statement(
    app_db, tmp_path
):
    root = write_migrations(
        tmp_path / "m", {"0001_slow.sql": "-- dbops:no-transaction\nSELECT pg_sleep(2);\n"}
    )
    [migration] = discover_migrations(root)
    runner = threading.Thread(
        target=apply_migration, args=(ConnInfo.parse(app_db), migration, "r", RunOptions())
    )
    runner.start()
    deadline = time.monotonic() + 10
    seen: list = []
    while time.monotonic() < deadline and not seen:
        seen = history(app_db)  # another session: sees only what is committed
        time.sleep(0.1)
    runner.join()
    assert [(r.id, r.finished_at) for r in seen] == [("0001_slow", None)]
    assert [r.finished_at is not None for r in history(app_db)] == [True]


def test_unfinished_migration_refuses_the_next_run_until_repair(prefect, app_db, tmp_path):
    """CREATE UNIQUE INDEX CONCURRENTLY fails on duplicates and leaves an INVALID index behind:
    a committed change the runner cannot undo, and the reason the record stays unfinished."""
    execute(app_db, "INSERT INTO \"User\" (name) VALUES ('user 1')")
    root = write_migrations(
        tmp_path / "m",
        {
            "0001_unique_name.sql": "-- dbops:no-transaction\n"
            'CREATE UNIQUE INDEX CONCURRENTLY user_name ON "User" (name);\n'
        },
    )
    where = tmp_path / "backups"
    env = {"DATABASE_URL": app_db, "BACKUP_URL": str(where)}
    state = migrate(database_url=app_db, backup_url=str(where), migrations=str(root))
    assert state.is_failed()
    message = state.message
    assert "23505" in message and "the database was not restored" in message
    assert "migration 0001_unique_name ran outside a transaction and stopped part way" in message
    assert "dbops migrate --repair --yes" in message
    assert [(r.id, r.finished_at) for r in history(app_db)] == [("0001_unique_name", None)]

    again = run_dbops("migrate", "--migrations", str(root), api_url=prefect, env=env)
    assert again.returncode == 1
    errors = [line for line in again.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, again.stderr
    assert "migration 0001_unique_name started at" in errors[0]
    assert "never finished" in errors[0] and "--repair --yes" in errors[0]
    assert len(backups(where)) == 1  # refused before the backup

    unconfirmed = run_dbops("migrate", "--repair", api_url=prefect, env=env)
    assert unconfirmed.returncode == 1 and "add --yes" in unconfirmed.stderr
    assert len(history(app_db)) == 1

    # The operator looked: drops the INVALID index, fixes the data, then repairs.
    execute(app_db, 'DROP INDEX user_name; DELETE FROM "User" WHERE id = 41')
    repaired = run_dbops("migrate", "--repair", "--yes", "--json", api_url=prefect, env=env)
    assert repaired.returncode == 0, repaired.stderr[-2000:]
    assert json.loads(repaired.stdout)["repaired"] == ["0001_unique_name"]
    assert history(app_db) == []

    done = migrate(database_url=app_db, backup_url=str(where), migrations=str(root))
    assert done.is_completed(), done.message
    assert [r.id for r in history(app_db)] == ["0001_unique_name"]


@contextmanager
def slot_held_elsewhere(url: str) -> Iterator[None]:
    """Another dbops job (another thread, so another run's context) holds the slot."""
    held, release = threading.Event(), threading.Event()

    def job() -> None:
        with database_slot(ConnInfo.parse(url), 30):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=job, daemon=True)
    thread.start()
    assert held.wait(30)
    try:
        yield
    finally:
        release.set()
        thread.join()


def test_migration_waits_for_another_job_on_the_database(prefect, app_db, tmp_path):
    root = write_migrations(tmp_path / "m", {"0001_a.sql": "CREATE TABLE a (id int);"})
    where = tmp_path / "backups"
    before = snapshot(app_db)
    with slot_held_elsewhere(app_db):
        state = migrate(
            database_url=app_db, backup_url=str(where), migrations=str(root), slot_wait_seconds=1
        )
    assert state.is_failed() and "another dbops job held" in state.message
    assert backups(where) == [] and snapshot(app_db) == before


def test_backup_waits_while_a_migration_runs(prefect, app_db, tmp_path):
    """The slot is held from the lock to the end: a backup started mid-migration waits; the
    pre-migration backup inside the run does not wait for its own run."""
    root = write_migrations(
        tmp_path / "m", {"0001_slow.sql": 'ALTER TABLE "User" ADD c int;\nSELECT pg_sleep(4);\n'}
    )
    where = tmp_path / "backups"
    result: dict = {}
    runner = threading.Thread(
        target=lambda: result.update(
            state=migrate(database_url=app_db, backup_url=str(where), migrations=str(root))
        )
    )
    runner.start()
    deadline = time.monotonic() + 60
    with ConnInfo.parse(app_db).connect(autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(4)%'"
            ).fetchone()
            if row and row[0]:
                break
            time.sleep(0.1)
    blocked = backup_database(
        database_url=app_db,
        backup_url=str(tmp_path / "nightly"),
        slot_wait_seconds=1,
        retries=0,
        return_state=True,
    )
    runner.join()
    assert blocked.is_failed() and "another dbops job held" in blocked.message
    assert not (tmp_path / "nightly").exists() or list((tmp_path / "nightly").iterdir()) == []
    assert result["state"].is_completed(), result["state"].message
    assert len(backups(where)) == 1

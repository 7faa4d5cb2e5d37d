"""migrate-database restores only when something of the run committed, says exactly what, records
a migration that started and did not finish, and holds the database's dbops slot for the whole
run. Real PostgreSQL sessions block it, write beside it and hold its slot."""

from __future__ import annotations

import gzip
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest

from flows.backup import backup_database
from flows.verify import verify_backup
from tasks.backup.encryption import can_open, fingerprint, load_identity, parse_recipients
from tasks.backup.manifest import list_manifests
from tasks.core.errors import ConfigError
from tasks.core.postgres import ConnInfo
from tasks.core.slots import database_slot
from tasks.migrations.files import discover_migrations
from tasks.migrations.rollback_key import rollback_identity
from tasks.migrations.runner import RunOptions, apply_migration
from tasks.storage.destinations import Destination
from tests.conftest import run_cli
from tests.prefect_records import flow_run_ids, records_text
from tests.test_encryption import AGE_MAGIC, keypair
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


def test_encrypted_pre_migration_backup_needs_its_key_first_and_a_failed_check_rolls_back(
    prefect, app_db, bucket, s3_client, tmp_path, monkeypatch
):
    """With DBOPS_AGE_RECIPIENTS set for every backup, the pre-migration backup is encrypted too;
    a run without an identity that opens it refuses in one line before anything, and a failed
    check rolls back from the encrypted backup, decrypted in-process with the identity."""
    public, secret = keypair(tmp_path / "key.txt")
    keypair(tmp_path / "other.txt")  # an identity of nobody the backup is encrypted to
    monkeypatch.setenv("DBOPS_AGE_RECIPIENTS", public)
    monkeypatch.delenv("DBOPS_AGE_IDENTITY", raising=False)
    root = write_migrations(tmp_path / "m", {"0001_email.sql": GOOD["0001_add_email.sql"]})
    checks = tmp_path / "checks.sql"
    checks.write_text('SELECT count(*) = 0 FROM "User";\n')  # false: the check fails
    url = f"s3://{bucket}/pre"
    before = snapshot(app_db)
    runs = flow_run_ids()

    def stored() -> list[str]:
        return [o["Key"] for o in s3_client.list_objects_v2(Bucket=bucket).get("Contents", [])]

    refusals = {
        None: "encrypted to 1 recipient but no identity can open it: give --identity or "
        "DBOPS_AGE_IDENTITY",
        str(tmp_path / "other.txt"): "opens none of the 1 recipient the pre-migration backup",
    }
    for identity, expected in refusals.items():
        state = migrate(
            database_url=app_db,
            backup_url=url,
            migrations=str(root),
            verify_sql=str(checks),
            identity=identity,
        )
        assert state.is_failed() and expected in state.message, state.message
        assert "\n" not in state.message.strip()
        assert "nothing was backed up or migrated" in state.message
    assert stored() == [] and history(app_db) == [] and snapshot(app_db) == before

    # The command line refuses the same before Prefect starts, and an inline key too.
    env = {"DATABASE_URL": app_db}
    for extra, expected in (([], "no identity can open it"), (["--identity", secret], "never")):
        done = run_cli("migrate", "--migrations", str(root), "--to", url, *extra, env=env)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, done.stderr
        assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
        assert secret not in done.stderr + done.stdout
    assert stored() == [] and history(app_db) == []

    state = migrate(
        database_url=app_db,
        backup_url=url,
        migrations=str(root),
        verify_sql=str(checks),
        identity=str(tmp_path / "key.txt"),
    )
    assert state.is_failed()
    [manifest] = list_manifests(Destination.from_url(url), None)
    assert f"restored from pre-migration backup {manifest.backup_id}" in state.message
    assert "applied and undone: 0001_email" in state.message
    assert snapshot(app_db) == before and history(app_db) == []
    assert manifest.dump.name == f"{manifest.backup_id}.sql.gz.age"
    assert manifest.encryption is not None
    assert manifest.encryption.recipients == [fingerprint(public)]
    body = s3_client.get_object(Bucket=bucket, Key=f"pre/{manifest.dump.name}")["Body"].read()
    assert body.startswith(AGE_MAGIC) and b"CREATE TABLE" not in body
    opened = subprocess.run(
        ["age", "-d", "-i", str(tmp_path / "key.txt")], input=body, capture_output=True, check=True
    ).stdout
    assert b"PostgreSQL database dump complete" in gzip.decompress(opened)

    # The key from DBOPS_AGE_IDENTITY: verify the encrypted backup, then a migration that must
    # pass its rehearsal first (restored from that backup) backs up encrypted and applies.
    monkeypatch.setenv("DBOPS_AGE_IDENTITY", str(tmp_path / "key.txt"))
    record = verify_backup(source=manifest.backup_id, database_url=app_db, backup_url=url)
    assert record.ok
    state = migrate(
        database_url=app_db, backup_url=url, migrations=str(root), require_rehearsal=True
    )
    assert state.is_completed(), state.message
    assert [r.id for r in history(app_db)] == ["0001_email"]
    second = state.result().backup
    assert second.backup_id != manifest.backup_id and second.url.endswith(".sql.gz.age")

    records = records_text(flow_run_ids() - runs)
    assert "will be encrypted with age to" in records  # the records were read
    assert secret not in records and "AGE-SECRET-KEY" not in records


def test_an_ssh_identity_is_proven_by_a_round_trip(tmp_path):
    """An ssh identity's public key cannot be derived: a few bytes are encrypted to the
    recipients and decrypted with it."""
    for name in ("ops", "stranger"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / name)],
            check=True,
        )
    ops_public = (tmp_path / "ops.pub").read_text()
    age_public, _ = keypair(tmp_path / "age.txt")
    recipients = parse_recipients([ops_public])
    assert recipients is not None
    ops = load_identity(str(tmp_path / "ops"))
    assert ops.public_fingerprints is None  # not checkable by fingerprint
    assert can_open(ops, recipients)
    assert rollback_identity(recipients, str(tmp_path / "ops")) is not None
    with pytest.raises(ConfigError, match="opens none of the 1 recipient"):
        rollback_identity(recipients, str(tmp_path / "stranger"))
    both = parse_recipients([ops_public, age_public])
    assert both is not None and can_open(load_identity(str(tmp_path / "age.txt")), both)
    assert rollback_identity(None, None) is None  # not encrypted: no key needed

"""migrate-database: plan, pre-migration backup, built-in runner or Alembic, verify, and a rollback
that leaves the database exactly as it was (schema dump and per-table content checksums)."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest
from prefect.artifacts import Artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

from flows.migrate import migrate_database
from tasks.backup.manifest import list_manifests
from tasks.core.errors import DbopsError
from tasks.core.postgres import ConnInfo
from tasks.migrations.checks import builtin_checks, capture_baseline, sql_checks
from tasks.migrations.files import discover_migrations
from tasks.migrations.history import read_history, read_prisma_history
from tasks.migrations.lock import migration_lock
from tasks.migrations.plan import plan_directory
from tasks.migrations.runner import RunOptions, apply_migration
from tasks.migrations.statements import split_statements
from tasks.storage.destinations import Destination
from tests.conftest import content_checksums, new_database, run_cli, schema_dump

ALEMBIC_PROJECT = Path(__file__).parent / "alembic_project"
ALEMBIC = str(Path(sys.executable).parent / "alembic")

BASE_SCHEMA = """
CREATE TABLE "User" (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE "Message" (id serial PRIMARY KEY, user_id int REFERENCES "User"(id), body text);
INSERT INTO "User" (name) SELECT 'user ' || g FROM generate_series(1, 40) g;
INSERT INTO "Message" (user_id, body) SELECT 1 + g % 40, md5(g::text) FROM generate_series(1, 300) g;
"""


def execute(url: str, text: str) -> None:
    with ConnInfo.parse(url).connect() as conn:
        conn.execute(text.encode())


@pytest.fixture
def app_db(pg) -> str:
    """A small guide-shaped database: two tables, 340 rows."""
    url = new_database(pg, "mig")
    execute(url, BASE_SCHEMA)
    return url


def write_migrations(directory: Path, files: dict[str, str]) -> Path:
    """{"0001_x.sql": sql} or {"20240101000000_x/migration.sql": sql}."""
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


def snapshot(url: str) -> tuple[str, dict]:
    return schema_dump(url), content_checksums(url)


def migrate(**kwargs):
    defaults = {"lock_wait_seconds": 5, "retry_delay_seconds": 0.1, "return_state": True}
    return migrate_database(**{**defaults, **kwargs})


def migrate_impatiently(url: str, where: Path, root: Path):
    """A short lock_timeout and two retries: a held lock fails the run within a second."""
    return migrate(
        database_url=url,
        backup_url=str(where),
        migrations=str(root),
        lock_timeout_seconds=0.2,
        lock_retries=2,
    )


def history(url: str) -> list:
    with ConnInfo.parse(url).connect() as conn:
        return read_history(conn)


def backups(where: Path) -> list:
    return list_manifests(Destination.from_url(str(where)), None) if where.exists() else []


GOOD = {
    "0001_add_email.sql": """
        ALTER TABLE "User" ADD COLUMN email text;
        UPDATE "User" SET email = name || '@example.com';
        ALTER TABLE "User" ALTER COLUMN email SET NOT NULL;
    """,
    "20240102030405_conversations/migration.sql": """
        CREATE TABLE "Conversation" (id serial PRIMARY KEY, title text);
        INSERT INTO "Conversation" (title) VALUES ('first; with a semicolon');
        CREATE FUNCTION conversation_count() RETURNS bigint LANGUAGE plpgsql
            AS $$ BEGIN RETURN (SELECT count(*) FROM "Conversation"); END $$;
    """,
    "20240102030406_index_messages/migration.sql": """-- dbops:no-transaction
        CREATE INDEX CONCURRENTLY idx_messages_user ON "Message" (user_id);
    """,
}


# ---------------------------------------------------------------------------
# The runner's parts, without the flow
# ---------------------------------------------------------------------------


def test_split_statements_runs_like_psql(app_db):
    text = r"""
        -- a comment; with a semicolon
        CREATE TABLE t (id int, note text DEFAULT 'a;b');
        /* block; /* nested; */ comment */
        INSERT INTO t VALUES (1, E'it\'s;'), (2, 'don''t;'), (3, $tag$x;y$tag$);
        CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC
            SELECT 1; SELECT CASE WHEN true THEN 2 END; END;
        CREATE RULE r AS ON UPDATE TO t DO ALSO (NOTIFY a; NOTIFY b);
        SELECT "we;ird" FROM (SELECT 1 AS "we;ird") s
    """
    statements = split_statements(text)
    assert [s.first_word for s in statements] == [
        "create", "insert", "create", "create", "select",
    ]  # fmt: skip
    assert [s.line for s in statements] == [3, 5, 6, 8, 9]
    with ConnInfo.parse(app_db).connect() as conn:
        for statement in statements:
            conn.execute(statement.sql.encode())
        assert conn.execute("SELECT f()").fetchone()[0] == 2
        notes = [r[0] for r in conn.execute("SELECT note FROM t ORDER BY id")]
    assert notes == ["it's;", "don't;", "x;y"]


def test_discovery_orders_both_layouts_and_refuses_bad_names(tmp_path):
    root = write_migrations(tmp_path / "m", GOOD)
    (root / "migration_lock.toml").write_text('provider = "postgresql"\n')  # Prisma's, ignored
    found = discover_migrations(root)
    assert [m.id for m in found] == [
        "0001_add_email",
        "20240102030405_conversations",
        "20240102030406_index_messages",
    ]
    assert [m.layout for m in found] == ["file", "prisma", "prisma"]
    assert [m.transactional for m in found] == [True, True, False]
    assert found[1].statements == 3

    (root / "notes.sql").write_text("SELECT 1;")
    with pytest.raises(DbopsError, match="NNNN_name.sql"):
        discover_migrations(root)
    (root / "notes.sql").unlink()
    (root / "0001_dup.sql").write_text("SELECT 1;")
    with pytest.raises(DbopsError, match="share the number 1"):
        discover_migrations(root)
    (root / "0001_dup.sql").unlink()
    (root / "0002_tx.sql").write_text("BEGIN;\nCREATE TABLE x(id int);\nCOMMIT;\n")
    with pytest.raises(DbopsError, match="already runs in its own transaction"):
        discover_migrations(root)
    with pytest.raises(DbopsError, match="does not exist"):
        discover_migrations(tmp_path / "nowhere")


def test_history_checksum_drift_and_missing_files(app_db, tmp_path):
    root = write_migrations(tmp_path / "m", GOOD)
    info = ConnInfo.parse(app_db)
    for migration in discover_migrations(root):
        apply_migration(info, migration, "run-123", RunOptions())
    rows = history(app_db)
    assert [r.id for r in rows] == [m.id for m in discover_migrations(root)]
    assert all(r.applied_by == "run-123" and r.finished_at for r in rows)
    assert rows[0].checksum == discover_migrations(root)[0].sha256
    assert plan_directory(discover_migrations(root), rows, "db") == ([], [], [])

    edited = root / "0001_add_email.sql"
    edited.write_text(edited.read_text() + "\n-- an innocent edit\n")
    with pytest.raises(DbopsError, match="checksum drift"):
        plan_directory(discover_migrations(root), rows, "db")
    edited.write_text(GOOD["0001_add_email.sql"].replace("\n", "\r\n"))  # CRLF checkout: same
    assert plan_directory(discover_migrations(root), rows, "db") == ([], [], [])
    edited.unlink()
    with pytest.raises(DbopsError, match="file is missing"):
        plan_directory(discover_migrations(root), rows, "db")


PRISMA_TABLE = """
CREATE TABLE "_prisma_migrations" (
    id varchar(36) PRIMARY KEY, checksum varchar(64) NOT NULL, finished_at timestamptz,
    migration_name varchar(255) NOT NULL, logs text, rolled_back_at timestamptz,
    started_at timestamptz NOT NULL DEFAULT now(), applied_steps_count integer NOT NULL DEFAULT 0);
"""


def test_migrations_prisma_already_applied_are_not_run_again(app_db, tmp_path):
    """A team moving from `prisma migrate deploy`: _prisma_migrations says what is applied."""
    root = write_migrations(
        tmp_path / "m",
        {
            "20240101000000_init/migration.sql": 'CREATE TABLE "Post" (id int);',
            "20240102000000_tags/migration.sql": 'CREATE TABLE "Tag" (id int);',
        },
    )
    execute(
        app_db,
        PRISMA_TABLE + 'CREATE TABLE "Post" (id int);'
        "INSERT INTO _prisma_migrations (id, checksum, finished_at, migration_name) "
        "VALUES ('a', 'x', now(), '20240101000000_init');",
    )

    def plan():
        with ConnInfo.parse(app_db).connect() as conn:
            prisma = read_prisma_history(conn, "public")
            return plan_directory(discover_migrations(root), read_history(conn), "db", prisma)

    assert [m.id for m in plan().pending] == ["20240102000000_tags"]
    assert plan().applied_by_prisma == ["20240101000000_init"]
    execute(
        app_db,
        "INSERT INTO _prisma_migrations (id, checksum, migration_name) "
        "VALUES ('b', 'y', '20240102000000_tags')",
    )
    with pytest.raises(
        DbopsError, match="prisma migrate resolve --rolled-back 20240102000000_tags"
    ):
        plan()


def test_concurrently_needs_the_no_transaction_marker(app_db, tmp_path):
    root = write_migrations(
        tmp_path / "m", {"0001_idx.sql": 'CREATE INDEX CONCURRENTLY i ON "Message" (body);\n'}
    )
    [migration] = discover_migrations(root)
    with pytest.raises(DbopsError, match="-- dbops:no-transaction' the first line") as err:
        apply_migration(ConnInfo.parse(app_db), migration, "r", RunOptions())
    assert "25001" in str(err.value) and "line 1" in str(err.value)
    assert history(app_db) == []  # recorded only with the migration's own transaction


def test_lock_timeout_is_retried_with_backoff(app_db, tmp_path):
    """A session holds a lock for 1 s: the migration times out, backs off, and gets through."""
    root = write_migrations(tmp_path / "m", {"0001_col.sql": 'ALTER TABLE "User" ADD c int;'})
    [migration] = discover_migrations(root)
    blocker = psycopg.connect(**ConnInfo.parse(app_db).params)
    blocker.execute('SELECT 1 FROM "User" LIMIT 1')  # holds ACCESS SHARE in an open transaction
    threading.Timer(1.0, blocker.rollback).start()
    messages: list[str] = []
    options = RunOptions(lock_timeout_seconds=0.2, lock_retries=8, retry_delay_seconds=0.1)
    try:
        result = apply_migration(ConnInfo.parse(app_db), migration, "r", options, messages.append)
    finally:
        time.sleep(0.1)
        blocker.close()
    assert result.lock_retries >= 1
    assert any("lock timeout" in m and "retrying" in m for m in messages)
    assert [r.id for r in history(app_db)] == ["0001_col"]


def test_builtin_checks_find_invalid_indexes_and_not_valid_constraints(app_db):
    info = ConnInfo.parse(app_db)
    before = capture_baseline(info)
    execute(app_db, "INSERT INTO \"User\" (id, name) VALUES (1000, 'dup'), (1001, 'dup')")
    with info.connect() as conn, pytest.raises(psycopg.errors.UniqueViolation):
        conn.execute('CREATE UNIQUE INDEX CONCURRENTLY u_name ON "User" (name)')  # leaves INVALID
    execute(app_db, 'ALTER TABLE "User" ADD CONSTRAINT pos CHECK (id > 0) NOT VALID')
    results = builtin_checks(info, before)
    assert [r.ok for r in results] == [False, False]
    assert "u_name" in results[0].detail and "pos" in results[1].detail
    assert all(r.ok for r in builtin_checks(info, capture_baseline(info)))  # not new: not blamed

    checks = sql_checks(
        info,
        'SELECT count(*) = 1040 FROM "User";\nSELECT id FROM "User" WHERE name = \'dup\';\n'
        "SELECT false;\nSELECT * FROM nowhere;\n",
        "checks.sql",
    )
    assert [c.ok for c in checks] == [False, False, False, False]
    assert "returned 1000" in checks[1].detail and "does not exist" in checks[3].detail
    assert sql_checks(info, 'SELECT count(*) = 42 FROM "User"', "x")[0].ok
    assert sql_checks(info, 'SELECT id FROM "User" WHERE id < 0', "x")[0].ok


def test_migration_lock_polls_and_gives_up_naming_the_holder(app_db):
    info = ConnInfo.parse(app_db)
    waits: list[str] = []
    with migration_lock(info, 1, owner="first"):
        result: dict = {}

        def second() -> None:
            try:
                with migration_lock(info, 1.5, owner="second", log=waits.append):
                    result["got"] = True
            except DbopsError as exc:
                result["error"] = str(exc)

        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.7)
        with info.connect() as conn:  # polling, never queued in a blocking lock wait
            waiting = conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()
        thread.join()
    assert waiting[0] == 0
    assert "another migration holds the migration lock" in result["error"]
    assert "dbops-migrate first" in result["error"] and waits
    with migration_lock(info, 0, owner="third") as lock:  # released: free at once
        assert lock.waited_seconds < 1
        waited: list[float] = []

        def patient() -> None:
            with migration_lock(info, 10, owner="fourth") as mine:
                waited.append(mine.waited_seconds)

        thread = threading.Thread(target=patient)
        thread.start()
        time.sleep(0.6)
    thread.join()  # the third released its lock: the fourth, waiting, got it
    assert waited and 0.4 < waited[0] < 5


# ---------------------------------------------------------------------------
# The flow
# ---------------------------------------------------------------------------


def test_applies_verifies_and_records_the_run(prefect, app_db, tmp_path):
    root = write_migrations(tmp_path / "m", GOOD)
    checks = tmp_path / "checks.sql"
    checks.write_text(
        "SELECT count(*) = 40 FROM \"User\" WHERE email LIKE '%@example.com';\n"
        "SELECT conversation_count() = 1;\n"
    )
    where = tmp_path / "backups"
    state = migrate(
        database_url=app_db, backup_url=str(where), migrations=str(root), verify_sql=str(checks)
    )
    assert state.is_completed(), state.message
    summary = state.result()
    assert summary.status == "applied"
    assert [a.id for a in summary.applied] == [m.id for m in discover_migrations(root)]
    assert [c.ok for c in summary.checks] == [True] * 4
    [manifest] = backups(where)
    assert manifest.labels == ["pre-migration", "target:20240102030406_index_messages"]
    assert manifest.backup_id == summary.backup.backup_id
    assert "public.Conversation" not in manifest.row_counts  # taken before the migration
    rows = history(app_db)
    assert {r.applied_by for r in rows} == {str(state.state_details.flow_run_id)}

    again = migrate(database_url=app_db, backup_url=str(where), migrations=str(root))
    assert again.is_completed(), again.message
    assert again.result().status == "up-to-date"
    assert len(backups(where)) == 1  # nothing to do, nothing backed up


def test_dry_run_changes_nothing(prefect, app_db, tmp_path):
    root = write_migrations(tmp_path / "m", GOOD)
    before = snapshot(app_db)
    state = migrate(
        database_url=app_db, backup_url=str(tmp_path / "b"), migrations=str(root), dry_run=True
    )
    assert state.is_completed(), state.message
    plan = state.result().plan
    assert [m.id for m in plan.pending] == [m.id for m in discover_migrations(root)]
    assert snapshot(app_db) == before
    assert backups(tmp_path / "b") == []
    artifact = Artifact.get(f"migration-plan-{app_db.rsplit('/', 1)[-1].replace('_', '-')}")
    assert artifact is not None and "20240102030406_index_messages" in str(artifact.data)


def assert_rolled_back(state, url: str, before, where: Path, reason: str) -> None:
    assert state.is_failed()
    [manifest] = backups(where)
    assert "migration rolled back" in state.message
    assert f"restored from pre-migration backup {manifest.backup_id}" in state.message
    assert reason in state.message
    assert snapshot(url) == before


@pytest.mark.parametrize("transactional", [True, False])
def test_failure_half_way_through_a_file_is_rolled_back(prefect, app_db, tmp_path, transactional):
    marker = "" if transactional else "-- dbops:no-transaction\n"
    root = write_migrations(
        tmp_path / "m",
        {
            "0001_add_email.sql": GOOD["0001_add_email.sql"],
            "0002_half.sql": marker + 'CREATE TABLE "Audit" (id int);\n'
            'INSERT INTO "Audit" VALUES (1);\n'
            'DELETE FROM "Message" WHERE id < 100;\n'
            "INSERT INTO \"Audit\" VALUES ('not a number');\n"
            'DROP TABLE "Message";\n',
        },
    )
    before = snapshot(app_db)
    where = tmp_path / "backups"
    state = migrate(database_url=app_db, backup_url=str(where), migrations=str(root))
    assert_rolled_back(
        state, app_db, before, where, "migration 0002_half failed at statement 4 (line"
    )
    assert "22P02" in state.message


def test_failed_verification_after_commit_is_rolled_back(prefect, app_db, tmp_path):
    root = write_migrations(
        tmp_path / "m",
        {"0001_email.sql": 'ALTER TABLE "User" ADD COLUMN email text;\nDELETE FROM "Message";\n'},
    )
    checks = tmp_path / "checks.sql"
    checks.write_text('SELECT id FROM "User" WHERE email IS NULL ORDER BY id;\n')
    before = snapshot(app_db)
    where = tmp_path / "backups"
    state = migrate(
        database_url=app_db, backup_url=str(where), migrations=str(root), verify_sql=str(checks)
    )
    assert_rolled_back(state, app_db, before, where, "verification failed (1 of 3 checks)")
    assert "returned 1" in state.message


def test_lock_timeout_gives_up_and_is_rolled_back(prefect, app_db, tmp_path):
    root = write_migrations(
        tmp_path / "m",
        {
            "0001_table.sql": 'CREATE TABLE "Conversation" (id int);\nDELETE FROM "Message";\n',
            "0002_alter.sql": 'ALTER TABLE "User" ADD COLUMN plan text;\n',
        },
    )
    before = snapshot(app_db)
    blocker = psycopg.connect(**ConnInfo.parse(app_db).params)
    blocker.execute('SELECT 1 FROM "User" LIMIT 1')  # pg_dump can read, ALTER TABLE must wait
    where = tmp_path / "backups"
    try:
        state = migrate_impatiently(app_db, where, root)
    finally:
        blocker.close()  # the rollback's DROP DATABASE ... WITH (FORCE) ended it already
    assert_rolled_back(state, app_db, before, where, "gave up after 3 attempts")
    assert "55P03" in state.message


def test_failed_restore_says_so_loudly_with_the_backup_location(prefect, app_db, tmp_path):
    root = write_migrations(tmp_path / "m", {"0001_drop.sql": 'DROP TABLE "Message";\n'})
    where = tmp_path / "backups"
    vandal = f"sh -c 'rm {where}/*.sql.gz; echo backup gone; exit 3'"
    state = migrate(
        database_url=app_db, backup_url=str(where), migrations=str(root), verify_command=vandal
    )
    assert state.is_failed()
    [manifest] = where.glob("*.manifest.json")  # its dump is gone, so it is no longer listed
    backup_id = manifest.name.removesuffix(".manifest.json")
    assert state.message.startswith(
        "Flow run encountered an exception: DbopsError: ROLLBACK FAILED"
    )
    assert f"dbops restore {backup_id} --clean" in state.message
    assert str(where / f"{backup_id}.sql.gz") in state.message
    assert "exit status 3" in state.message and "backup gone" in state.message


def test_drift_or_a_held_lock_stops_before_the_backup(prefect, app_db, tmp_path):
    root = write_migrations(tmp_path / "m", {"0001_a.sql": "CREATE TABLE a (id int);\n"})
    where = tmp_path / "backups"
    assert migrate(database_url=app_db, backup_url=str(where), migrations=str(root)).is_completed()
    (root / "0001_a.sql").write_text("CREATE TABLE a (id bigint);\n")
    (root / "0002_b.sql").write_text("CREATE TABLE b (id int);\n")
    before = snapshot(app_db)
    state = migrate(database_url=app_db, backup_url=str(where), migrations=str(root))
    assert state.is_failed() and "checksum drift" in state.message
    (root / "0001_a.sql").write_text("CREATE TABLE a (id int);\n")
    with migration_lock(ConnInfo.parse(app_db), 0, owner="someone-else"):
        state = migrate(
            database_url=app_db, backup_url=str(where), migrations=str(root), lock_wait_seconds=1
        )
    assert state.is_failed() and "another migration holds the migration lock" in state.message
    assert snapshot(app_db) == before
    assert len(backups(where)) == 1  # only the first run's
    state = migrate(database_url=app_db, migrations=str(root), command="alembic upgrade head")
    assert state.is_failed() and "not both" in state.message


def flow_run_logs(flow_run_id) -> list[str]:
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return [log.message for log in logs]


def test_alembic_command_mode_applies_and_rolls_back(prefect, app_db, tmp_path):
    """A real Alembic project: DATABASE_URL in its environment, its output in the flow log."""
    project = shutil.copytree(ALEMBIC_PROJECT, tmp_path / "alembic")
    where = tmp_path / "backups"
    state = migrate(
        database_url=app_db,
        backup_url=str(where),
        command=f"{ALEMBIC} upgrade head",
        workdir=str(project),
        target_version="0002",
    )
    assert state.is_completed(), state.message
    assert state.result().command.exit_code == 0
    with ConnInfo.parse(app_db).connect() as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0002"
        emails = [r[0] for r in conn.execute("SELECT email FROM accounts ORDER BY id")]
    assert emails == ["alice@example.com", "bob@example.com"]
    assert backups(where)[0].labels == ["pre-migration", "target:0002"]
    logs = flow_run_logs(state.state_details.flow_run_id)
    assert any("Running upgrade 0001 -> 0002, add accounts.email" in line for line in logs)

    (project / "versions" / "0003_broken.py").write_text(
        '"""broken"""\nfrom alembic import op\n\nrevision = "0003"\ndown_revision = "0002"\n'
        "branch_labels = None\ndepends_on = None\n\n\ndef upgrade():\n"
        '    op.execute("DELETE FROM accounts")\n    op.execute("COMMIT")\n'
        '    op.execute("ALTER TABLE nowhere ADD x int")\n'
    )
    before = snapshot(app_db)
    state = migrate(
        database_url=app_db,
        backup_url=str(where),
        command=f"{ALEMBIC} upgrade head",
        workdir=str(project),
    )
    assert state.is_failed()
    assert "migration rolled back" in state.message and "exit status 1" in state.message
    assert snapshot(app_db) == before


# ---------------------------------------------------------------------------
# `dbops migrate`, the real console script
# ---------------------------------------------------------------------------


def run_dbops(*args: str, api_url: str, input: str | None = None, env: dict | None = None):
    return run_cli(*args, api_url=api_url, env=env, input=input)


def test_cli_exit_codes_plan_json_and_one_line_errors(prefect, app_db, tmp_path):
    root = write_migrations(tmp_path / "m", {"0001_a.sql": "CREATE TABLE a (id int);\n"})
    env = {"DATABASE_URL": app_db, "BACKUP_URL": str(tmp_path / "b")}
    plan = run_dbops(
        "migrate", "--migrations", str(root), "--dry-run", "--json", api_url=prefect, env=env
    )
    assert plan.returncode == 0, plan.stderr[-2000:]
    assert [m["id"] for m in json.loads(plan.stdout)["plan"]["pending"]] == ["0001_a"]

    good = run_dbops("migrate", "--migrations", str(root), api_url=prefect, env=env)
    assert good.returncode == 0, good.stderr[-2000:]
    assert f"migrated {app_db.rsplit('/', 1)[-1]}: 0001_a" in good.stderr and good.stdout == ""

    (root / "0002_bad.sql").write_text("CREATE TABLE b (id int);\nSELECT 1/0;\n")
    before = snapshot(app_db)
    bad = run_dbops("migrate", "--migrations", str(root), api_url=prefect, env=env)
    assert bad.returncode == 1
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, bad.stderr
    assert "nothing was applied; the database was not restored" in errors[0], bad.stderr
    assert snapshot(app_db) == before

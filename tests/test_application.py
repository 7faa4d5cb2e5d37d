"""The application around a restore, a migration rollback and a rotation, with a real stand-in:
tests/data/app_standin.py writes a row every 50 ms through its own connection and journals
every commit (pid, the oid of the database it reached), started and stopped by commands."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import psycopg
import pytest

from flows.backup import backup_database
from flows.restore import restore_database
from tasks.core.postgres import ConnInfo
from tests.backup_helpers import invoke_dbops
from tests.conftest import DATA, new_database
from tests.test_health import flow_run_artifacts, flow_run_logs
from tests.test_migrate_cancel import start_dbops, wait_for

STANDIN = DATA / "app_standin.py"
SCHEMA = """
CREATE TABLE keep (id int PRIMARY KEY, note text);
INSERT INTO keep SELECT g, md5(g::text) FROM generate_series(1, 50) g;
CREATE TABLE app_writes (pid int NOT NULL, db_oid oid NOT NULL,
    who text NOT NULL DEFAULT current_user, written_at timestamptz NOT NULL DEFAULT clock_timestamp());
"""


class App:
    """The stand-in's commands (argv lists, as a deployment gives them) and what it did."""

    def __init__(self, where: Path) -> None:
        self.pidfile = where / "app.pid"
        self.journal_file = self.pidfile.with_suffix(".journal")

    def stop_cmd(self, *extra: str) -> list[str]:
        return [sys.executable, str(STANDIN), "stop", "--pidfile", str(self.pidfile), *extra]

    def start_cmd(self, *source: str) -> list[str]:
        return [sys.executable, str(STANDIN), "start", "--pidfile", str(self.pidfile), *source]

    def restart_cmd(self, *source: str) -> list[str]:
        return [sys.executable, str(STANDIN), "restart", "--pidfile", str(self.pidfile), *source]

    def start(self, *source: str) -> int:
        done = subprocess.run(self.start_cmd(*source), capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        return self.pid()

    def pid(self) -> int:
        return int(self.pidfile.read_text())

    def running(self) -> bool:
        if not self.pidfile.exists():
            return False
        try:
            stat = Path(f"/proc/{self.pid()}/stat").read_text()
        except OSError:
            return False
        return stat.rsplit(")", 1)[1].split()[0] != "Z"

    def journal(self) -> list[tuple[int, int, float]]:
        """(pid, database oid, epoch) of every committed write."""
        if not self.journal_file.exists():
            return []
        rows = []
        for line in self.journal_file.read_text().splitlines():
            pid, oid, epoch = line.split()
            rows.append((int(pid), int(oid), float(epoch)))
        return rows

    def writes_of(self, pid: int) -> int:
        return sum(1 for p, _, _ in self.journal() if p == pid)

    def wait_writes(self, pid: int, more: int = 3) -> None:
        goal = self.writes_of(pid) + more
        wait_for(lambda: self.writes_of(pid) >= goal, 15, f"{more} more writes of pid {pid}")


@pytest.fixture
def app(tmp_path):
    standin = App(tmp_path)
    yield standin
    subprocess.run(standin.stop_cmd(), capture_output=True, timeout=30)


def app_database(pg) -> str:
    url = new_database(pg, "app")
    with ConnInfo.parse(url).connect() as conn:
        conn.execute(SCHEMA)
    return url


def query(url: str, sql: str, *params: object) -> list[tuple]:
    with psycopg.connect(**ConnInfo.parse(url).params) as conn:
        return conn.execute(sql, params).fetchall()


def oid_of(url: str) -> int:
    return query(url, "SELECT oid FROM pg_database WHERE datname = current_database()")[0][0]


def keep_rows(url: str) -> list[tuple]:
    return query(url, "SELECT * FROM keep ORDER BY id")


def backup_of(url: str, where: Path):
    state = backup_database(database_url=url, backup_url=str(where), return_state=True)
    assert state.is_completed(), state.message
    return state.result()


@pytest.fixture(scope="module")
def backed_up(prefect_api, pg, tmp_path_factory) -> tuple[str, Path, object]:
    """One application database and one backup of it for the module: every test restores it
    (with --clean) into the same database. Its app_writes rows are pid 1's."""
    url = app_database(pg)
    with psycopg.connect(**ConnInfo.parse(url).params) as conn:
        conn.execute(
            "INSERT INTO app_writes (pid, db_oid) SELECT 1, d.oid "
            "FROM pg_database d, generate_series(1, 5) WHERE d.datname = current_database()"
        )
    where = tmp_path_factory.mktemp("backups")
    return url, where, backup_of(url, where)


def restore(url: str, where: Path, source: str, **application: object):
    return restore_database(
        source=source,
        database_url=url,
        backup_url=str(where),
        clean=True,
        retries=0,
        application=application or None,
        return_state=True,
    )


def test_no_write_reaches_the_database_between_stop_and_swap(prefect, backed_up, app):
    url, where, manifest = backed_up
    in_backup = manifest.row_counts["public.app_writes"]
    assert in_backup == 5
    old_pid = app.start("--url", url)
    app.wait_writes(old_pid)  # writes after the backup: a restore loses them either way
    oid0 = oid_of(url)

    # Without hooks, the harm: the running application writes into the restored database.
    state = restore(url, where, manifest.backup_id)
    assert state.is_completed(), state.message
    oid1 = oid_of(url)
    app.wait_writes(old_pid)
    assert app.pid() == old_pid and (old_pid, oid1) in {(p, o) for p, o, _ in app.journal()}
    assert query(url, "SELECT count(*) FROM app_writes")[0][0] > in_backup

    # With them: stopped for the swap, started again after it.
    state = restore(
        url,
        where,
        manifest.backup_id,
        stop_app=app.stop_cmd(),
        start_app=app.start_cmd("--url", url),
    )
    assert state.is_completed(), state.message
    oid2, new_pid = oid_of(url), app.pid()
    assert oid2 not in (oid0, oid1) and new_pid != old_pid
    app.wait_writes(new_pid)
    report = state.result().application
    assert report.stopped_by == "command" and report.stop_at == "swap" and report.started
    assert 0 < report.downtime_seconds < 30
    [artifact] = [
        a for a in flow_run_artifacts(state.state_details.flow_run_id) if a.type == "table"
    ]  # beside the progress artifact
    shown = {row["item"]: row["value"] for row in json.loads(artifact.data)}
    assert shown["application downtime_seconds"] == str(report.downtime_seconds)
    # The old process never reached the database swapped in, the new one only that one: it
    # started after the swap, and nothing wrote in between.
    journal = app.journal()
    assert {oid for pid, oid, _ in journal if pid == old_pid} == {oid0, oid1}
    assert {oid for pid, oid, _ in journal if pid == new_pid} == {oid2}
    last_old = max(t for pid, _, t in journal if pid == old_pid)
    assert last_old < min(t for pid, _, t in journal if pid == new_pid)
    # The restored database: the backup's rows, then the new process's only.
    restored = query(url, "SELECT pid, db_oid FROM app_writes")
    assert sum(1 for pid, _ in restored if pid == 1) == in_backup
    assert {pid for pid, _ in restored} == {1, new_pid}
    assert all(oid == oid2 for pid, oid in restored if pid == new_pid)


def test_a_failed_restore_leaves_the_application_running(prefect, backed_up, tmp_path, app):
    url, backups, manifest = backed_up
    where = tmp_path / "backups"
    shutil.copytree(backups, where)  # a copy to damage
    old_pid = app.start("--url", url)
    with psycopg.connect(**ConnInfo.parse(url).params) as conn:
        conn.execute("INSERT INTO keep VALUES (1000, 'after the backup')")
    dump = where / manifest.dump.name
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    old_oid, before = oid_of(url), keep_rows(url)
    scratch = url.rsplit("/", 1)[-1] + "__dbops_%"

    def attempt(stop_app_at: str, *stop_flags: str):
        state = restore(
            url,
            where,
            manifest.backup_id,
            stop_app=app.stop_cmd(*stop_flags),
            start_app=app.start_cmd("--url", url),
            stop_app_at=stop_app_at,
        )
        assert state.is_failed()
        assert oid_of(url) == old_oid and keep_rows(url) == before
        assert query(url, "SELECT datname FROM pg_database WHERE datname LIKE %s", scratch) == []
        assert app.running()
        app.wait_writes(app.pid())
        return state.message

    # The checks fail before the swap: the application is never stopped.
    message = attempt("swap")
    assert "BackupFaultError" in message and "corrupt" in message
    assert app.pid() == old_pid
    # Stopped before the restore began, started again after its failure.
    message = attempt("start")
    assert "BackupFaultError" in message and "corrupt" in message
    assert app.pid() != old_pid
    # A stop command that fails ends the run before anything is read or touched.
    running = app.pid()
    message = attempt("start", "--fail")
    assert "stopping the application failed" in message
    assert "cannot stop the application: permission denied" in message
    assert "the database was not touched" in message
    assert app.pid() == running


def test_sigterm_during_the_restore_starts_the_application_again(prefect, backed_up, tmp_path, app):
    """SIGTERM is what a worker's cancellation sends the flow's process."""
    import gzip

    url = backed_up[0]
    old_pid = app.start("--url", url)
    dump = tmp_path / "slow.sql.gz"
    dump.write_bytes(gzip.compress(b"CREATE TABLE slow (id int);\nSELECT pg_sleep(30);\n"))
    old_oid, before = oid_of(url), keep_rows(url)
    env = {"DATABASE_URL": url}
    process = start_dbops(
        "restore", str(dump), "--clean",
        "--stop-app", shlex.join(app.stop_cmd()),
        "--start-app", shlex.join(app.start_cmd("--url", url)),
        "--stop-app-at", "start",
        api_url=prefect, env=env,
    )  # fmt: skip

    def sleeping() -> bool:
        scratch = url.rsplit("/", 1)[-1] + "__dbops_restore_%"
        rows = query(
            url,
            "SELECT count(*) FROM pg_stat_activity WHERE datname LIKE %s AND query LIKE %s",
            scratch,
            "SELECT pg_sleep%",
        )
        return rows[0][0] > 0

    try:
        wait_for(sleeping, 120, "the restore to reach pg_sleep")
        assert not app.running()  # stopped before the restore began
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    assert app.running() and app.pid() != old_pid, stderr[-2000:]
    app.wait_writes(app.pid())
    assert oid_of(url) == old_oid and keep_rows(url) == before


def test_a_start_that_keeps_failing_fails_the_run_loudly(prefect, backed_up, app, monkeypatch):
    from prefect.client.orchestration import get_client

    from tests.test_health import WebhookServer

    url, where, manifest = backed_up
    app.start("--url", url)
    old_oid = oid_of(url)
    webhook = WebhookServer()
    with webhook.running() as hook_url:
        monkeypatch.setenv("DBOPS_WEBHOOK_URL", hook_url)
        state = restore(
            url,
            where,
            manifest.backup_id,
            stop_app=app.stop_cmd(),
            start_app=app.start_cmd("--fail"),
            start_app_retries=1,
            start_app_retry_delay_seconds=0,
        )
    assert state.is_failed()
    assert "the database was restored, but THE APPLICATION IS NOT RUNNING" in state.message
    assert "failed 2 times" in state.message and "image not found" in state.message
    assert oid_of(url) != old_oid and not app.running()
    scratch = url.rsplit("/", 1)[-1] + "__dbops_%"  # the old copy is dropped all the same
    assert query(url, "SELECT datname FROM pg_database WHERE datname LIKE %s", scratch) == []
    [body] = webhook.bodies
    assert "THE APPLICATION IS NOT RUNNING" in body["text"]
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(state.state_details.flow_run_id)
    assert run.labels["dbops.application"] == "start-failed"


def paused_run(name: str, timeout: float = 60):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    found = []

    def paused() -> bool:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[name]))
            )
        found[:] = [r for r in runs if r.state and r.state.is_paused()]
        return bool(found)

    wait_for(paused, timeout, f"flow run {name} to pause")
    return found[0]


def test_confirmation_from_the_ui_pauses_before_the_swap(prefect, backed_up, app):
    from prefect.flow_runs import resume_flow_run

    url, where, manifest = backed_up
    old_pid = app.start("--url", url)
    old_oid = oid_of(url)
    scratch = url.rsplit("/", 1)[-1] + "__dbops_%"

    # Nobody answers: the run fails and nothing changes.
    state = restore(
        url, where, manifest.backup_id, confirm_app_stopped=True, confirm_timeout_seconds=1
    )
    assert state.is_failed()  # by the server when the pause expires first, else by dbops
    logs = flow_run_logs(state.state_details.flow_run_id)
    assert "WAITING FOR YOU: stop the application, then resume this flow run" in logs
    assert "nobody confirmed within 1 s that the application is stopped" in logs
    assert "the database was not touched" in logs
    assert oid_of(url) == old_oid and app.pid() == old_pid
    assert query(url, "SELECT datname FROM pg_database WHERE datname LIKE %s", scratch) == []

    # The operator stops the application and resumes the run through the API.
    outcome = {}
    name = f"confirmed-{uuid.uuid4().hex[:8]}"
    flow = restore_database.with_options(flow_run_name=name)
    worker = threading.Thread(
        target=lambda: outcome.update(
            state=flow(
                source=manifest.backup_id,
                database_url=url,
                backup_url=str(where),
                clean=True,
                retries=0,
                application={"confirm_app_stopped": True},
                return_state=True,
            )
        )
    )
    worker.start()
    try:
        run = paused_run(name)
        # Restored aside, checked, not swapped: the application still writes to the target.
        assert oid_of(url) == old_oid and app.running() and app.pid() == old_pid
        subprocess.run(app.stop_cmd(), check=True)
        resume_flow_run(run.id, run_input={"stopped": True})
    finally:
        worker.join(timeout=60)
    state = outcome["state"]
    assert state.is_completed(), state.message
    assert oid_of(url) != old_oid
    report = state.result().application
    assert report.stopped_by == "operator" and not report.started
    assert {oid for _, oid, _ in app.journal()} == {old_oid}


def test_rotation_then_restart_connects_with_the_stored_password(
    prefect, pg, tmp_path, app, monkeypatch
):
    from prefect.blocks.system import Secret

    from flows.security import rotate_password
    from tasks.security.roles import role_url
    from tasks.security.secret_stores import password_from_secret
    from tests.test_security import make_login_role

    url = app_database(pg)
    monkeypatch.setenv("PREFECT_API_URL", prefect)  # where the stand-in reads its secret
    role = f"app_{uuid.uuid4().hex[:8]}"
    initial = "initial-" + role
    make_login_role(url, role, initial)
    query_admin = psycopg.connect(**ConnInfo.parse(url).params, autocommit=True)
    query_admin.execute(f"GRANT INSERT, SELECT ON app_writes TO {role}")
    query_admin.close()
    block = f"app-{role.replace('_', '-')}"
    info = ConnInfo.parse(url)
    Secret(value=role_url(info, role, initial)).save(block, overwrite=True)
    old_pid = app.start("--secret-block", block)
    state = rotate_password(
        role=role,
        database_url=url,
        secret_block=block,
        application={"restart_app": app.restart_cmd("--secret-block", block)},
        return_state=True,
    )
    assert state.is_completed(), state.message
    assert state.result().app_restart_seconds > 0
    new_pid = app.pid()
    assert new_pid != old_pid
    app.wait_writes(new_pid)
    stored = password_from_secret(str(Secret.load(block).get()))
    assert stored != initial
    # The restarted application writes as the role: it logged in with the stored password,
    # the only one the role has now.
    rows = query(url, "SELECT DISTINCT who FROM app_writes WHERE pid = %s", new_pid)
    assert rows == [(role,)]
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(role_url(info, role, initial)).close()


def test_a_migration_rollback_stops_the_application_for_its_swap(prefect, pg, tmp_path, app):
    from flows.migrate import migrate_database
    from tests.test_migrate import write_migrations

    url = app_database(pg)
    old_pid = app.start("--url", url)
    root = write_migrations(
        tmp_path / "m",
        {"0001_ok.sql": "ALTER TABLE keep ADD extra int;\n", "0002_bad.sql": "SELECT 1/0;\n"},
    )
    old_oid = oid_of(url)
    state = migrate_database(
        database_url=url,
        backup_url=str(tmp_path / "backups"),
        migrations=str(root),
        application={"stop_app": app.stop_cmd(), "start_app": app.start_cmd("--url", url)},
        return_state=True,
    )
    assert state.is_failed() and "migration rolled back" in state.message, state.message
    new_oid, new_pid = oid_of(url), app.pid()
    assert new_oid != old_oid and new_pid != old_pid
    app.wait_writes(new_pid)
    journal = app.journal()
    assert {oid for pid, oid, _ in journal if pid == old_pid} == {old_oid}
    assert {oid for pid, oid, _ in journal if pid == new_pid} == {new_oid}
    assert "extra" not in [c for (c,) in query(url, "SELECT attname FROM pg_attribute "
                                                    "WHERE attrelid = 'keep'::regclass")]  # fmt: skip


def test_the_workers_hook_starts_an_application_a_killed_run_left_down(prefect, pg, tmp_path, app):
    """A cancel through a worker kills the flow's process 30 s after SIGTERM; the worker then
    runs on_cancellation hooks, which read the run's label and parameters."""
    from prefect.client.orchestration import get_client
    from prefect.states import Cancelling

    from tasks.application.hooks import start_if_left_stopped

    url = app_database(pg)
    application = {"stop_app": app.stop_cmd(), "start_app": app.start_cmd("--url", url)}
    with get_client(sync_client=True) as client:
        runs = {}
        for label in ("stopped", "started"):
            run = client.create_flow_run(restore_database, parameters={"application": application})
            client.update_flow_run_labels(run.id, {"dbops.application": label})
            runs[label] = client.read_flow_run(run.id)
    start_if_left_stopped(restore_database, runs["started"], Cancelling())
    assert not app.running()  # the run had started it again itself
    start_if_left_stopped(restore_database, runs["stopped"], Cancelling())
    assert app.running()
    app.wait_writes(app.pid())
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(runs["stopped"].id).labels["dbops.application"] == "started"


def test_bad_application_parameters_are_refused_before_anything(
    prefect, pg, backed_up, tmp_path, monkeypatch
):
    from tasks.application.commands import ApplicationHooks
    from tasks.core.errors import ParameterError

    cases = [
        ({"stop_app": "systemctl stop app"}, "start_app is missing"),
        ({"start_app": "systemctl start app"}, "stop_app is missing"),
        ({"stop_app": "a", "start_app": "b", "confirm_app_stopped": True}, "give one of them"),
        ({"stop_app": "stop 'unbalanced", "start_app": "b"}, "cannot be split into words"),
        ({"stop_app": "psql postgresql://u:pw@h/db", "start_app": "b"}, "contains a password"),
        ({"stop_app": "a", "start_app": "deploy --db-password=pw"}, "contains a password"),
        ({"stop_app": "a", "start_app": ["b", ""]}, "has an empty word"),
        ({"restart_app": "kubectl rollout restart deployment/web"}, "is for rotate-password"),
    ]
    for application, expected in cases:
        with pytest.raises(ParameterError, match=expected):
            ApplicationHooks(**application).check_restore()
    with pytest.raises(ParameterError, match="give both stop_app and start_app"):
        ApplicationHooks(stop_app="a").check_restart()
    # Through the flow, with the target's own password (known only inside the task) on the
    # stop command line: refused before anything, and not repeated.
    url = backed_up[0]
    name = url.rsplit("/", 1)[-1]
    password = ConnInfo.parse(pg.url(name)).password
    assert password
    monkeypatch.setenv("DATABASE_URL", pg.url(name))
    state = restore_database(
        source="latest",
        backup_url=str(tmp_path),
        application={"stop_app": ["echo", password], "start_app": ["true"]},
        return_state=True,
    )
    assert state.is_failed() and "stop_app contains a password" in state.message
    assert password not in state.message
    # The command line names flags.
    done = invoke_dbops("restore", "latest", "--stop-app", "systemctl stop app")
    assert done.exit_code == 1
    assert done.stderr.strip().splitlines()[-1].startswith("error: --start-app is missing")

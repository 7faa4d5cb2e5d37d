"""The application around a restore, a migration rollback and a rotation, with a real stand-in:
tests/data/app_standin.py writes a row every 50 ms through its own connection and journals
every commit (pid, the oid of the database it reached), started and stopped by commands."""

from __future__ import annotations

import shlex
import signal
import sys
from pathlib import Path

import psycopg
import pytest

from flows.backup import backup_database
from flows.restore import restore_database
from tasks.core.postgres import ConnInfo
from tests.conftest import DATA, new_database
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

    def start(self, *source: str) -> int:
        import subprocess

        subprocess.run(self.start_cmd(*source), check=True, capture_output=True)
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
    import subprocess

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


@pytest.mark.parametrize("hooks", [True, False], ids=["stopped-for-the-swap", "no-hooks"])
def test_no_write_reaches_the_database_between_stop_and_swap(prefect, pg, tmp_path, app, hooks):
    url = app_database(pg)
    old_pid = app.start("--url", url)
    app.wait_writes(old_pid)
    manifest = backup_of(url, tmp_path)
    app.wait_writes(old_pid)  # writes after the backup: the restore loses them either way
    old_oid = oid_of(url)
    kwargs = {"stop_app": app.stop_cmd(), "start_app": app.start_cmd("--url", url)}
    state = restore(url, tmp_path, manifest.backup_id, **(kwargs if hooks else {}))
    assert state.is_completed(), state.message
    new_oid = oid_of(url)
    assert new_oid != old_oid  # swapped in
    new_pid = app.pid()
    app.wait_writes(new_pid)
    journal = app.journal()
    restored = query(url, "SELECT pid, db_oid FROM app_writes")
    in_backup = manifest.row_counts["public.app_writes"]
    if not hooks:  # the harm: the running application wrote into the restored database
        assert new_pid == old_pid
        assert any(oid == new_oid for pid, oid, _ in journal if pid == old_pid)
        assert len(restored) > in_backup
        return
    report = state.result().application
    assert report.stopped_by == "command" and report.stop_at == "swap" and report.started
    assert 0 < report.downtime_seconds < 30
    assert new_pid != old_pid
    # The old process never reached the restored database, the new one only that one: it
    # started after the swap, and nothing wrote in between.
    assert {oid for pid, oid, _ in journal if pid == old_pid} == {old_oid}
    assert {oid for pid, oid, _ in journal if pid == new_pid} == {new_oid}
    last_old = max(t for pid, _, t in journal if pid == old_pid)
    first_new = min(t for pid, _, t in journal if pid == new_pid)
    assert last_old < first_new
    # The restored database: the backup's rows of the old process, then the new one's only.
    assert sum(1 for pid, _ in restored if pid == old_pid) == in_backup
    assert {pid for pid, _ in restored} == {old_pid, new_pid}
    assert all(oid == new_oid for pid, oid in restored if pid == new_pid)


@pytest.mark.parametrize("stop_at", ["swap", "start"])
def test_a_corrupt_backup_leaves_the_application_running(prefect, pg, tmp_path, app, stop_at):
    url = app_database(pg)
    old_pid = app.start("--url", url)
    manifest = backup_of(url, tmp_path)
    dump = tmp_path / manifest.dump.name
    data = bytearray(dump.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dump.write_bytes(bytes(data))
    old_oid, before = oid_of(url), keep_rows(url)
    state = restore(
        url,
        tmp_path,
        manifest.backup_id,
        stop_app=app.stop_cmd(),
        start_app=app.start_cmd("--url", url),
        stop_app_at=stop_at,
    )
    assert state.is_failed()
    assert "BackupFaultError" in state.message and "corrupt" in state.message
    assert oid_of(url) == old_oid and keep_rows(url) == before
    assert app.running()
    if stop_at == "swap":  # the checks failed before the swap: it was never stopped
        assert app.pid() == old_pid
    else:  # stopped before the restore began, started again after its failure
        assert app.pid() != old_pid
    app.wait_writes(app.pid())


def test_a_failing_stop_command_leaves_the_database_untouched(prefect, pg, tmp_path, app):
    url = app_database(pg)
    old_pid = app.start("--url", url)
    manifest = backup_of(url, tmp_path)
    with psycopg.connect(**ConnInfo.parse(url).params) as conn:
        conn.execute("INSERT INTO keep VALUES (1000, 'after the backup')")
    old_oid, before = oid_of(url), keep_rows(url)
    state = restore(
        url,
        tmp_path,
        manifest.backup_id,
        stop_app=app.stop_cmd("--fail"),
        start_app=app.start_cmd("--url", url),
    )
    assert state.is_failed()
    assert "stopping the application failed" in state.message
    assert "cannot stop the application: permission denied" in state.message
    assert "the database was not touched" in state.message
    assert oid_of(url) == old_oid and keep_rows(url) == before
    scratch = url.rsplit("/", 1)[-1] + "__dbops_%"
    assert query(url, "SELECT datname FROM pg_database WHERE datname LIKE %s", scratch) == []
    assert app.running() and app.pid() == old_pid
    app.wait_writes(old_pid)


def test_sigterm_during_the_restore_starts_the_application_again(prefect, pg, tmp_path, app):
    """SIGTERM is what a worker's cancellation sends the flow's process."""
    import gzip

    url = app_database(pg)
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

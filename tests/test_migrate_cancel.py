"""A cancelled migration leaves the database as before or migrated-and-recorded, never half way,
and says which. The cancel is real: SIGTERM to the `dbops migrate` process, which is what a
Prefect worker's cancellation sends to a flow-run process, and `prefect flow-run cancel`
through a real server and process worker."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from tasks.core.postgres import ConnInfo
from tests.conftest import REPO, new_database
from tests.prefect_server import PrefectServer, prefect_server  # noqa: F401
from tests.test_migrate import BASE_SCHEMA, GOOD, execute, history, snapshot, write_migrations

# One real Prefect server per test worker: every module that uses it runs on the same one.
pytestmark = pytest.mark.xdist_group("prefect_server")

SLEEP = "SELECT pg_sleep(30)"


def sleeping_backends(url: str) -> int:
    """Sessions of this database still running the blocking statement."""
    with ConnInfo.parse(url).connect(autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND query = %s",
            [SLEEP],
        ).fetchone()
    return int(row[0]) if row else 0


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def start_dbops(*args: str, api_url: str, env: dict[str, str]) -> subprocess.Popen[str]:
    dbops = shutil.which("dbops", path=str(Path(sys.executable).parent)) or "dbops"
    return subprocess.Popen(
        [dbops, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env, "PREFECT_API_URL": api_url},
        cwd=REPO,
    )


def assert_nothing_left_running(url: str) -> None:
    """The blocking statement was cancelled in the server, not left to run out its 30 s."""
    wait_for(lambda: sleeping_backends(url) == 0, 5, "the migration's session to end")
    with ConnInfo.parse(url).connect(autocommit=True) as conn:
        locks = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation "
            "WHERE c.relname IN ('User', 'Message', 'dbops_schema_history')"
        ).fetchone()
    assert locks == (0,)


@pytest.mark.parametrize("applied_first", [False, True], ids=["as-before", "migrated-recorded"])
def test_sigterm_during_a_migration(prefect, pg, tmp_path, applied_first):
    url = new_database(pg, "cancel")
    execute(url, BASE_SCHEMA)
    files = {"0002_block.sql": f'ALTER TABLE "Message" ADD flag int;\n{SLEEP};\n'}
    if applied_first:
        files["0001_add_email.sql"] = GOOD["0001_add_email.sql"]
    root = write_migrations(tmp_path / "m", files)
    before = snapshot(url)
    env = {"DATABASE_URL": url, "BACKUP_URL": str(tmp_path / "backups")}
    process = start_dbops("migrate", "--migrations", str(root), api_url=prefect, env=env)
    try:
        wait_for(lambda: sleeping_backends(url) == 1, 120, "the migration to block")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    assert_nothing_left_running(url)
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    dbname = url.rsplit("/", 1)[-1]
    assert f"migration of {dbname} was cancelled" in errors[0]
    assert "the database was not restored" in errors[0]
    assert "pre-migration backup" in errors[0]
    if applied_first:
        assert "applied and recorded: 0001_add_email; not applied: 0002_block" in errors[0]
        assert [(r.id, r.finished_at is not None) for r in history(url)] == [
            ("0001_add_email", True)
        ]
        schema, _ = snapshot(url)
        assert "email" in schema and "flag" not in schema
    else:
        assert "nothing was applied" in errors[0]
        assert history(url) == []
        assert snapshot(url) == before


def test_prefect_flow_run_cancel_through_a_worker(
    prefect_server: PrefectServer,  # noqa: F811
    pg,
    tmp_path,
):
    from prefect.blocks.system import Secret

    url = new_database(pg, "cdcancel")
    execute(url, BASE_SCHEMA)
    dbname = url.rsplit("/", 1)[-1]
    with prefect_server.client_settings():
        Secret(value=pg.url(dbname)).save("dbops-database-url", overwrite=True)
    prefect_server.deploy("migrate-database/cd")
    root = write_migrations(
        tmp_path / "m", {"0001_block.sql": f'ALTER TABLE "Message" ADD flag int;\n{SLEEP};\n'}
    )
    before = snapshot(url)
    started = prefect_server.cli(
        "deployment", "run", "migrate-database/cd",
        "--param", f"migrations={root}",
        "--param", f"backup_url={tmp_path / 'backups'}",
    )  # fmt: skip
    assert started.returncode == 0, started.stdout[-3000:]
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", started.stdout).group(1)  # type: ignore[union-attr]
    wait_for(lambda: sleeping_backends(url) == 1, 180, "the migration to block")
    cancel = prefect_server.cli("flow-run", "cancel", flow_run_id)
    assert cancel.returncode == 0, cancel.stdout[-3000:]

    def final() -> dict | None:
        run = prefect_server.request("GET", f"/flow_runs/{flow_run_id}")
        return run if run["state"]["type"] in ("CANCELLED", "FAILED", "CRASHED") else None

    wait_for(lambda: final() is not None, 90, "the flow run to end")
    run = final()
    assert run is not None
    assert run["state"]["type"] == "CANCELLED", run["state"]
    message = run["state"]["message"]
    assert f"migration of {dbname} was cancelled" in message
    assert "nothing was applied; the database was not restored" in message
    assert_nothing_left_running(url)
    assert history(url) == [] and snapshot(url) == before


def test_killed_dbops_leaves_no_transaction_behind(prefect, pg, tmp_path):
    """SIGKILL (the OOM killer) cannot be caught: the server notices the client is gone
    (client_connection_check_interval) and rolls the migration back within seconds."""
    url = new_database(pg, "killed")
    execute(url, BASE_SCHEMA)
    root = write_migrations(
        tmp_path / "m", {"0001_block.sql": f'ALTER TABLE "Message" ADD flag int;\n{SLEEP};\n'}
    )
    before = snapshot(url)
    env = {"DATABASE_URL": url, "BACKUP_URL": str(tmp_path / "backups")}
    process = start_dbops("migrate", "--migrations", str(root), api_url=prefect, env=env)
    try:
        wait_for(lambda: sleeping_backends(url) == 1, 120, "the migration to block")
        process.kill()
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert_nothing_left_running(url)
    assert history(url) == [] and snapshot(url) == before
    with psycopg.connect(**ConnInfo.parse(url).params) as conn:
        conn.execute('ALTER TABLE "Message" ADD other int')  # no lock left behind either

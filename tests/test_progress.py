"""Progress everywhere: restore and restore test publish progress artifacts like backup does, and
the command line draws a bar in a real terminal (a pty), never with --json or into a pipe."""

from __future__ import annotations

import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.verify import verify_backup
from tasks.backup.pipeline import BackupRequest, run_backup
from tasks.core.postgres import ConnInfo
from tasks.storage.destinations import Destination
from tests.conftest import REPO, new_database


@pytest.fixture(scope="module")
def stored(pg, tmp_path_factory):
    """One backup of a small guide-shaped database in a local directory."""
    from tasks.demo.sample_data import create_sample_database

    url = new_database(pg, "progress")
    create_sample_database(ConnInfo.parse(url), size_mb=2)
    location = tmp_path_factory.mktemp("progress")
    manifest = run_backup(
        BackupRequest(conn=ConnInfo.parse(url), destination=Destination.from_url(str(location)))
    )
    return url, location, manifest


def in_terminal(argv: list[str], env: dict[str, str], timeout: float = 180) -> tuple[int, str]:
    """Run a command with stdin, stdout and stderr on a pseudo-terminal; all it wrote."""
    master, slave = pty.openpty()
    process = subprocess.Popen(
        argv, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO, start_new_session=True
    )
    os.close(slave)
    output = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the terminal closed: the process is gone
                break
            if not chunk:
                break
            output += chunk
        elif process.poll() is not None:
            break
    os.close(master)
    return process.wait(timeout=30), output.decode(errors="replace")


def test_restore_draws_a_bar_in_a_terminal(prefect, pg, stored):
    url, location, manifest = stored
    target = new_database(pg, "progress_target")
    dbops = shutil.which("dbops", path=str(Path(sys.executable).parent))
    env = {**os.environ, "PREFECT_API_URL": prefect, "COLUMNS": "120"}
    args = [dbops, "restore", manifest.backup_id, "--from", str(location), "--database-url", target]
    code, shown = in_terminal(args, env)
    assert code == 0, shown[-2000:]
    name = ConnInfo.parse(target).dbname
    assert f"\rRestoring {name} [" in shown, shown[-2000:]
    assert "] 100%" in shown and f"{manifest.dump.size / 2**20:,.1f} MB" in shown

    code, shown = in_terminal([*args, "--clean", "--json"], env)
    assert code == 0, shown[-2000:]
    assert "Restoring" not in shown and "%" not in shown.split("{", 1)[0]


def test_a_restore_test_publishes_progress(prefect, stored):
    url, location, manifest = stored
    state = verify_backup(
        source=manifest.backup_id, backup_url=str(location), database_url=url, return_state=True
    )
    assert state.is_completed()
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    (progress,) = [a for a in artifacts if a.type == "progress"]
    assert progress.description == f"Verifying {manifest.dump.name}"
    assert float(progress.data) == 100.0


def test_no_bar_into_a_pipe_or_a_file(tmp_path):
    import io

    from cli.progress import show_progress

    assert show_progress(False, io.StringIO()) is False
    with open(tmp_path / "log", "w") as file:
        assert show_progress(False, file) is False

"""The README's first command, `uv run dbops demo`, as a user runs it: a fresh directory,
nothing configured beside the Prefect API; the backup it leaves is read by stock gunzip."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def test_dbops_demo_runs_in_a_fresh_directory_and_leaves_a_readable_backup(prefect, tmp_path):
    dbops = shutil.which("dbops", path=str(Path(sys.executable).parent)) or "dbops"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "BACKUP_URL")}
    done = subprocess.run(
        [dbops, "demo", "--size-mb", "1", "--json"],
        cwd=tmp_path,
        env={**env, "PREFECT_API_URL": prefect},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["checksum_verified"] is True
    assert all(source == restored for source, restored in summary["row_counts"].values())
    backup = Path(summary["backup"])
    backup = backup if backup.is_absolute() else tmp_path / backup
    assert backup.parent.resolve().is_relative_to((tmp_path / "dbops-demo").resolve())
    sql = subprocess.run(["gunzip", "-c", str(backup)], capture_output=True, check=True).stdout
    assert b"PostgreSQL database dump complete" in sql

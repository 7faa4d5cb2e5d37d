"""Under CI=true a missing tool fails the run: a skipped test must not turn a broken runner green."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from _pytest.outcomes import Failed, Skipped

from tests.conftest import REPO, skip_unless_ci


@pytest.mark.parametrize(("ci", "outcome"), [("true", Failed), ("", Skipped), ("false", Skipped)])
def test_missing_tool_skips_locally_and_fails_in_ci(monkeypatch, ci, outcome):
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="not installed"):
        skip_unless_ci("thing is not installed")


def run_pg15_test(ci: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CI": ci, "DBOPS_TEST_PG15_BIN": "/nonexistent/postgresql/15/bin"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-rs",
            "-o",
            "addopts=",
            "tests/test_honest_skips.py::test_probe_needs_postgresql_15",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )


def test_missing_postgresql_15_fails_a_ci_run_and_skips_a_local_one():
    ci = run_pg15_test("true")
    assert ci.returncode == 1, ci.stdout[-3000:]
    assert "CI=true, so this fails instead of skipping" in ci.stdout
    local = run_pg15_test("")
    assert local.returncode == 0, local.stdout[-3000:]
    assert "1 skipped" in local.stdout and "postgresql-15" in local.stdout


def test_probe_needs_postgresql_15(pg15):
    """Run by the test above in a child pytest: it only asks for PostgreSQL 15."""
    assert (pg15.bin_dir / "postgres").exists()

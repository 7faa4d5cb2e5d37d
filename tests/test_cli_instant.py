"""An instant command line: bad input is refused before Prefect is imported (importing it takes
seconds; benchmarks/cli_startup.py has the times), `--version`, and Prefect's log lines kept
off the terminal unless `--verbose`, while they still reach the Prefect server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO, run_cli
from tests.prefect_records import flow_run_ids, records_text

# Runs each argv through `cli.main()` in one fresh interpreter; reports exit code, stderr, and
# whether any Prefect module was imported by then.
PROBE = """
import contextlib, io, json, sys
import cli
results = []
for argv in json.loads(sys.argv[1]):
    sys.argv = ["dbops", *argv]
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            cli.main()
        except SystemExit as exc:
            code = exc.code
    prefect = sorted(m for m in sys.modules if m == "prefect" or m.startswith("prefect."))
    results.append({"code": code, "stderr": err.getvalue(), "prefect": prefect[:3]})
print(json.dumps(results))
"""

BAD_INPUT = {
    "no database URL": (["backup", "--to", "/tmp/x"], "no database given; set DATABASE_URL"),
    "malformed URL": (
        ["backup", "--database-url", "postgresql://u@h:port/db"],
        "malformed database URL",
    ),
    "unsupported URL scheme": (["health", "--database-url", "mysql://u@h/db"], "not supported"),
    "unknown option value": (
        ["backup", "--database-url", "postgresql://u@h/db", "--format", "tar"],
        "'tar' is not one of",
    ),
    "missing file": (
        ["restore", "./no/such/dump.sql.gz", "--database-url", "postgresql://u@h/db"],
        "no such file",
    ),
    "missing migrations directory": (
        ["migrate", "--migrations", "./no-such-dir", "--database-url", "postgresql://u@h/db"],
        "--migrations ./no-such-dir: no such file or directory",
    ),
    "unsupported backup location": (
        ["backup", "--database-url", "postgresql://u@h/db", "--to", "gs://bucket/x"],
        "scheme 'gs' is not supported",
    ),
    "ping URL that is no URL": (
        ["backup", "--database-url", "postgresql://u@h/db", "--ping-url", "ftp://x/y"],
        "--ping-url must be an http(s) URL",
    ),
    "verify without a server": (["verify", "latest"], "no server for the scratch database"),
}


def probe(argvs: list[list[str]]) -> list[dict]:
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DATABASE_URL", "VERIFY_DATABASE_URL", "PREFECT_API_URL")
    }
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argvs)],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_bad_input_is_refused_before_prefect_is_imported():
    cases = list(BAD_INPUT.values())
    results = probe([argv for argv, _ in cases] + [["--version"]])
    for (argv, expected), result in zip(cases, results, strict=False):
        assert result["code"] in (1, 2), (argv, result)
        assert expected in result["stderr"], (argv, result["stderr"])
        assert result["prefect"] == [], (argv, result["prefect"])
    version = results[-1]
    assert version["code"] == 0 and version["prefect"] == []


def test_version_prints_the_package_version():
    from tasks import __version__

    done = run_cli("--version")
    assert done.returncode == 0 and done.stdout.strip() == f"dbops {__version__}"


def test_prefect_logs_stay_off_the_terminal_unless_verbose(prefect, pg):
    """A run that fails at once (nothing listens on the port): one `error:` line on the
    terminal, Prefect's tracebacks only with --verbose; the server has the run's logs."""
    from tasks.demo.embedded import free_port

    args = ["backup", "--database-url", f"postgresql://postgres@127.0.0.1:{free_port()}/x"]
    before = flow_run_ids()
    quiet = run_cli(*args, "--retries", "0", api_url=prefect)
    assert quiet.returncode == 1
    assert quiet.stderr.strip().splitlines() == [
        line for line in quiet.stderr.strip().splitlines() if line.startswith("error: ")
    ], quiet.stderr[-2000:]
    assert "server unreachable" in quiet.stderr
    assert "Finished in state Failed" in records_text(flow_run_ids() - before)

    verbose = run_cli("--verbose", *args, "--retries", "0", api_url=prefect)
    assert verbose.returncode == 1
    assert "Finished in state Failed" in verbose.stderr and "Traceback" in verbose.stderr

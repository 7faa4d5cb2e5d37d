"""An application stand-in: a process that writes a row every 50 ms through its own connection.

    app_standin.py start --pidfile P (--url URL | --secret-block NAME) [--fail]
    app_standin.py stop --pidfile P [--linger SECONDS] [--fail]
    app_standin.py restart --pidfile P (--url URL | --secret-block NAME)

`start` launches the writer in the background, records its pid in P and returns once the
first row is committed (like `docker compose up --wait`); exit 1 if the writer cannot write.
`--secret-block` reads the database URL from a Prefect Secret block through the Prefect REST
API ($PREFECT_API_URL), where `rotate-password` stores it. The URL reaches the writer through
its environment, never its command line. `stop` ends the writer (SIGTERM, wait) and returns
when it is gone; `--linger` then sleeps (a slow stop command). `--fail` makes either fail.

Each row: the writer's pid, the database's oid (which database it really wrote to), the
role, and clock_timestamp(). Every commit is also appended to the journal P.journal
(`pid oid epoch`), so a test sees writes that went to a database that no longer exists.
It reconnects when its connection is cut, like an application's pool.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

TABLE = "app_writes"
SCHEMA = f"""CREATE TABLE IF NOT EXISTS {TABLE} (
    pid int NOT NULL, db_oid oid NOT NULL, who text NOT NULL DEFAULT current_user,
    written_at timestamptz NOT NULL DEFAULT clock_timestamp())"""


def secret_url(block: str) -> str:
    api = os.environ["PREFECT_API_URL"].rstrip("/")
    path = f"/block_types/slug/secret/block_documents/name/{urllib.parse.quote(block)}"
    with urllib.request.urlopen(f"{api}{path}?include_secrets=true", timeout=10) as answer:
        return str(json.load(answer)["data"]["value"])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours is not running
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text())
    except (OSError, ValueError):
        return None


def start(args: argparse.Namespace) -> int:
    pidfile = Path(args.pidfile)
    if args.fail:
        print("cannot start the application: image not found", flush=True)
        return 1
    pid = read_pid(pidfile)
    if pid and alive(pid):
        print(f"already running (pid {pid})", flush=True)
        return 0
    url = args.url or secret_url(args.secret_block)
    ready = pidfile.with_suffix(".ready")
    ready.unlink(missing_ok=True)
    log = open(pidfile.with_suffix(".log"), "ab")  # noqa: SIM115
    child = subprocess.Popen(
        [sys.executable, __file__, "run", "--pidfile", str(pidfile)],
        env={**os.environ, "APP_DATABASE_URL": url},
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    pidfile.write_text(str(child.pid))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if ready.exists():
            print(f"started (pid {child.pid})", flush=True)
            return 0
        if child.poll() is not None:
            break
        time.sleep(0.02)
    child.kill()
    pidfile.unlink(missing_ok=True)
    tail = pidfile.with_suffix(".log").read_text(errors="replace").strip().splitlines()[-1:]
    print(f"the application did not come up: {' '.join(tail)}", flush=True)
    return 1


def stop(args: argparse.Namespace) -> int:
    pidfile = Path(args.pidfile)
    if args.fail:
        print("cannot stop the application: permission denied", flush=True)
        return 1
    pid = read_pid(pidfile)
    if pid and alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
        print(f"stopped (pid {pid})", flush=True)
    pidfile.unlink(missing_ok=True)
    time.sleep(args.linger)
    return 0


def run(args: argparse.Namespace) -> int:
    import psycopg

    pidfile = Path(args.pidfile)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    url = os.environ["APP_DATABASE_URL"]
    journal = open(pidfile.with_suffix(".journal"), "a")  # noqa: SIM115
    conn = None
    while not stopping:
        try:
            if conn is None or conn.closed:
                conn = psycopg.connect(url, autocommit=True, application_name="app-standin")
            row = conn.execute(
                f"INSERT INTO {TABLE} (pid, db_oid) SELECT %s, oid FROM pg_database "
                "WHERE datname = current_database() RETURNING db_oid, "
                "extract(epoch FROM written_at)",
                [os.getpid()],
            ).fetchone()
            journal.write(f"{os.getpid()} {row[0]} {row[1]}\n")
            journal.flush()
            pidfile.with_suffix(".ready").touch()
        except psycopg.Error as exc:
            print(f"write failed: {str(exc).strip().splitlines()[0]}", flush=True)
            conn = None
        time.sleep(0.05)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("action", choices=["start", "stop", "restart", "run"])
    parser.add_argument("--pidfile", required=True)
    parser.add_argument("--url")
    parser.add_argument("--secret-block")
    parser.add_argument("--linger", type=float, default=0)
    parser.add_argument("--fail", action="store_true")
    args = parser.parse_args()
    if args.action == "restart":
        return stop(args) or start(args)
    return {"start": start, "stop": stop, "run": run}[args.action](args)


if __name__ == "__main__":
    sys.exit(main())

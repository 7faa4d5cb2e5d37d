"""How long the application is down for a restore: the guide's full restore against dbops.

The application is tests/data/app_standin.py: a process writing a row every 50 ms through its
own connection, stopped and started by commands. Downtime is what the application itself saw:
the gap between the last write of the stopped process and the first write of the started one
(from its journal). Three procedures, interleaved and repeated, on the same backup in S3:

  guide          the guide's four steps in bash: stop; dropdb; createdb;
                 aws s3 cp - | gunzip | psql; start
  dbops start    dbops restore --clean --stop-app-at start (the guide's order, checked restore)
  dbops swap     dbops restore --clean (the default: restored aside, stopped for the swap only)

    uv run python benchmarks/app_downtime.py --size-mb 500 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_throughput import (  # noqa: E402
    BUCKET,
    MB,
    REPO,
    BenchError,
    Environment,
    create_database,
    environment,
    log,
    machine_meta,
    median,
    run_measured,
    venv_tool,
)

from tasks.core.postgres import ConnInfo  # noqa: E402

PREFIX = "downtime-bench"
STANDIN = REPO / "tests" / "data" / "app_standin.py"
VARIANTS = ("guide", "dbops start", "dbops swap")
APP_TABLE = """CREATE TABLE app_writes (pid int NOT NULL, db_oid oid NOT NULL,
    who text NOT NULL DEFAULT current_user, written_at timestamptz NOT NULL DEFAULT now())"""


@dataclass
class Measured:
    variant: str
    wall: float
    downtime: float
    reported: float | None


class App:
    def __init__(self, workdir: Path, url: str) -> None:
        self.pidfile = workdir / "app.pid"
        self.url = url

    def command(self, action: str) -> list[str]:
        argv = [sys.executable, str(STANDIN), action, "--pidfile", str(self.pidfile)]
        return argv + (["--url", self.url] if action == "start" else [])

    def run(self, action: str, env: dict[str, str]) -> None:
        done = subprocess.run(self.command(action), env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"app {action} failed: {done.stdout}{done.stderr}")

    def journal(self) -> list[tuple[int, float]]:
        path = self.pidfile.with_suffix(".journal")
        rows = [line.split() for line in path.read_text().splitlines()] if path.exists() else []
        return [(int(pid), float(epoch)) for pid, _, epoch in rows]

    def gap(self, before: int) -> float:
        """Seconds between the last write of the process running before and the first write
        of the next one."""
        journal = self.journal()
        last_old = max(t for pid, t in journal if pid == before)
        first_new = min(t for pid, t in journal if pid != before and t > last_old)
        return first_new - last_old

    def pid(self) -> int:
        return int(self.pidfile.read_text())


def wait_new_writes(app: App, pid: int, count: int = 5) -> None:
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if sum(1 for p, _ in app.journal() if p == pid) >= count:
            return
        time.sleep(0.05)
    raise BenchError(f"the application (pid {pid}) does not write")


def guide(bench: Environment, app: App, key: str, target: str, log_path: Path) -> Measured:
    """The guide's full restore, with the same stop and start commands."""
    tools = Path(bench.pg_dump.path).parent
    admin = ConnInfo.parse(bench.cluster.url("postgres", password="")).child_env(bench.env)
    script = (
        "set -eo pipefail; $STOP; "
        '"$TOOLS/dropdb" --force "$DB"; "$TOOLS/createdb" "$DB"; '
        '"$AWS" --endpoint-url "$ENDPOINT" s3 cp "s3://$BUCKET/$KEY" - '
        '| gunzip -c | "$TOOLS/psql" -q -v ON_ERROR_STOP=1 "$TARGET" > /dev/null; $START'
    )
    env = {
        **admin,
        "STOP": shlex.join(app.command("stop")),
        "START": shlex.join(app.command("start")),
        "TOOLS": str(tools),
        "DB": ConnInfo.parse(target).dbname,
        "AWS": bench.aws,
        "ENDPOINT": bench.endpoint,
        "BUCKET": BUCKET,
        "KEY": key,
        "TARGET": target,
    }
    done = run_measured(["bash", "-c", script], env, log_path, None)
    if done.code != 0:
        raise BenchError(f"guide restore failed: {done.stderr[-500:]}")
    return Measured("guide", done.wall, 0.0, None)


def dbops(bench: Environment, app: App, backup_id: str, stop_at: str, log_path: Path) -> Measured:
    argv = [
        bench.dbops, "restore", backup_id, "--clean", "--from", f"s3://{BUCKET}/{PREFIX}",
        "--stop-app", shlex.join(app.command("stop")),
        "--start-app", shlex.join(app.command("start")),
        "--stop-app-at", stop_at, "--json",
    ]  # fmt: skip
    done = run_measured(argv, {**bench.env, "DATABASE_URL": app.url}, log_path, bench.prefect_pid)
    if done.code != 0:
        raise BenchError(f"dbops restore failed: {done.stderr[-800:]}")
    report = json.loads(done.stdout)["application"]
    return Measured(f"dbops {stop_at}", done.wall, 0.0, report["downtime_seconds"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=500, help="plain dump size, about")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dbops-downtime-bench-"))
    (workdir / "logs").mkdir()
    results: list[Measured] = []
    try:
        with environment(workdir) as bench, contextlib.ExitStack() as stack:
            meta = machine_meta(bench)
            db = create_database(bench, "ai_saas_downtime", args.size_mb, 0)
            with ConnInfo.parse(db.url).connect() as conn:
                conn.execute(APP_TABLE)
            log(f"{db.name}: plain dump {db.plain_dump_bytes / MB:.0f} MB")
            backup = run_measured(
                [bench.dbops, "backup", "--to", f"s3://{BUCKET}/{PREFIX}", "--json"],
                {**bench.env, "DATABASE_URL": db.url},
                workdir / "logs" / "backup.log",
                bench.prefect_pid,
            )
            if backup.code != 0:
                raise BenchError(f"backup failed: {backup.stderr[-500:]}")
            manifest = json.loads(backup.stdout)
            app = App(workdir, db.url)
            app.run("start", bench.env)
            stack.callback(app.run, "stop", bench.env)
            for repeat in range(1, args.repeat + 1):
                for variant in VARIANTS:
                    before = app.pid()
                    wait_new_writes(app, before)
                    path = workdir / "logs" / f"{variant.replace(' ', '-')}-{repeat}.log"
                    if variant == "guide":
                        key = f"{PREFIX}/{manifest['dump']['name']}"
                        run = guide(bench, app, key, db.url, path)
                    else:
                        stop_at = variant.split()[1]
                        run = dbops(bench, app, manifest["backup_id"], stop_at, path)
                    wait_new_writes(app, app.pid())
                    run.downtime = app.gap(before)
                    results.append(run)
                    log(
                        f"{variant} #{repeat}: wall {run.wall:.1f} s, the application saw "
                        f"{run.downtime:.2f} s without a write"
                    )
            stack.close()
            with ConnInfo.parse(bench.cluster.url("postgres", password="")).connect() as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(db.name))
                )
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\nMachine: {meta['cpu_model']}, {meta['cpus']} CPUs, load before {meta['load_before']}; "
        f"plain dump {db.plain_dump_bytes / MB:.0f} MB; medians of {args.repeat}\n"
    )
    print("| procedure | wall (s) | application down (s) | vs guide | dbops report (s) |")
    print("|---|---:|---:|---:|---:|")
    guide_down = median([r.downtime for r in results if r.variant == "guide"])
    for variant in VARIANTS:
        mine = [r for r in results if r.variant == variant]
        down = median([r.downtime for r in mine])
        reported = [r.reported for r in mine if r.reported is not None]
        print(
            f"| {variant} | {median([r.wall for r in mine]):.1f} | {down:.2f} | "
            f"{down / guide_down:.2f}x | {median(reported):.2f} |"
            if reported
            else f"| {variant} | {median([r.wall for r in mine]):.1f} | {down:.2f} | 1.00x | — |"
        )
    return 0


if __name__ == "__main__":
    venv_tool("dbops")
    sys.exit(main())

"""Restore time and peak memory: the guide's `aws s3 cp - | gunzip | psql` against `dbops restore`.

Two dumps, both restored from moto's S3 server by both pipelines, interleaved and repeated:

  guide-shaped   a guide-shaped ai_saas database (`--size-gb`, default 1) backed up by dbops
  1000:1         a plain `.sql.gz` written in ONE gzip member (as the guide's gzip writes it) of
                 `--inflated-mb` MB of highly repetitive COPY rows, compressing over 1000:1

and reports medians of wall time and of peak RSS (the dbops Python process alone, and its whole
process tree including psql), with the ratio to the guide's pipeline in the same run. The
promise checked: restore memory stays <= 256 MB whatever the compression ratio.

    uv run python benchmarks/restore_memory.py --size-gb 1 --repeat 3
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_throughput import (  # noqa: E402
    BUCKET,
    MB,
    RSS_LIMIT_MB,
    BenchError,
    Environment,
    calibrate,
    create_database,
    environment,
    log,
    machine_meta,
    median,
    run_measured,
    venv_tool,
)

from tasks.core.postgres import ConnInfo  # noqa: E402
from tasks.storage.destinations import S3Destination  # noqa: E402

PREFIX = "restore-bench"


@dataclass
class Measured:
    case: str
    variant: str
    wall: float
    python_peak_mb: float
    tree_peak_mb: float


def fresh_target(bench: Environment, name: str) -> str:
    with ConnInfo.parse(bench.cluster.url("postgres", password="")).connect() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return bench.cluster.url(name, password="")


def guide_restore(bench: Environment, key: str, target: str, log_path: Path) -> Measured:
    psql = shutil.which("psql", path=str(Path(bench.pg_dump.path).parent)) or "psql"
    script = (
        'set -o pipefail; "$AWS" --endpoint-url "$ENDPOINT" s3 cp "s3://$BUCKET/$KEY" - '
        '| gunzip -c | "$PSQL" -q -v ON_ERROR_STOP=1 "$TARGET" > /dev/null'
    )
    env = {
        **bench.env,
        "AWS": bench.aws,
        "ENDPOINT": bench.endpoint,
        "BUCKET": BUCKET,
        "KEY": key,
        "PSQL": psql,
        "TARGET": target,
    }
    done = run_measured(["bash", "-c", script], env, log_path, None)
    if done.code != 0:
        raise BenchError(f"guide restore failed: {done.stderr[-500:]}")
    return Measured(
        "", "guide", done.wall, done.memory.python_peak / MB, done.memory.tree_peak / MB
    )


def dbops_restore(bench: Environment, source: str, target: str, log_path: Path) -> Measured:
    argv = [bench.dbops, "restore", source, "--from", f"s3://{BUCKET}/{PREFIX}"]
    done = run_measured(argv, {**bench.env, "DATABASE_URL": target}, log_path, bench.prefect_pid)
    if done.code != 0:
        raise BenchError(f"dbops restore failed: {done.stderr[-800:]}")
    return Measured(
        "", "dbops", done.wall, done.memory.python_peak / MB, done.memory.tree_peak / MB
    )


def inflated_dump(bench: Environment, megabytes: int) -> str:
    """One gzip member of repetitive COPY rows, uploaded as a guide-style backup."""
    name = "inflated_20250101_020000.sql.gz"
    line = b"y" * (MB - 1) + b"\n"
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    destination = S3Destination(f"s3://{BUCKET}/{PREFIX}", bench.s3)
    with destination.open_write(name) as out:
        out.write(
            packer.compress(b"CREATE TABLE blob(v text);\nCOPY public.blob (v) FROM stdin;\n")
        )
        for _ in range(megabytes):
            out.write(packer.compress(line))
        out.write(packer.compress(b"\\.\n") + packer.flush())
    return name


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--inflated-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dbops-restore-bench-"))
    (workdir / "logs").mkdir()
    results: list[Measured] = []
    try:
        with environment(workdir) as bench:
            meta = machine_meta(bench)
            factor = calibrate(bench)
            db = create_database(bench, "ai_saas_restore", args.size_gb * 1024 / factor, 0)
            log(f"{db.name}: plain dump {db.plain_dump_bytes / MB:.0f} MB")
            backup = run_measured(
                [bench.dbops, "backup", "--to", f"s3://{BUCKET}/{PREFIX}", "--json"],
                {**bench.env, "DATABASE_URL": db.url},
                workdir / "logs" / "backup.log",
                bench.prefect_pid,
            )
            if backup.code != 0:
                raise BenchError(f"backup failed: {backup.stderr[-500:]}")
            manifest = __import__("json").loads(backup.stdout)
            inflated = inflated_dump(bench, args.inflated_mb)
            cases = {
                "guide-shaped": (manifest["dump"]["name"], manifest["backup_id"]),
                f"1000:1 ({args.inflated_mb} MB)": (inflated, f"s3://{BUCKET}/{PREFIX}/{inflated}"),
            }
            for repeat in range(1, args.repeat + 1):
                for case, (key, source) in cases.items():
                    for variant in ("guide", "dbops"):
                        target = fresh_target(bench, "restore_target")
                        path = workdir / "logs" / f"{variant}-{repeat}.log"
                        if variant == "guide":
                            run = guide_restore(bench, f"{PREFIX}/{key}", target, path)
                        else:
                            run = dbops_restore(bench, source, target, path)
                        run.case = case
                        results.append(run)
                        log(
                            f"{case} {variant} #{repeat}: {run.wall:.1f} s, python "
                            f"{run.python_peak_mb:.0f} MB, tree {run.tree_peak_mb:.0f} MB"
                        )
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\nMachine: {meta['cpu_model']}, {meta['cpus']} CPUs, load before {meta['load_before']}; "
        f"medians of {args.repeat}\n"
    )
    print("| dump | pipeline | wall (s) | speed-up | Python peak RSS (MB) | tree peak RSS (MB) |")
    print("|---|---|---:|---:|---:|---:|")
    for case in dict.fromkeys(r.case for r in results):
        walls = {
            v: median([r.wall for r in results if r.case == case and r.variant == v])
            for v in ("guide", "dbops")
        }
        for variant in ("guide", "dbops"):
            mine = [r for r in results if r.case == case and r.variant == variant]
            python = median([r.python_peak_mb for r in mine])
            print(
                f"| {case} | {variant} | {walls[variant]:.1f} | "
                f"{walls['guide'] / walls[variant]:.2f}x | "
                f"{python:.0f} | {median([r.tree_peak_mb for r in mine]):.0f} |"
            )
    worst = max(r.python_peak_mb for r in results if r.variant == "dbops")
    print(f"\ndbops process peak RSS, worst run: {worst:.0f} MB (target <= {RSS_LIMIT_MB:.0f} MB)")
    return 0


if __name__ == "__main__":
    venv_tool("dbops")
    sys.exit(main())

"""Restore time of the parallel format against a plain dbops restore and `pg_restore -j2`.

One guide-shaped ai_saas database (`--size-gb`, default 0.3 of plain dump) is backed up by
dbops to moto's S3 server as a plain (gzip) backup and as `--format parallel --jobs 2`, and by
`pg_dump -Fd -j2 -Z1` into a local directory (the stock parallel anchor: pg_restore -j cannot
read from a pipe, so its dump sits on local disk). Then, interleaved and repeated, each into a
fresh database:

  guide            aws s3 cp s3://... - | gunzip -c | psql
  dbops plain      dbops restore ID                 (whole process, Prefect included)
  dbops parallel   dbops restore ID --jobs 2        (whole process, Prefect included)
  pg_restore -j2   pg_restore -j2 -d target DIR     (local directory dump, no S3)

Reports the backups' wall times and the restores' medians (wall, peak RSS of the process
tree), with ratios to the plain dbops restore and to the anchor in the same run.

    uv run python benchmarks/parallel_restore.py --size-gb 0.3 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_throughput import (  # noqa: E402
    BUCKET,
    MB,
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
from restore_memory import PREFIX, Measured, fresh_target, guide_restore  # noqa: E402

PIPELINE: dict[int, float] = {}  # run_restore's own seconds (no Prefect start), by run


def backup(bench: Environment, url: str, extra: list[str], log_path: Path) -> tuple[dict, float]:
    argv = [bench.dbops, "backup", "--to", f"s3://{BUCKET}/{PREFIX}", "--json", *extra]
    done = run_measured(argv, {**bench.env, "DATABASE_URL": url}, log_path, bench.prefect_pid)
    if done.code != 0:
        raise BenchError(f"backup {extra} failed: {done.stderr[-500:]}")
    return json.loads(done.stdout), done.wall


def dbops_restore(bench: Environment, backup_id: str, extra: list[str], log_path: Path):
    target = fresh_target(bench, "parallel_bench_target")
    argv = [bench.dbops, "restore", backup_id, "--from", f"s3://{BUCKET}/{PREFIX}", "--json"]
    done = run_measured(
        [*argv, *extra], {**bench.env, "DATABASE_URL": target}, log_path, bench.prefect_pid
    )
    if done.code != 0:
        raise BenchError(f"dbops restore {extra} failed: {done.stderr[-800:]}")
    measured = Measured("", "", done.wall, done.memory.python_peak / MB, done.memory.tree_peak / MB)
    PIPELINE[id(measured)] = float(json.loads(done.stdout)["seconds"])
    return measured


def tool(bench: Environment, name: str) -> str:
    return shutil.which(name, path=str(Path(bench.pg_dump.path).parent)) or name


def anchor_dump(bench: Environment, url: str, directory: Path) -> float:
    argv = [tool(bench, "pg_dump"), "-Fd", "-j2", "-Z1", "-f", str(directory), url]
    done = run_measured(argv, bench.env, bench.workdir / "logs" / "anchor-dump.log", None)
    if done.code != 0:
        raise BenchError(f"pg_dump -Fd failed: {done.stderr[-500:]}")
    return done.wall


def anchor_restore(bench: Environment, directory: Path, log_path: Path) -> Measured:
    target = fresh_target(bench, "parallel_bench_target")
    argv = [tool(bench, "pg_restore"), "-j2", "--exit-on-error", "-d", target, str(directory)]
    done = run_measured(argv, bench.env, log_path, None)
    if done.code != 0:
        raise BenchError(f"pg_restore -j2 failed: {done.stderr[-500:]}")
    return Measured("", "", done.wall, done.memory.python_peak / MB, done.memory.tree_peak / MB)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=0.3)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dbops-parallel-bench-"))
    logs = workdir / "logs"
    logs.mkdir()
    results: dict[str, list[Measured]] = {}
    backups: dict[str, float] = {}
    try:
        with environment(workdir) as bench:
            meta = machine_meta(bench)
            factor = calibrate(bench)
            db = create_database(bench, "ai_saas_parallel", args.size_gb * 1024 / factor, 0)
            log(f"{db.name}: plain dump {db.plain_dump_bytes / MB:.0f} MB")
            plain, backups["dbops backup (plain, gzip)"] = backup(
                bench, db.url, [], logs / "backup-plain.log"
            )
            parallel, backups["dbops backup --format parallel --jobs 2"] = backup(
                bench, db.url, ["--format", "parallel", "--jobs", "2"], logs / "backup-par.log"
            )
            directory = workdir / "anchor"
            backups["pg_dump -Fd -j2 -Z1 (local disk)"] = anchor_dump(bench, db.url, directory)
            objects = len(parallel["objects"])
            log(f"parallel backup: {objects} data objects, jobs {parallel['jobs']}")
            cases = {
                "guide: aws s3 cp \\| gunzip \\| psql": lambda r: guide_restore(
                    bench,
                    f"{PREFIX}/{plain['dump']['name']}",
                    fresh_target(bench, "parallel_bench_target"),
                    logs / f"guide-{r}.log",
                ),
                "dbops restore (plain)": lambda r: dbops_restore(
                    bench, plain["backup_id"], [], logs / f"plain-{r}.log"
                ),
                "dbops restore --jobs 2 (parallel)": lambda r: dbops_restore(
                    bench, parallel["backup_id"], ["--jobs", "2"], logs / f"par-{r}.log"
                ),
                "pg_restore -j2 (local directory dump)": lambda r: anchor_restore(
                    bench, directory, logs / f"anchor-{r}.log"
                ),
            }
            for repeat in range(1, args.repeat + 1):
                for case, run in cases.items():
                    measured = run(repeat)
                    results.setdefault(case, []).append(measured)
                    log(f"#{repeat} {case}: {measured.wall:.1f} s")
    except (BenchError, subprocess.SubprocessError) as exc:
        log(f"error: {exc}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\nMachine: {meta['cpu_model']}, {meta['cpus']} CPUs, load before {meta['load_before']}; "
        f"plain dump {db.plain_dump_bytes / MB:.0f} MB; parallel backup {objects} data "
        f"objects; medians of {args.repeat}\n"
    )
    print("| backup | wall (s) |\n|---|---:|")
    for name, wall in backups.items():
        print(f"| {name} | {wall:.1f} |")
    plain_wall = median([m.wall for m in results["dbops restore (plain)"]])
    anchor_wall = median([m.wall for m in results["pg_restore -j2 (local directory dump)"]])
    print(
        "\n| restore | wall (s) | vs dbops plain | vs pg_restore -j2 | restore step (s) "
        "| peak RSS tree (MB) |\n|---|---:|---:|---:|---:|---:|"
    )
    for case, runs in results.items():
        wall = median([m.wall for m in runs])
        steps = [PIPELINE[id(m)] for m in runs if id(m) in PIPELINE]
        step = f"{median(steps):.1f}" if steps else "-"
        print(
            f"| {case} | {wall:.1f} | {plain_wall / wall:.2f}x | {anchor_wall / wall:.2f}x | "
            f"{step} | {median([m.tree_peak_mb for m in runs]):.0f} |"
        )
    return 0


if __name__ == "__main__":
    venv_tool("dbops")
    sys.exit(main())

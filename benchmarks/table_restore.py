"""Getting one table back: the guide's whole restore into another database against
`dbops restore ID --table ... --into-schema ...` beside the live table.

One guide-shaped ai_saas database (`--size-gb`, default 0.25) is backed up by dbops to moto's
S3 server in plain (gzip) and custom format. Then, interleaved and repeated:

  guide           aws s3 cp s3://... - | gunzip -c | psql   into a fresh database (the only
                  way the guide has to see yesterday's rows of one table)
  dbops plain     dbops restore ID --table public.T --into-schema r   (whole process, Prefect
  dbops custom    included, against a real Prefect server), for T = User (small) and Message
                  (most of the data)

Reports medians of wall time and peak RSS (the dbops Python process, and its whole tree), with
the ratio to the guide's restore in the same run.

    uv run python benchmarks/table_restore.py --size-gb 0.25 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from psycopg import sql

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

from tasks.core.postgres import ConnInfo  # noqa: E402


def backup(bench: Environment, url: str, fmt: str, log_path: Path) -> dict:
    argv = [bench.dbops, "backup", "--to", f"s3://{BUCKET}/{PREFIX}", "--format", fmt, "--json"]
    done = run_measured(argv, {**bench.env, "DATABASE_URL": url}, log_path, bench.prefect_pid)
    if done.code != 0:
        raise BenchError(f"{fmt} backup failed: {done.stderr[-500:]}")
    return json.loads(done.stdout)


def table_restore(bench: Environment, backup_id: str, table: str, url: str, log_path: Path):
    argv = [bench.dbops, "restore", backup_id, "--from", f"s3://{BUCKET}/{PREFIX}"]
    argv += ["--table", f"public.{table}", "--into-schema", "bench_restored"]
    done = run_measured(argv, {**bench.env, "DATABASE_URL": url}, log_path, bench.prefect_pid)
    if done.code != 0:
        raise BenchError(f"dbops table restore failed: {done.stderr[-800:]}")
    with ConnInfo.parse(url).connect() as conn:
        restored = conn.execute(
            sql.SQL("SELECT count(*) FROM bench_restored.{}").format(sql.Identifier(table))
        ).fetchone()[0]
        live = conn.execute(
            sql.SQL("SELECT count(*) FROM public.{}").format(sql.Identifier(table))
        ).fetchone()[0]
        conn.execute("DROP SCHEMA bench_restored CASCADE")
    if restored != live:
        raise BenchError(f"{table}: restored {restored} rows, the database has {live}")
    return Measured("", "", done.wall, done.memory.python_peak / MB, done.memory.tree_peak / MB)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=0.25)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dbops-table-bench-"))
    (workdir / "logs").mkdir()
    results: list[Measured] = []
    try:
        with environment(workdir) as bench:
            meta = machine_meta(bench)
            factor = calibrate(bench)
            db = create_database(bench, "ai_saas_tables", args.size_gb * 1024 / factor, 0)
            log(f"{db.name}: plain dump {db.plain_dump_bytes / MB:.0f} MB")
            logs = workdir / "logs"
            plain = backup(bench, db.url, "plain", logs / "backup-plain.log")
            custom = backup(bench, db.url, "custom", logs / "backup-custom.log")
            with ConnInfo.parse(db.url).connect() as conn:
                sizes = {
                    t: conn.execute(
                        "SELECT pg_size_pretty(pg_total_relation_size(%s))", [f'public."{t}"']
                    ).fetchone()[0]
                    for t in ("User", "Message")
                }
            for repeat in range(1, args.repeat + 1):
                target = fresh_target(bench, "table_bench_target")
                run = guide_restore(
                    bench, f"{PREFIX}/{plain['dump']['name']}", target, logs / f"g{repeat}.log"
                )
                run.case, run.variant = "any table", "guide: whole restore"
                results.append(run)
                for table in ("User", "Message"):
                    for fmt, manifest in (("plain", plain), ("custom", custom)):
                        path = logs / f"{table}-{fmt}-{repeat}.log"
                        run = table_restore(bench, manifest["backup_id"], table, db.url, path)
                        run.case, run.variant = f"{table} ({sizes[table]})", f"dbops {fmt}"
                        results.append(run)
                for run in results[-5:]:
                    log(f"#{repeat} {run.case} {run.variant}: {run.wall:.1f} s")
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\nMachine: {meta['cpu_model']}, {meta['cpus']} CPUs, load before {meta['load_before']}; "
        f"plain dump {db.plain_dump_bytes / MB:.0f} MB; medians of {args.repeat}\n"
    )
    print("| table | pipeline | wall (s) | vs whole restore | Python peak RSS (MB) | tree (MB) |")
    print("|---|---|---:|---:|---:|---:|")
    guide = median([r.wall for r in results if r.variant.startswith("guide")])
    for case, variant in dict.fromkeys((r.case, r.variant) for r in results):
        mine = [r for r in results if r.case == case and r.variant == variant]
        wall = median([r.wall for r in mine])
        print(
            f"| {case} | {variant} | {wall:.1f} | {guide / wall:.2f}x | "
            f"{median([r.python_peak_mb for r in mine]):.0f} | "
            f"{median([r.tree_peak_mb for r in mine]):.0f} |"
        )
    return 0


if __name__ == "__main__":
    venv_tool("dbops")
    sys.exit(main())

"""Databases with thousands of tables: time and peak memory against N, beside the guide's pipelines.

For each N (default 1,000 / 3,000 / 10,000) a database of N tables (`id int primary key, v text,
at timestamptz`, 50 rows, one extra index) under default server settings
(max_locks_per_transaction 64) is backed up and restored by both sides, from moto's S3 server:

  guide backup    pg_dump | gzip | aws s3 cp -
  dbops backup    dbops backup (plain, custom, and parallel with 4 jobs: its object count)
  guide restore   aws s3 cp - | gunzip | psql   (into a new empty database)
  dbops restore   dbops restore ID              (into a new empty database)
  dbops verify    dbops verify ID

and then every other command is run once against the N-table database (health, vacuum,
analyze, reindex, create-readonly-user, list, prune --dry-run), reporting whether it worked.
Reports medians of `--repeat` runs (wall time; peak RSS of the whole process tree) and the
targets of issue 16: backup within 1.5x guide + 5 s, restore within 1.5x guide.

    uv run python benchmarks/many_tables.py --tables 1000 3000 10000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_throughput import (  # noqa: E402
    BUCKET,
    MB,
    BenchError,
    Environment,
    environment,
    log,
    machine_meta,
    median,
    run_measured,
)
from restore_memory import fresh_target  # noqa: E402

from tasks.core.postgres import ConnInfo  # noqa: E402

PREFIX = "many-tables"
OTHER_COMMANDS = {
    "health": ["health", "--json"],
    "vacuum --all": ["vacuum", "--all", "--json"],
    "analyze --all": ["analyze", "--all", "--json"],
    "reindex": ["reindex", "--json"],
    "create-readonly-user": ["create-readonly-user", "bench_reader", "--json"],
    "list": ["list", "--to", f"s3://{BUCKET}/{PREFIX}", "--json"],
    "prune --dry-run": [
        "prune",
        "--to",
        f"s3://{BUCKET}/{PREFIX}",
        "--keep-last",
        "1",
        "--dry-run",
    ],
}

FORMATS = ("plain", "custom", "parallel")
JOBS = 4  # parallel backup and restore workers
ONE_OFF = {*OTHER_COMMANDS, "restore --clean", "migrate, rolled back"}  # run once per N


@dataclass
class Measured:
    tables: int
    step: str
    wall: float
    tree_peak_mb: float
    ok: bool = True
    note: str = ""


def many_tables(url: str, count: int) -> None:
    """N small tenant tables, 250 per transaction (one transaction could not lock them all)."""
    with ConnInfo.parse(url).connect() as conn:
        for start in range(1, count + 1, 250):
            last = min(start + 249, count)
            conn.execute(
                f"""
                DO $$ BEGIN FOR i IN {start}..{last} LOOP EXECUTE format(
                  'CREATE TABLE tenant_%s (id int PRIMARY KEY, v text, at timestamptz);
                   CREATE INDEX ON tenant_%s (at);
                   INSERT INTO tenant_%s SELECT g, md5(g::text), now() FROM generate_series(1, 50) g',
                  i, i, i); END LOOP; END $$
                """
            )
        conn.execute("ANALYZE")


def shell(bench: Environment, script: str, extra: dict[str, str], path: Path, step: str, n: int):
    done = run_measured(
        ["bash", "-c", "set -o pipefail; " + script], {**bench.env, **extra}, path, None
    )
    if done.code != 0:
        raise BenchError(f"{step} failed at {n} tables: {done.stderr[-500:]}")
    return Measured(n, step, done.wall, done.memory.tree_peak / MB)


def dbops(bench: Environment, argv: list[str], url: str, path: Path, step: str, n: int, must=True):
    done = run_measured(
        [bench.dbops, *argv], {**bench.env, "DATABASE_URL": url}, path, bench.prefect_pid
    )
    if done.code != 0 and must:
        raise BenchError(f"dbops {step} failed at {n} tables: {done.stderr[-800:]}")
    note = "" if done.code == 0 else (done.stderr.strip().splitlines() or ["?"])[-1][:160]
    return Measured(
        n, step, done.wall, done.memory.tree_peak / MB, done.code == 0, note
    ), done.stdout


def measure(
    bench: Environment, n: int, repeat: int, logs: Path, backup_only: bool = False
) -> list[Measured]:
    name = f"tenants_{n}"
    source = fresh_target(bench, name)
    started = time.perf_counter()
    many_tables(source, n)
    log(f"{n} tables created in {time.perf_counter() - started:.0f} s")
    pg_dump = bench.pg_dump.path
    psql = str(Path(pg_dump).parent / "psql")
    s3 = {"AWS": bench.aws, "ENDPOINT": bench.endpoint, "BUCKET": BUCKET, "SRC": source}
    key = f"{PREFIX}/guide_{n}.sql.gz"
    results: list[Measured] = []
    backup_ids: dict[str, str] = {}
    for round_ in range(1, repeat + 1):
        results.append(shell(
            bench, '"$PG_DUMP" "$SRC" | gzip | "$AWS" --endpoint-url "$ENDPOINT" s3 cp - '
            '"s3://$BUCKET/$KEY"', {**s3, "PG_DUMP": pg_dump, "KEY": key},
            logs / f"guide-backup-{n}-{round_}.log", "guide backup", n,
        ))  # fmt: skip
        for fmt in FORMATS:
            argv = ["backup", "--to", f"s3://{BUCKET}/{PREFIX}", "--format", fmt, "--json"]
            measured, out = dbops(
                bench, argv + (["--jobs", str(JOBS)] if fmt == "parallel" else []),
                source, logs / f"backup-{fmt}-{n}-{round_}.log", f"dbops backup ({fmt})", n,
            )  # fmt: skip
            manifest = json.loads(out)
            if fmt == "parallel":
                measured.note = f"{stored_objects(manifest):,} objects"
            results.append(measured)
            backup_ids[fmt] = manifest["backup_id"]
        if backup_only:
            log(f"{n} tables, round {round_}: " + ", ".join(
                f"{r.step} {r.wall:.1f} s{' (' + r.note + ')' if r.note else ''}"
                for r in results[-4:]))  # fmt: skip
            continue
        target = fresh_target(bench, f"{name}_guide")
        results.append(shell(
            bench, '"$AWS" --endpoint-url "$ENDPOINT" s3 cp "s3://$BUCKET/$KEY" - | gunzip -c '
            '| "$PSQL" -q -v ON_ERROR_STOP=1 "$TARGET" > /dev/null',
            {**s3, "PSQL": psql, "KEY": key, "TARGET": target},
            logs / f"guide-restore-{n}-{round_}.log", "guide restore", n,
        ))  # fmt: skip
        for fmt, backup_id in backup_ids.items():
            target = fresh_target(bench, f"{name}_{fmt}")
            jobs = ["--jobs", str(JOBS)] if fmt == "parallel" else []
            measured, _ = dbops(
                bench, ["restore", backup_id, "--from", f"s3://{BUCKET}/{PREFIX}", *jobs], target,
                logs / f"restore-{fmt}-{n}-{round_}.log", f"dbops restore ({fmt})", n,
            )  # fmt: skip
            results.append(measured)
        measured, _ = dbops(
            bench, ["verify", backup_ids["plain"], "--from", f"s3://{BUCKET}/{PREFIX}"], source,
            logs / f"verify-{n}-{round_}.log", "dbops verify (plain)", n,
        )  # fmt: skip
        results.append(measured)
        log(
            f"{n} tables, round {round_}: "
            + ", ".join(f"{r.step} {r.wall:.1f} s" for r in results[-9:])
        )
    for step, argv in ({} if backup_only else OTHER_COMMANDS).items():
        measured, _ = dbops(bench, argv, source, logs / f"{step}-{n}.log", step, n, must=False)
        results.append(measured)
        log(f"{n} tables: {step} {'ok' if measured.ok else 'FAILED: ' + measured.note} "
            f"in {measured.wall:.1f} s")  # fmt: skip
    if not backup_only:
        results += rollbacks(bench, n, source, backup_ids["plain"], logs)
    for suffix in ("", "_guide", *(f"_{fmt}" for fmt in FORMATS)):
        with ConnInfo.parse(bench.cluster.url("postgres", password="")).connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}{suffix}" WITH (FORCE)')
    return results


def stored_objects(manifest: dict) -> int:
    """Objects a backup stored: its data objects, the dump (schema archive), globals, manifest."""
    return len(manifest.get("objects") or []) + 1 + bool(manifest.get("globals")) + 1


def has_column(url: str, table: str, column: str) -> bool:
    with ConnInfo.parse(url).connect() as conn:
        row = conn.execute(
            "SELECT count(*) FROM information_schema.columns WHERE table_name = %s"
            " AND column_name = %s",
            (table, column),
        ).fetchone()
    return bool(row and row[0])


def rollbacks(
    bench: Environment, n: int, source: str, backup_id: str, logs: Path
) -> list[Measured]:
    """The two commands that replace a whole N-table database: restore --clean over the source
    itself, and a migration whose check fails, so its pre-migration backup is restored."""
    clean, _ = dbops(
        bench, ["restore", backup_id, "--from", f"s3://{BUCKET}/{PREFIX}", "--clean", "--json"],
        source, logs / f"restore-clean-{n}.log", "restore --clean", n, must=False,
    )  # fmt: skip
    log(f"{n} tables: restore --clean {'ok' if clean.ok else 'FAILED: ' + clean.note} "
        f"in {clean.wall:.1f} s")  # fmt: skip
    migrations = logs / f"migrations-{n}"
    migrations.mkdir()
    (migrations / "0001_add_flag.sql").write_text("ALTER TABLE tenant_1 ADD COLUMN flag int;\n")
    failing_check = logs / f"check-{n}.sql"
    failing_check.write_text("SELECT false;\n")
    migrate, _ = dbops(
        bench, ["migrate", "--migrations", str(migrations), "--verify-sql", str(failing_check),
                "--to", f"s3://{BUCKET}/{PREFIX}", "--json"],
        source, logs / f"migrate-rollback-{n}.log", "migrate, rolled back", n, must=False,
    )  # fmt: skip
    rolled_back = not migrate.ok and not has_column(source, "tenant_1", "flag")
    migrate.ok, migrate.note = rolled_back, "" if rolled_back else migrate.note or "not restored"
    log(f"{n} tables: migrate, rolled back {'ok' if rolled_back else 'FAILED: ' + migrate.note} "
        f"in {migrate.wall:.1f} s")  # fmt: skip
    return [clean, migrate]


def report(results: list[Measured], repeat: int, meta: dict) -> None:
    print(
        f"\nMachine: {meta['cpu_model']}, {meta['cpus']} CPUs, load before {meta['load_before']}; "
        f"medians of {repeat}; peak RSS of the whole process tree\n"
    )
    steps = list(dict.fromkeys(r.step for r in results if r.step not in ONE_OFF))
    sizes = list(dict.fromkeys(r.tables for r in results))
    print("| tables | " + " | ".join(steps) + " |")
    print("|---:|" + "---:|" * len(steps))
    for n in sizes:
        cells = []
        for step in steps:
            mine = [r for r in results if r.tables == n and r.step == step]
            cells.append(
                f"{median([r.wall for r in mine]):.1f} s / {median([r.tree_peak_mb for r in mine]):.0f} MB"
            )
        print(f"| {n:,} | " + " | ".join(cells) + " |")
    for r in results:
        if r.step == "dbops backup (parallel)":
            print(f"- {r.tables:,} tables: parallel backup stored {r.note}")
    print("\nTargets (issue 16):")
    for n in sizes:
        wall = {
            s: median([r.wall for r in results if r.tables == n and r.step == s]) for s in steps
        }
        for fmt in FORMATS:
            limit = 1.5 * wall["guide backup"] + 5
            got = wall[f"dbops backup ({fmt})"]
            print(
                f"- {n:,} tables, backup ({fmt}) {got:.1f} s <= 1.5 x {wall['guide backup']:.1f} + 5 = {limit:.1f} s: {'met' if got <= limit else 'MISSED'}"
            )
            if "guide restore" not in wall:
                continue
            limit = 1.5 * wall["guide restore"]
            got = wall[f"dbops restore ({fmt})"]
            print(
                f"- {n:,} tables, restore ({fmt}) {got:.1f} s <= 1.5 x {wall['guide restore']:.1f} = {limit:.1f} s ({wall['guide restore'] / got:.2f}x guide): {'met' if got <= limit else 'MISSED'}"
            )
    print("\n| tables | command | result | wall (s) | tree peak RSS (MB) |")
    print("|---:|---|---|---:|---:|")
    for r in results:
        if r.step in ONE_OFF:
            print(
                f"| {r.tables:,} | {r.step} | {'ok' if r.ok else 'failed: ' + r.note} | {r.wall:.1f} | {r.tree_peak_mb:.0f} |"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, nargs="+", default=[1000, 3000, 10000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--backup-only", action="store_true", help="measure the backups alone (guide and dbops)"
    )
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dbops-many-tables-"))
    (workdir / "logs").mkdir()
    results: list[Measured] = []
    meta: dict = {}
    try:
        with environment(workdir) as bench:
            meta = machine_meta(bench)
            for n in args.tables:
                results += measure(bench, n, args.repeat, workdir / "logs", args.backup_only)
    except BenchError as exc:
        log(f"error: {exc}")
        report(results, args.repeat, meta) if results else None
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(results, args.repeat, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())

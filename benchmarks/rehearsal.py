"""What observing a rehearsal costs: the same migrations applied by the built-in runner plainly
(the baseline, as `dbops migrate` applies them) and through the rehearsal's Observer (locks,
relfilenodes and table stats read around every statement), each into a fresh copy of the same
database; plus squawk's lint time per file.

The database holds one `events` table of `--rows` rows and `--tables` small extra tables (the
Observer reads every relation's pg_class row around each statement, so the catalog's size is
what its cost grows with). The migrations: a nullable ADD COLUMN, a backfill UPDATE, a plain
CREATE INDEX, an ALTER COLUMN TYPE (a rewrite), and one migration of `--statements` COMMENT ON
statements (per-statement overhead). Runs alternate plain/observed; medians of `--repeat`. "reported" is
the migration's time as the rehearsal reports it (wall time less the Observer's own), which
should match "plain": it is the expected production duration.

    uv run python benchmarks/rehearsal.py --rows 200000 --tables 1000 --statements 200 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from psycopg import sql

from tasks.core.postgres import ConnInfo
from tasks.demo.embedded import LocalCluster
from tasks.migrations.files import discover_migrations
from tasks.migrations.lint import lint_migration
from tasks.migrations.observe import Observer
from tasks.migrations.rehearsal import rehearse_migration
from tasks.migrations.runner import RunOptions, apply_migration


def build_base(url: str, rows: int, tables: int) -> None:
    with ConnInfo.parse(url).connect() as conn:
        conn.execute(
            "CREATE TABLE events (id bigserial PRIMARY KEY, account int NOT NULL, body text)"
        )
        conn.execute(
            "INSERT INTO events (account, body) SELECT g %% 1000, md5(g::text) "
            "FROM generate_series(1, %s) g",
            [rows],
        )
        for start in range(0, tables, 250):
            with conn.transaction():
                for n in range(start, min(start + 250, tables)):
                    conn.execute(f"CREATE TABLE extra_{n} (id int PRIMARY KEY, v text)")
        conn.execute("VACUUM ANALYZE")


def write_migrations(root: Path, statements: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    files = {
        "0001_add.sql": "ALTER TABLE events ADD COLUMN note text;\n",
        "0002_backfill.sql": "UPDATE events SET note = body WHERE account < 100;\n",
        "0003_index.sql": "CREATE INDEX events_account ON events (account);\n",
        "0004_type.sql": "ALTER TABLE events ALTER COLUMN account TYPE bigint;\n",
        "0005_comments.sql": "".join(
            f"COMMENT ON TABLE extra_{n % 50} IS 'c{n}';\n" for n in range(statements)
        ),
    }
    for name, text in files.items():
        (root / name).write_text(text)
    return root


def fresh_copy(pg: LocalCluster, name: str) -> ConnInfo:
    with ConnInfo.parse(pg.url("postgres")).connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE base").format(sql.Identifier(name)))
    return ConnInfo.parse(pg.url(name))


def one_run(
    pg: LocalCluster, root: Path, observed: bool, reported: dict[str, list[float]]
) -> dict[str, float]:
    """Wall time per migration; for an observed run also what the rehearsal reports as the
    migration's time (the wall time less the Observer's own)."""
    info = fresh_copy(pg, "observed" if observed else "plain")
    times = {}
    for migration in discover_migrations(root):
        observer = Observer(info)
        started = time.perf_counter()
        if observed:
            apply_migration(info, migration, "bench", RunOptions(), execute=observer)
        else:
            apply_migration(info, migration, "bench", RunOptions())
        times[migration.id] = time.perf_counter() - started
        if observed:
            reported.setdefault(migration.id, []).append(times[migration.id] - observer.overhead)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--tables", type=int, default=1000)
    parser.add_argument("--statements", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dbops-rehearsal-bench-") as tmp:
        work = Path(tmp)
        with LocalCluster(work / "pg") as pg:
            with ConnInfo.parse(pg.url("postgres")).connect() as conn:
                conn.execute("CREATE DATABASE base")
            print(f"building base: {args.rows} rows, {args.tables} tables", file=sys.stderr)
            build_base(pg.url("base"), args.rows, args.tables)
            root = write_migrations(work / "migrations", args.statements)
            runs: dict[str, list[dict[str, float]]] = {"plain": [], "observed": []}
            reported: dict[str, list[float]] = {}
            for i in range(args.repeat):
                for kind in ("plain", "observed"):
                    runs[kind].append(one_run(pg, root, kind == "observed", reported))
                    print(f"run {i + 1} {kind} done", file=sys.stderr)
            lint = {}
            for migration in discover_migrations(root):
                started = time.perf_counter()
                lint_migration(migration, pg.major)
                lint[migration.id] = time.perf_counter() - started
            report = rehearse_migration(
                fresh_copy(pg, "rated"), discover_migrations(root)[3], RunOptions(), 5, 18, print
            )
    ids = list(runs["plain"][0])
    rows = []
    for mid in ids + ["total"]:
        plain = statistics.median(
            sum(r.values()) if mid == "total" else r[mid] for r in runs["plain"]
        )
        observed = statistics.median(
            sum(r.values()) if mid == "total" else r[mid] for r in runs["observed"]
        )
        told = statistics.median(
            [sum(v) for v in zip(*reported.values(), strict=True)]
            if mid == "total"
            else reported[mid]
        )
        rows.append((mid, plain, observed, observed / plain if plain else float("nan"), told))
    print(f"# Rehearsal observation cost ({args.rows} rows, {args.tables} extra tables)\n")
    print(f"{os.cpu_count()} CPUs, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}\n")
    print("| migration | plain (s) | observed (s) | ratio | reported (s) | squawk lint (s) |")
    print("|---|---|---|---|---|---|")
    for mid, plain, observed, ratio, told in rows:
        print(
            f"| {mid} | {plain:.3f} | {observed:.3f} | {ratio:.2f} | {told:.3f} | "
            f"{lint.get(mid, sum(lint.values())):.3f} |"
        )
    effect = report.statements[0].effects[0]
    print(
        f"\n0004_type on the copy: {effect.lock} on {effect.relation} held "
        f"{effect.held_seconds:.3f} s, rewritten={effect.rewritten}, rated {report.rating}"
    )
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "lint": lint, "medians": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

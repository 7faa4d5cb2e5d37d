"""Listing and planning a prune of thousands of backups under one S3 prefix (moto on loopback).

Writes `--backups` (default 2,000) backups of one database (dump, manifest, and a verification
record for half of them: 5,000 objects over several S3 pages) and times, medians of `--repeat`:

  aws s3 ls       the stock client listing the prefix (the floor: the listing alone)
  sequential      list_manifests reading one manifest at a time, no cache (how dbops read first)
  concurrent      list_manifests, READERS manifests at a time, no cache (DBOPS_CACHE_DIR=off)
  inventory       take_inventory, what prune reads before it plans (concurrent, no cache)
  inventory (warm cache)  take_inventory with the metadata cache filled by an earlier run
  dbops list      the whole `dbops list --json` process, cold: an empty cache directory
  dbops prune     the whole `dbops prune --dry-run --keep-last 7` process (a Prefect flow), cold
  ... (warm cache)  the same processes with the cache an earlier run of each filled

    uv run python benchmarks/many_backups.py --backups 2000 --repeat 3
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from backup_throughput import BUCKET, environment, log, machine_meta, median  # noqa: E402

import tasks.backup.manifest as manifest_module  # noqa: E402
from tasks.backup.manifest import (  # noqa: E402
    VERIFIED_SUFFIX,
    Manifest,
    ObjectInfo,
    Verification,
    list_manifests,
    new_backup_id,
)
from tasks.retention.inventory import take_inventory  # noqa: E402
from tasks.storage.destinations import S3Destination  # noqa: E402

PREFIX = "many-backups"


def write_backups(destination: S3Destination, count: int) -> None:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)

    def one(i: int) -> None:
        started = start - timedelta(hours=i)
        backup_id = new_backup_id("ai_saas", started)
        dump = backup_id + ".sql.gz"
        destination.write_bytes(dump, b"\x1f\x8b")
        manifest = Manifest(
            backup_id=backup_id, database="ai_saas", source="postgresql://app@db:5432/ai_saas",
            server_version="18.0", pg_dump_version="18.0", format="plain", compression="gzip",
            compression_level=6, dump=ObjectInfo(name=dump, size=2, sha256="0" * 64, raw_size=0),
            started_at=started, finished_at=started + timedelta(seconds=5), duration_seconds=5.0,
            row_counts={f"public.t{j}": j for j in range(20)},
        )  # fmt: skip
        destination.write_bytes(manifest.manifest_name, manifest.to_json().encode())
        if i % 2 == 0:
            record = Verification(verified_at=started + timedelta(hours=1), ok=True)
            destination.write_bytes(backup_id + VERIFIED_SUFFIX, record.model_dump_json().encode())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(one, range(count)))


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backups", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="dbops-many-backups-"))
    times: dict[str, list[float]] = {}
    with environment(workdir) as bench:
        meta = machine_meta(bench)
        destination = S3Destination(f"s3://{BUCKET}/{PREFIX}", bench.s3)
        started = time.perf_counter()
        write_backups(destination, args.backups)
        log(f"{args.backups} backups written in {time.perf_counter() - started:.0f} s")
        url = f"s3://{BUCKET}/{PREFIX}"
        readers = manifest_module.READERS

        def sequential() -> object:
            manifest_module.READERS = 1
            try:
                return list_manifests(destination, "ai_saas")
            finally:
                manifest_module.READERS = readers

        caches = workdir / "caches"
        warm = str(caches / "warm")

        def run(argv: list[str], cache: str | None = None) -> Callable[[], object]:
            """The process with `cache` as DBOPS_CACHE_DIR, or (cold) a new empty one."""

            def go() -> object:
                cache_dir = cache or tempfile.mkdtemp(prefix="cold-", dir=caches)
                env = {**bench.env, "DBOPS_CACHE_DIR": cache_dir}
                done = subprocess.run(argv, env=env, capture_output=True, check=False)
                if done.returncode != 0:
                    raise SystemExit(f"{argv[:2]} failed: {done.stderr.decode()[-400:]}")
                return done

            return go

        def uncached(action: Callable[[], object]) -> Callable[[], object]:
            def go() -> object:
                os.environ["DBOPS_CACHE_DIR"] = "off"
                return action()

            return go

        def cached(action: Callable[[], object]) -> Callable[[], object]:
            def go() -> object:
                os.environ["DBOPS_CACHE_DIR"] = warm
                return action()

            return go

        dbops_list = [bench.dbops, "list", "--to", url, "--json"]
        dbops_prune = [bench.dbops, "prune", "--to", url, "--keep-last", "7", "--dry-run"]
        steps: dict[str, Callable[[], object]] = {
            "aws s3 ls": run(
                [bench.aws, "--endpoint-url", bench.endpoint, "s3", "ls", url + "/", "--recursive"]
            ),
            "sequential": uncached(sequential),
            "concurrent": uncached(lambda: list_manifests(destination, "ai_saas")),
            "inventory": uncached(lambda: take_inventory(destination, "ai_saas")),
            "inventory (warm cache)": cached(lambda: take_inventory(destination, "ai_saas")),
            "dbops list": run(dbops_list),
            "dbops list (warm cache)": run(dbops_list, warm),
            "dbops prune": run(dbops_prune),
            "dbops prune --dry-run (warm cache)": run(dbops_prune, warm),
        }
        caches.mkdir()
        started = time.perf_counter()
        run(dbops_list, warm)()  # fills the warm cache (prune's inventory reads no more)
        log(f"warm cache filled by one dbops list in {time.perf_counter() - started:.1f} s")
        os.environ["DBOPS_CACHE_DIR"] = "off"
        assert len(list_manifests(destination, "ai_saas")) == args.backups
        for round_ in range(1, args.repeat + 1):
            for step, action in steps.items():
                times.setdefault(step, []).append(timed(action))
            log(f"round {round_}: " + ", ".join(f"{s} {t[-1]:.2f} s" for s, t in times.items()))
        objects = len(destination.list())
    print(
        f"\nMachine: {meta['cpu_model']}, {meta['cpus']} CPUs, load before {meta['load_before']}; "
        f"{args.backups} backups ({objects} objects); medians of {args.repeat}; "
        f"load after {os.getloadavg()[0]:.1f}\n"
    )
    base = median(times["sequential"])
    cold_of = {"inventory (warm cache)": "inventory", "dbops list (warm cache)": "dbops list"}
    cold_of["dbops prune --dry-run (warm cache)"] = "dbops prune"
    print("| step | wall (s) | vs sequential | warm vs cold |")
    print("|---|---:|---:|---:|")
    for step, values in times.items():
        cold = f"{median(times[cold_of[step]]) / median(values):.2f}x" if step in cold_of else ""
        print(f"| {step} | {median(values):.2f} | {base / median(values):.2f}x | {cold} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

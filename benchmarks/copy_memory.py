"""A second copy's time and memory against reading the same backup, in the same run.

    uv run python benchmarks/copy_memory.py --size-mb 256 --repeat 3

Starts moto's S3 server on loopback, stores one backup of --size-mb random bytes (a dump
object and its manifest) in bucket `src`, then runs, interleaved, each in a fresh child
process: `read` (the baseline: stream the object through the same reader and SHA-256,
discard it), `copy-s3` (`copy_backup` to bucket `dst`) and `copy-dir` (`copy_backup` to a
local directory). Reports median wall seconds, the ratio to `read`, and the child's peak RSS
(VmHWM) and its excess over `read`'s: the copy's own buffers (the multipart writer holds
at most 4 parts of 16 MiB).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

import boto3

REPO = Path(__file__).resolve().parent.parent
CHILD = r"""
import sys, time
from tasks.backup.manifest import read_manifest
from tasks.copies.transfer import copy_backup
from tasks.core.settings import s3_options_from_env
from tasks.core.streams import CHUNK_SIZE, HashingReader
from tasks.storage.destinations import Destination
kind, target = sys.argv[1], sys.argv[2]
source = Destination.from_url("s3://src/b", s3_options_from_env())
manifest = read_manifest(source, "bench_20260101_000000.manifest.json")
started = time.monotonic()
if kind == "read":
    with source.open_read(manifest.dump.name) as raw:
        hashing = HashingReader(raw)
        while hashing.read(CHUNK_SIZE):
            pass
    assert hashing.hexdigest() == manifest.dump.sha256
else:
    copy_backup(source, Destination.from_url(target, s3_options_from_env()), manifest)
seconds = time.monotonic() - started
# VmHWM: this process's own peak (ru_maxrss would start at the forking parent's, moto's).
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(seconds, int(hwm.split()[1]) * 1024)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_child(kind: str, target: str, env: dict[str, str]) -> tuple[float, int]:
    process = subprocess.Popen(
        [sys.executable, "-c", CHILD, kind, target], cwd=REPO, env=env, stdout=subprocess.PIPE
    )
    out = process.stdout.read()  # type: ignore[union-attr]
    if process.wait() != 0:
        raise SystemExit(f"{kind} failed with status {process.returncode}")
    seconds, peak = out.split()
    return float(seconds), int(peak)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    from tasks.backup.manifest import Manifest, ObjectInfo, write_manifest
    from tasks.core.settings import s3_options_from_env
    from tasks.storage.destinations import Destination

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": endpoint,
    }
    os.environ.update({k: env[k] for k in env if k.startswith("AWS_")})
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="src")
    client.create_bucket(Bucket="dst")
    source = Destination.from_url("s3://src/b", s3_options_from_env())
    data = os.urandom(args.size_mb * 1024 * 1024)
    source.write_bytes("bench_20260101_000000.sql.gz", data)
    now = datetime.now(UTC)
    write_manifest(
        source,
        Manifest(
            backup_id="bench_20260101_000000",
            database="bench",
            source="postgresql://bench@localhost/bench",
            server_version="18",
            pg_dump_version="18",
            format="plain",
            compression="gzip",
            compression_level=6,
            dump=ObjectInfo(
                name="bench_20260101_000000.sql.gz",
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
            ),
            started_at=now,
            finished_at=now,
            duration_seconds=0,
            row_counts={},
        ),
    )
    del data
    results: dict[str, list[tuple[float, int]]] = {"read": [], "copy-s3": [], "copy-dir": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.repeat):
            for kind in results:
                target = {"copy-s3": f"s3://dst/r{n}", "copy-dir": f"{tmp}/r{n}"}.get(kind, "")
                results[kind].append(run_child(kind, target, env))
                print(f"{kind} run {n + 1}: {results[kind][-1]}", file=sys.stderr)
    server.stop()
    base_time = statistics.median(t for t, _ in results["read"])
    base_rss = max(r for _, r in results["read"])
    print(f"| {args.size_mb} MiB object | median s | x read | peak RSS MiB | over read MiB |")
    print("|---|---|---|---|---|")
    summary = {}
    for kind, runs in results.items():
        seconds = statistics.median(t for t, _ in runs)
        rss = max(r for _, r in runs)
        summary[kind] = {"seconds": seconds, "peak_rss": rss}
        print(
            f"| {kind} | {seconds:.2f} | {seconds / base_time:.2f} | {rss / 2**20:.0f} "
            f"| {(rss - base_rss) / 2**20:.0f} |"
        )
    print(json.dumps({"size_mb": args.size_mb, "cpus": os.cpu_count(), **summary}), file=sys.stderr)


if __name__ == "__main__":
    main()

"""What age encryption costs a backup: throughput and peak memory with and without, same run.

    uv run python benchmarks/encryption.py --size-mb 128 --stage-mb 1024 --repeat 3

Two parts, each run a fresh child process, interleaved, medians reported:

1. The backup pipeline (`run_backup`: pg_dump -> gzip -> [age] -> SHA-256 -> a local
   directory, no Prefect) of a guide-shaped database whose plain dump is about --size-mb,
   `gzip` against `gzip+age` (encrypted to one x25519 recipient), and the same without
   compression (`none`, `none+age`: every dump byte goes through age, the worst case); then
   the restore side's read-back (`read_back`: SHA-256, [decrypt], gunzip, whole object) of
   the gzip ones.
2. The stream stages alone over --stage-mb of incompressible 4 MiB chunks (what compressed
   data looks like): `hash` (SHA-256 only, the baseline), `encrypt` (`encrypt_chunks` then
   SHA-256) and `decrypt` (`DecryptingReader` over the ciphertext file). Peak RSS that does not
   grow with --stage-mb is the memory bound.

Peak RSS is the child's own VmHWM. MB = MiB of the plain dump (part 1) or of input (part 2).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHILD = r"""
import hashlib, os, sys, time
kind, url, workdir, key_file, size_mb = sys.argv[1:6]
from tasks.backup.encryption import DecryptingReader, encrypt_chunks, load_identity, parse_recipients
public = open(key_file + ".pub").read().strip()
started = time.monotonic()
moved = 0
stored = 0
if kind in ("gzip", "gzip+age", "none", "none+age"):
    from tasks.backup.pipeline import BackupRequest, run_backup
    from tasks.core.postgres import ConnInfo
    from tasks.storage.destinations import Destination
    which = "age" if kind.endswith("+age") else "plain"
    request = BackupRequest(
        conn=ConnInfo.parse(url),
        destination=Destination.from_url(os.path.join(workdir, which)),
        compression=kind.split("+")[0],
        recipients=parse_recipients([public]) if which == "age" else None,
    )
    manifest = run_backup(request)
    moved, stored = manifest.dump.raw_size, manifest.dump.size
    if kind.startswith("gzip"):
        open(os.path.join(workdir, which + ".last"), "w").write(manifest.backup_id)
elif kind in ("read-plain", "read-age"):
    from tasks.backup.manifest import read_manifest
    from tasks.restore.readback import read_back_dump, read_back
    from tasks.storage.destinations import Destination
    which = kind.split("-")[1]
    destination = Destination.from_url(os.path.join(workdir, which))
    backup_id = open(os.path.join(workdir, which + ".last")).read()
    manifest = read_manifest(destination, backup_id + ".manifest.json")
    identity = load_identity(key_file) if which == "age" else None
    seen = read_back(destination, manifest.dump, "gzip", which == "age", identity)
    assert b"PostgreSQL database dump complete" in seen.tail
    moved, stored = seen.raw_bytes, seen.stored_bytes
else:
    chunk = os.urandom(4 * 1024 * 1024)
    count = int(size_mb) // 4
    def chunks():
        for n in range(count):
            yield bytes(chunk[:-8]) + n.to_bytes(8, "big")  # a fresh object each time
    hasher = hashlib.sha256()
    ciphertext = os.path.join(workdir, "stage.age")
    if kind == "hash":
        for piece in chunks():
            hasher.update(piece)
    elif kind == "encrypt":
        with open(ciphertext, "wb") as out:
            for piece in encrypt_chunks(chunks(), parse_recipients([public])):
                hasher.update(piece)
                out.write(piece)
    else:
        with open(ciphertext, "rb") as raw, DecryptingReader(raw, load_identity(key_file), "x") as plain:
            while piece := plain.read(4 * 1024 * 1024):
                hasher.update(piece)
    moved = stored = count * len(chunk)
seconds = time.monotonic() - started
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(seconds, int(hwm.split()[1]) * 1024, moved, stored)
"""
Run = tuple[float, int, int, int]  # seconds, peak RSS, bytes in, bytes stored


def run_child(kind: str, url: str, workdir: str, key: str, stage_mb: int) -> Run:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, kind, url, workdir, key, str(stage_mb)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise SystemExit(f"{kind} failed: {done.stderr.strip().splitlines()[-1:]}")
    seconds, peak, moved, stored = done.stdout.split()
    return float(seconds), int(peak), int(moved), int(stored)


def table(title: str, results: dict[str, list[Run]], bases: dict[str, str]) -> list[str]:
    """One row per kind: its median against its baseline's (`bases`: kind -> baseline)."""
    lines = [
        f"| {title} | stored MiB | median s | MB/s | x baseline | peak RSS MiB |",
        "|---|---|---|---|---|---|",
    ]
    for kind, runs in results.items():
        seconds = statistics.median(r[0] for r in runs)
        base_s = statistics.median(r[0] for r in results[bases[kind]])
        moved, stored = runs[0][2] / 2**20, runs[0][3] / 2**20
        rss = max(r[1] for r in runs) / 2**20
        lines.append(
            f"| {kind} | {stored:.0f} | {seconds:.2f} | {moved / seconds:.0f} "
            f"| {seconds / base_s:.2f} | {rss:.0f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=128)
    parser.add_argument("--stage-mb", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from tasks.core.postgres import ConnInfo
    from tasks.demo.embedded import LocalCluster
    from tasks.demo.sample_data import create_sample_database

    with tempfile.TemporaryDirectory() as tmp:
        key = os.path.join(tmp, "key.txt")
        subprocess.run(["age-keygen", "-o", key], check=True, capture_output=True)
        public = subprocess.run(
            ["age-keygen", "-y", key], check=True, capture_output=True, text=True
        ).stdout
        Path(key + ".pub").write_text(public)
        with LocalCluster(Path(tmp) / "pg") as cluster:
            with ConnInfo.parse(cluster.url()).connect() as conn:
                conn.execute("CREATE DATABASE bench")
            url = cluster.url("bench")
            print(f"generating a {args.size_mb} MB database", file=sys.stderr)
            create_sample_database(ConnInfo.parse(url), size_mb=args.size_mb)
            pipeline: dict[str, list[Run]] = {
                k: [] for k in ("gzip", "gzip+age", "none", "none+age")
            }
            reads: dict[str, list[Run]] = {"read-plain": [], "read-age": []}
            for n in range(args.repeat):
                for kind in (*pipeline, *reads):
                    runs = pipeline.get(kind, reads.get(kind))
                    assert runs is not None
                    runs.append(run_child(kind, url, tmp, key, args.stage_mb))
                    print(f"{kind} run {n + 1}: {runs[-1]}", file=sys.stderr)
        stages: dict[str, list[Run]] = {"hash": [], "encrypt": [], "decrypt": []}
        for n in range(args.repeat):
            for kind, runs in stages.items():
                runs.append(run_child(kind, "", tmp, key, args.stage_mb))
                print(f"{kind} run {n + 1}: {runs[-1]}", file=sys.stderr)
    dump_mb = pipeline["gzip"][0][2] / 2**20
    bases = {"gzip+age": "gzip", "none+age": "none", "read-age": "read-plain", "encrypt": "hash"}
    bases |= {"decrypt": "hash"} | {k: k for k in ("gzip", "none", "read-plain", "hash")}
    print("\n".join(table(f"backup, {dump_mb:.0f} MiB plain dump", pipeline, bases)))
    print()
    print("\n".join(table("read-back of the gzip backup", reads, bases)))
    print()
    print("\n".join(table(f"stages, {args.stage_mb} MiB", stages, bases)))
    summary = {
        "cpus": os.cpu_count(),
        "load": os.getloadavg(),
        **{k: v for part in (pipeline, reads, stages) for k, v in part.items()},
    }
    print(json.dumps(summary), file=sys.stderr)


if __name__ == "__main__":
    main()

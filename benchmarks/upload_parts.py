"""Upload time of one large object to S3 (moto) by part size and parts in flight.

moto's S3 HTTP server runs as its own process on loopback (so it does not share
this process's GIL), and `S3Destination.open_write` uploads the same bytes with
each schedule, interleaved, `--repeat` times; medians and ratios against one part
in flight are printed as markdown.

On loopback one connection is as fast as moto can store, so parts in flight barely
matter; to S3 over a real network one TCP connection is limited by its round trip
(window / RTT), which is why clients upload parts in parallel. `--link-mb-s N`
puts a relay in front of moto that lets each connection send at most N MB/s.

    uv run python benchmarks/upload_parts.py                       # ~500 MB, 3 repeats
    uv run python benchmarks/upload_parts.py --link-mb-s 25        # a per-connection limit
    uv run python benchmarks/upload_parts.py --size-mb 100 --repeat 1

MB means MiB (2**20 bytes).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tasks.demo.embedded import free_port  # noqa: E402
from tasks.storage.destinations import S3Destination, S3Options  # noqa: E402
from tasks.storage.multipart import MiB, PartSchedule  # noqa: E402

BUCKET = "dbops-upload-bench"
CHUNK = 1 * MiB  # what the backup pipeline hands the writer at a time, about


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{endpoint}/moto-api/", timeout=1)
            return process, endpoint
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("moto server did not start")


def throttled_relay(upstream: str, mb_per_s: float) -> str:
    """A TCP relay to upstream whose every connection sends at most mb_per_s upstream."""
    host, port = upstream.removeprefix("http://").split(":")
    listener = socket.create_server(("127.0.0.1", 0))

    def pipe(src: socket.socket, dst: socket.socket, limit: float | None) -> None:
        started, sent = time.monotonic(), 0
        try:
            while data := src.recv(256 * 1024):
                dst.sendall(data)
                sent += len(data)
                if limit:
                    ahead = sent / limit - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def serve() -> None:
        while True:
            client, _ = listener.accept()
            server = socket.create_connection((host, int(port)))
            threading.Thread(
                target=pipe, args=(client, server, mb_per_s * MiB), daemon=True
            ).start()
            threading.Thread(target=pipe, args=(server, client, None), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return f"http://127.0.0.1:{listener.getsockname()[1]}"


def upload(endpoint: str, schedule: PartSchedule, data: memoryview) -> float:
    dest = S3Destination(f"s3://{BUCKET}/bench", S3Options(endpoint_url=endpoint))
    dest.schedule = schedule
    started = time.perf_counter()
    with dest.open_write("object") as stream:
        for offset in range(0, len(data), CHUNK):
            stream.write(data[offset : offset + CHUNK])
    seconds = time.perf_counter() - started
    size = dest.client.head_object(Bucket=BUCKET, Key="bench/object")["ContentLength"]
    assert size == len(data), (size, len(data))
    dest.delete("object")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--part-mb", default="16,64", help="first part sizes to compare")
    parser.add_argument("--in-flight", default="1,3", help="parts in flight to compare")
    parser.add_argument("--link-mb-s", type=float, default=0, help="per-connection MB/s limit")
    args = parser.parse_args(argv)
    for key, value in {
        "AWS_ACCESS_KEY_ID": "bench",
        "AWS_SECRET_ACCESS_KEY": "bench-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        os.environ.setdefault(key, value)
    schedules = {
        (part, flight): PartSchedule(
            first=part * MiB, largest=max(part, 1024) * MiB, in_flight=flight
        )
        for part in map(int, args.part_mb.split(","))
        for flight in map(int, args.in_flight.split(","))
    }
    data = memoryview(os.urandom(args.size_mb * MiB))  # incompressible, like a compressed dump
    moto, endpoint = start_moto()
    link = f"each connection limited to {args.link_mb_s:g} MB/s" if args.link_mb_s else "loopback"
    if args.link_mb_s:
        endpoint = throttled_relay(endpoint, args.link_mb_s)
    try:
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
        upload(endpoint, PartSchedule(), data[: 64 * MiB])  # warm-up, not measured
        times: dict[tuple[int, int], list[float]] = {key: [] for key in schedules}
        for round_ in range(args.repeat):
            for key, schedule in schedules.items():
                seconds = upload(endpoint, schedule, data)
                times[key].append(seconds)
                print(
                    f"round {round_ + 1}: {key[0]} MB parts, {key[1]} in flight: {seconds:.2f} s",
                    file=sys.stderr,
                )
    finally:
        moto.terminate()
        moto.wait()
    print(
        f"Upload of {args.size_mb} MB to moto (own process, {link}), medians of {args.repeat}; "
        f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}\n"
    )
    print("| first part | in flight | median s | MB/s | time vs 1 in flight |")
    print("|---|---|---|---|---|")
    for (part, flight), runs in times.items():
        median = statistics.median(runs)
        single = statistics.median(times.get((part, 1), runs))
        print(
            f"| {part} MB | {flight} | {median:.2f} | {args.size_mb / median:.0f} | "
            f"{median / single:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Backup throughput: the guide's backup-to-s3.sh against `dbops backup` (gzip and zstd).

One run starts everything it needs: an embedded PostgreSQL with a guide-shaped
database of the requested dump size, moto's real S3 HTTP server on loopback, and
one real Prefect server (so `dbops backup` talks to an API as in production
instead of starting a temporary server inside its own process). Then it times,
interleaved and repeated:

  guide   bash: pg_dump "$URL" | gzip > /tmp/f.sql.gz && aws s3 cp ... && rm
  gzip    dbops backup --to s3://... --compression gzip --json
  zstd    dbops backup --to s3://... --compression zstd --json

and reports wall time, MB/s of plain dump, peak RSS of each process tree and
the speed-ups, as a markdown table (and JSON with --json).

    uv run python benchmarks/backup_throughput.py --size-gb 1
    uv run python benchmarks/backup_throughput.py --sizes 0.25,1 --repeat 3 --json out.json

MB means MiB (2**20 bytes) throughout, as in the dbops manifest.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import platform
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tasks.backup.compression import DecompressingReader  # noqa: E402
from tasks.backup.manifest import MANIFEST_SUFFIX, read_manifest  # noqa: E402
from tasks.core.client_tools import ClientTool, find_client_tool  # noqa: E402
from tasks.core.postgres import ConnInfo, server_version  # noqa: E402
from tasks.demo.embedded import LocalCluster, free_port  # noqa: E402
from tasks.demo.sample_data import BYTES_PER_MESSAGE, create_sample_database  # noqa: E402
from tasks.storage.destinations import (  # noqa: E402
    Destination,
    S3Destination,
    S3Options,  # noqa: E402
)

MB = 1024 * 1024
BUCKET = "dbops-bench"
VARIANTS = ("guide", "gzip", "zstd")
CALIBRATION_MB = 8.0
SAMPLE_INTERVAL = 0.05
RUN_TIMEOUT = 3600.0
TARGETS = {"gzip": 2.0, "zstd": 6.0}
RSS_LIMIT_MB = 256.0
MAGIC = {"gzip": b"\x1f\x8b", "zstd": b"\x28\xb5\x2f\xfd"}

# The guide's backup-to-s3.sh, as written, plus pipefail (without it a failed pg_dump
# would upload a truncated dump) and two timestamps so the report can split the time.
GUIDE_SCRIPT = r"""
set -o pipefail
set -e
t0=$EPOCHREALTIME
BACKUP_FILE="ai_saas_$(date +%Y%m%d_%H%M%S).sql.gz"
"$PG_DUMP" "$DATABASE_URL" | gzip > "$BENCH_TMP/$BACKUP_FILE"
t1=$EPOCHREALTIME
"$AWS" s3 cp "$BENCH_TMP/$BACKUP_FILE" "s3://$BENCH_BUCKET/$BENCH_PREFIX/$BACKUP_FILE" \
    --endpoint-url "$AWS_ENDPOINT_URL_S3"
t2=$EPOCHREALTIME
rm "$BENCH_TMP/$BACKUP_FILE"
echo "Backup completed: $BACKUP_FILE"
echo "TIMES $t0 $t1 $t2" >&2
"""


class BenchError(RuntimeError):
    """The benchmark could not run or a run produced a wrong result."""


# ---------------------------------------------------------------------------
# Measuring a process tree
# ---------------------------------------------------------------------------


@dataclass
class MemoryStats:
    tree_peak: int = 0
    python_peak: int = 0
    python_before_dump: int | None = None
    python_peak_during_dump: int = 0
    per_name_peak: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    dump_first_seen: float | None = None  # perf_counter() when pg_dump was first/last alive
    dump_last_seen: float | None = None

    @property
    def pipeline_delta(self) -> int | None:
        """Growth of the Python process while pg_dump ran, over its size just before."""
        if self.python_before_dump is None or not self.python_peak_during_dump:
            return None
        return max(0, self.python_peak_during_dump - self.python_before_dump)


class TreeSampler(threading.Thread):
    """Sums the RSS of a process and all its descendants every SAMPLE_INTERVAL seconds."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True, name="rss-sampler")
        self.root_pid = pid
        self.stats = MemoryStats()
        self._stop_event = threading.Event()
        self._is_python: dict[int, bool] = {}
        self._dump_seen = False

    def _python(self, proc: psutil.Process) -> bool:
        if proc.pid not in self._is_python:
            try:
                exe = os.path.basename(os.path.realpath(proc.exe()))
            except (psutil.Error, OSError):
                return False
            self._is_python[proc.pid] = exe.startswith("python")
        return self._is_python[proc.pid]

    def sample(self) -> None:
        try:
            root = psutil.Process(self.root_pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = python = 0
        root_rss: int | None = None  # only when the root is the Python process (dbops)
        dump_running = False
        for proc in procs:
            try:
                rss = proc.memory_info().rss
                name = proc.name()
                if name == "pg_dump" and proc.status() != psutil.STATUS_ZOMBIE:
                    dump_running = True
            except psutil.Error:
                continue
            total += rss
            if self._python(proc):
                python += rss
            if proc.pid == self.root_pid and self._python(proc):
                root_rss = rss
            self.stats.per_name_peak[name] = max(self.stats.per_name_peak.get(name, 0), rss)
        s = self.stats
        s.samples += 1
        if dump_running:
            now = time.perf_counter()
            s.dump_first_seen = s.dump_first_seen or now
            s.dump_last_seen = now
        s.tree_peak = max(s.tree_peak, total)
        s.python_peak = max(s.python_peak, python)
        if root_rss is not None:
            if dump_running:
                self._dump_seen = True
                s.python_peak_during_dump = max(s.python_peak_during_dump, root_rss)
            elif not self._dump_seen:
                s.python_before_dump = root_rss

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(SAMPLE_INTERVAL)

    def stop(self) -> MemoryStats:
        self._stop_event.set()
        self.join()
        return self.stats


def children_cpu_seconds() -> float:
    """CPU time of every reaped descendant: the delta around a run is that run's CPU."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def tree_cpu_seconds(pid: int) -> float:
    try:
        root = psutil.Process(pid)
        total = 0.0
        for proc in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                total += times.user + times.system
        return total
    except psutil.Error:
        return 0.0


@dataclass
class Finished:
    code: int
    wall: float
    cpu: float
    memory: MemoryStats
    stdout: str
    stderr: str
    prefect_server_cpu: float
    phases: dict[str, float]


def run_measured(
    argv: list[str], env: dict[str, str], log: Path, prefect_pid: int | None
) -> Finished:
    """Run argv to completion while sampling its process tree's memory."""
    server_cpu = tree_cpu_seconds(prefect_pid) if prefect_pid else 0.0
    cpu_before = children_cpu_seconds()
    with open(log, "w+b") as err:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, env=env, cwd=REPO
        )
        sampler = TreeSampler(process.pid)
        sampler.start()
        try:
            out, _ = process.communicate(timeout=RUN_TIMEOUT)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            wall = time.perf_counter() - started
            memory = sampler.stop()
        err.seek(0)
        stderr = err.read().decode(errors="replace")
    phases: dict[str, float] = {}
    if memory.dump_first_seen is not None and memory.dump_last_seen is not None:
        phases = {
            "before_pg_dump_seconds": round(memory.dump_first_seen - started, 3),
            "pg_dump_running_seconds": round(memory.dump_last_seen - memory.dump_first_seen, 3),
            "after_pg_dump_seconds": round(started + wall - memory.dump_last_seen, 3),
        }
    return Finished(
        code=process.returncode,
        wall=wall,
        cpu=children_cpu_seconds() - cpu_before,
        memory=memory,
        stdout=out.decode(errors="replace"),
        stderr=stderr,
        prefect_server_cpu=(tree_cpu_seconds(prefect_pid) - server_cpu) if prefect_pid else 0.0,
        phases=phases,
    )


# ---------------------------------------------------------------------------
# The real parts: PostgreSQL, S3, Prefect
# ---------------------------------------------------------------------------


@dataclass
class Environment:
    workdir: Path
    env: dict[str, str]
    cluster: LocalCluster
    endpoint: str
    s3: S3Options
    prefect_url: str
    prefect_pid: int
    pg_dump: ClientTool
    aws: str
    dbops: str


def venv_tool(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        raise BenchError(f"{name} not found; run the benchmark with `uv run python ...`")
    return found


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one access line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(api_url + "/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextlib.contextmanager
def prefect_server(workdir: Path, env: dict[str, str]) -> Iterator[tuple[str, int]]:
    """One real `prefect server start` for the whole benchmark, as production has."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    server_env = {**env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    server_env.pop("PREFECT_API_URL", None)
    log = open(workdir / "prefect-server.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [venv_tool("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=server_env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                tail = (workdir / "prefect-server.log").read_text(errors="replace")[-1500:]
                raise BenchError(f"prefect server exited ({process.returncode}): {tail}")
            if healthy(url):
                break
            if time.monotonic() > deadline:
                raise BenchError("prefect server did not become healthy in 180 s")
            time.sleep(0.5)
        yield url, process.pid
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def base_environment(workdir: Path, bytecode_cache: bool) -> dict[str, str]:
    """Everything the children need, and nothing of the user's own configuration.

    With bytecode_cache, Python children cache compiled modules under the work directory
    (PYTHONPYCACHEPREFIX) even where PYTHONDONTWRITEBYTECODE is set: otherwise every
    `dbops` process compiles Prefect's ~1,500 modules from source again (seconds of CPU),
    which no installed production system does.
    """
    env = dict(os.environ)
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(workdir / "pycache")
    for name in list(env):
        libpq = name.startswith("PG") and name != "PG_BIN_DIR"
        if libpq or name.startswith(("AWS_", "PREFECT_")) or name in ("DATABASE_URL", "BACKUP_URL"):
            env.pop(name)
    (workdir / "aws-config").write_text("")
    env.update(
        PGPASSFILE=str(workdir / "pgpass"),
        PREFECT_HOME=str(workdir / "prefect-home"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing-secret-key",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(workdir / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(workdir / "aws-config"),
        BENCH_TMP=str(workdir / "tmp"),
        BENCH_BUCKET=BUCKET,
        DBOPS_CACHE_DIR=str(workdir / "dbops-cache"),  # never the user's ~/.cache/dbops
    )
    (workdir / "tmp").mkdir(exist_ok=True)
    return env


@contextlib.contextmanager
def environment(workdir: Path, bytecode_cache: bool = True) -> Iterator[Environment]:
    env = base_environment(workdir, bytecode_cache)
    os.environ.clear()
    os.environ.update(env)  # this process talks to the same PostgreSQL and S3
    with contextlib.ExitStack() as stack:
        log("starting PostgreSQL (embedded), moto S3 and a Prefect server")
        cluster = stack.enter_context(LocalCluster(workdir / "pgdata", passfile=workdir / "pgpass"))
        endpoint = stack.enter_context(moto_server())
        env["AWS_ENDPOINT_URL_S3"] = os.environ["AWS_ENDPOINT_URL_S3"] = endpoint
        s3 = S3Options(endpoint_url=endpoint)
        S3Destination(f"s3://{BUCKET}", s3).client.create_bucket(Bucket=BUCKET)
        prefect_url, prefect_pid = stack.enter_context(prefect_server(workdir, env))
        env["PREFECT_API_URL"] = prefect_url
        with ConnInfo.parse(cluster.url("postgres", password="")).connect() as conn:
            major, _ = server_version(conn)
        yield Environment(
            workdir=workdir,
            env=env,
            cluster=cluster,
            endpoint=endpoint,
            s3=s3,
            prefect_url=prefect_url,
            prefect_pid=prefect_pid,
            pg_dump=find_client_tool("pg_dump", major),
            aws=venv_tool("aws"),
            dbops=venv_tool("dbops"),
        )


# ---------------------------------------------------------------------------
# The database
# ---------------------------------------------------------------------------


@dataclass
class Database:
    name: str
    url: str
    target_mb: float
    generated_for_mb: float
    counts: dict[str, int]
    plain_dump_bytes: int
    pg_dump_alone_seconds: float
    generate_seconds: float

    @property
    def bytes_per_message(self) -> float:
        return self.plain_dump_bytes / max(self.counts.get("public.Message", 1), 1)


def measure_plain_dump(bench: Environment, url: str) -> tuple[int, float]:
    """Bytes and seconds of `pg_dump URL | wc -c`: the floor under every pipeline."""
    started = time.perf_counter()
    out = subprocess.run(
        ["bash", "-c", 'set -o pipefail; "$PG_DUMP" "$DATABASE_URL" | wc -c'],
        env={**bench.env, "PG_DUMP": bench.pg_dump.path, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        raise BenchError(f"pg_dump failed: {out.stderr.strip()[-500:]}")
    return int(out.stdout.strip()), seconds


def create_database(bench: Environment, name: str, size_mb: float, target_mb: float) -> Database:
    url = bench.cluster.url(name, password="")
    admin = ConnInfo.parse(bench.cluster.url("postgres", password=""))
    with admin.connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    started = time.perf_counter()
    counts = create_sample_database(ConnInfo.parse(url), size_mb)
    generate_seconds = time.perf_counter() - started
    with ConnInfo.parse(url).connect() as conn:
        conn.execute("VACUUM (FREEZE, ANALYZE)")  # hint bits now, not during the first dump
    measure_plain_dump(bench, url)  # warm the page cache
    size, seconds = measure_plain_dump(bench, url)
    return Database(name, url, target_mb, size_mb, counts, size, seconds, generate_seconds)


def drop_database(bench: Environment, name: str) -> None:
    admin = ConnInfo.parse(bench.cluster.url("postgres", password=""))
    with admin.connect() as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} (FORCE)").format(sql.Identifier(name)))


def size_label(size_gb: float) -> str:
    return f"{size_gb:g} GB"


def db_name(size_gb: float) -> str:
    return "ai_saas_" + re.sub(r"\W", "_", f"{size_gb:g}") + "gb"


# ---------------------------------------------------------------------------
# One run of one variant
# ---------------------------------------------------------------------------


@dataclass
class Run:
    size_gb: float
    variant: str
    repeat: int
    wall_seconds: float
    pipeline_seconds: float
    raw_bytes: int
    stored_bytes: int
    cpu_seconds: float
    prefect_server_cpu_seconds: float
    tree_peak_rss: int
    python_peak_rss: int
    pipeline_rss_delta: int | None
    python_rss_before_dump: int | None
    per_process_peak_rss: dict[str, int]
    rss_samples: int
    phases: dict[str, float] = field(default_factory=dict)
    stages: dict[str, Any] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)

    @property
    def mb_per_s(self) -> float:
        return self.raw_bytes / MB / self.wall_seconds


def objects_under(bench: Environment, prefix: str) -> tuple[S3Destination, dict[str, int]]:
    destination = Destination.from_url(f"s3://{BUCKET}/{prefix}", bench.s3)
    assert isinstance(destination, S3Destination)
    return destination, {obj.name: obj.size for obj in destination.list()}


def first_bytes(destination: S3Destination, name: str, count: int) -> bytes:
    response = destination.client.get_object(
        Bucket=destination.bucket, Key=destination.key(name), Range=f"bytes=0-{count - 1}"
    )
    return response["Body"].read()


class _HashingReader:
    """Hashes what passes through, for the stored object's SHA-256."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.sha256 = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.sha256.update(data)
        return data


def read_back(destination: S3Destination, name: str, compression: str) -> tuple[str, int]:
    """(sha256 of the stored object, its decompressed size), streaming."""
    with destination.open_read(name) as raw:
        hashing = _HashingReader(raw)
        reader = DecompressingReader(hashing, compression)  # type: ignore[arg-type]
        total = 0
        while chunk := reader.read_chunk(4 * MB):
            total += len(chunk)
    return hashing.sha256.hexdigest(), total


def fail_run(what: str, finished: Finished) -> BenchError:
    tail = "\n".join(finished.stderr.strip().splitlines()[-15:])
    return BenchError(f"{what} failed (exit {finished.code}):\n{tail}")


def run_guide(bench: Environment, db: Database, repeat: int, verify: bool) -> Run:
    prefix = f"guide/{db.name}/{repeat}"
    env = {
        **bench.env,
        "PG_DUMP": bench.pg_dump.path,
        "AWS": bench.aws,
        "DATABASE_URL": db.url,
        "BENCH_PREFIX": prefix,
    }
    log_path = bench.workdir / "logs" / f"{db.name}-guide-{repeat}.log"
    finished = run_measured(["bash", "-c", GUIDE_SCRIPT], env, log_path, bench.prefect_pid)
    if finished.code != 0 or "Backup completed:" not in finished.stdout:
        raise fail_run("the guide's backup-to-s3.sh", finished)
    times = re.search(r"TIMES (\S+) (\S+) (\S+)", finished.stderr)
    stages: dict[str, Any] = {}
    if times:
        t0, t1, t2 = (float(x) for x in times.groups())
        stages = {"dump_gzip_seconds": round(t1 - t0, 3), "upload_seconds": round(t2 - t1, 3)}
    destination, objects = objects_under(bench, prefix)
    checks = []
    if len(objects) != 1:
        raise BenchError(f"guide: expected one object under {prefix}, found {objects}")
    ((name, size),) = objects.items()
    if size <= 0 or first_bytes(destination, name, 2) != MAGIC["gzip"]:
        raise BenchError(f"guide: {name} is empty or not gzip")
    checks.append(f"{name}: {size} bytes, gzip")
    leftovers = list(Path(bench.env["BENCH_TMP"]).iterdir())
    if leftovers:
        raise BenchError(f"guide: temporary files left behind: {leftovers}")
    checks.append("temporary file removed")
    if verify:
        _, raw = read_back(destination, name, "gzip")
        if raw != db.plain_dump_bytes:
            raise BenchError(f"guide: gunzip gives {raw} bytes, pg_dump gave {db.plain_dump_bytes}")
        checks.append(f"gunzip: {raw} bytes = plain dump size")
    destination.delete(name)
    return Run(
        size_gb=db.target_mb / 1024,
        variant="guide",
        repeat=repeat,
        wall_seconds=finished.wall,
        pipeline_seconds=finished.wall,
        raw_bytes=db.plain_dump_bytes,
        stored_bytes=size,
        cpu_seconds=finished.cpu,
        prefect_server_cpu_seconds=finished.prefect_server_cpu,
        tree_peak_rss=finished.memory.tree_peak,
        python_peak_rss=finished.memory.python_peak,
        pipeline_rss_delta=None,
        python_rss_before_dump=None,
        per_process_peak_rss=finished.memory.per_name_peak,
        rss_samples=finished.memory.samples,
        phases=finished.phases,
        stages=stages,
        checks=checks,
    )


def run_dbops(bench: Environment, db: Database, compression: str, repeat: int, verify: bool) -> Run:
    prefix = f"dbops-{compression}/{db.name}/{repeat}"
    argv = [
        bench.dbops,
        "backup",
        "--database-url",
        db.url,
        "--to",
        f"s3://{BUCKET}/{prefix}",
        "--compression",
        compression,
        "--json",
    ]
    log_path = bench.workdir / "logs" / f"{db.name}-{compression}-{repeat}.log"
    finished = run_measured(argv, bench.env, log_path, bench.prefect_pid)
    if finished.code != 0:
        raise fail_run(f"dbops backup --compression {compression}", finished)
    try:
        manifest = json.loads(finished.stdout)
    except json.JSONDecodeError as exc:
        raise BenchError(
            f"dbops backup --json printed no JSON ({exc}): {finished.stdout[:300]}"
        ) from None
    destination, objects = objects_under(bench, prefix)
    dump_name = manifest["dump"]["name"]
    manifest_name = manifest["backup_id"] + MANIFEST_SUFFIX
    claim_name = manifest["backup_id"] + ".started.json"  # the id's create-if-absent claim
    if set(objects) != {dump_name, manifest_name, claim_name}:
        raise BenchError(
            f"{compression}: expected {dump_name}, its claim and manifest, found {objects}"
        )
    size = objects[dump_name]
    if size <= 0 or size != manifest["dump"]["size"]:
        raise BenchError(f"{compression}: {dump_name} is {size} bytes, manifest says otherwise")
    if first_bytes(destination, dump_name, 4)[: len(MAGIC[compression])] != MAGIC[compression]:
        raise BenchError(f"{compression}: {dump_name} does not start with {compression} magic")
    stored = read_manifest(destination, manifest_name)
    if stored.dump.sha256 != manifest["dump"]["sha256"]:
        raise BenchError(f"{compression}: the stored manifest differs from the printed one")
    if destination.incomplete_writes():
        raise BenchError(f"{compression}: incomplete multipart uploads left under {prefix}")
    checks = [f"{dump_name}: {size} bytes, {compression}", f"{manifest_name} in S3 next to it"]
    raw_size = int(manifest["dump"]["raw_size"] or 0)
    if raw_size != db.plain_dump_bytes:
        checks.append(f"raw_size {raw_size} != pg_dump | wc -c {db.plain_dump_bytes}")
    if verify:
        digest, raw = read_back(destination, dump_name, compression)
        if digest != manifest["dump"]["sha256"] or raw != raw_size:
            raise BenchError(f"{compression}: sha256/raw size of {dump_name} do not match")
        checks.append(f"sha256 and decompressed size ({raw} bytes) match the manifest")
    for name in objects:
        destination.delete(name)
    memory = finished.memory
    return Run(
        size_gb=db.target_mb / 1024,
        variant=compression,
        repeat=repeat,
        wall_seconds=finished.wall,
        pipeline_seconds=float(manifest["duration_seconds"]),
        raw_bytes=raw_size,
        stored_bytes=size,
        cpu_seconds=finished.cpu,
        prefect_server_cpu_seconds=finished.prefect_server_cpu,
        tree_peak_rss=memory.tree_peak,
        python_peak_rss=memory.python_peak,
        pipeline_rss_delta=memory.pipeline_delta,
        python_rss_before_dump=memory.python_before_dump,
        per_process_peak_rss=memory.per_name_peak,
        rss_samples=memory.samples,
        phases=finished.phases,
        stages=dict(manifest.get("stages") or {}),
        checks=checks,
    )


def run_variant(bench: Environment, db: Database, variant: str, repeat: int, verify: bool) -> Run:
    if variant == "guide":
        return run_guide(bench, db, repeat, verify)
    return run_dbops(bench, db, variant, repeat, verify)


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


@dataclass
class Summary:
    size_gb: float
    variant: str
    runs: int
    wall_seconds: float
    pipeline_seconds: float
    mb_per_s: float
    stored_mb: float
    cpu_seconds: float
    prefect_server_cpu_seconds: float
    tree_peak_rss_mb: float
    python_peak_rss_mb: float
    pipeline_rss_delta_mb: float | None
    speedup_wall: float
    speedup_pipeline: float
    stages: dict[str, float]


def summarize(runs: list[Run]) -> list[Summary]:
    out: list[Summary] = []
    for size in sorted({r.size_gb for r in runs}):
        by_variant = {
            v: [r for r in runs if r.size_gb == size and r.variant == v] for v in VARIANTS
        }
        guide_wall = median([r.wall_seconds for r in by_variant["guide"]])
        for variant, group in by_variant.items():
            if not group:
                continue
            wall = median([r.wall_seconds for r in group])
            pipeline = median([r.pipeline_seconds for r in group])
            deltas = [r.pipeline_rss_delta for r in group if r.pipeline_rss_delta is not None]
            timings = [{**r.stages, **r.phases} for r in group]
            stage_keys = sorted({k for t in timings for k, v in t.items() if _number(v)})
            out.append(
                Summary(
                    size_gb=size,
                    variant=variant,
                    runs=len(group),
                    wall_seconds=wall,
                    pipeline_seconds=pipeline,
                    mb_per_s=median([r.mb_per_s for r in group]),
                    stored_mb=median([r.stored_bytes / MB for r in group]),
                    cpu_seconds=median([r.cpu_seconds for r in group]),
                    prefect_server_cpu_seconds=median(
                        [r.prefect_server_cpu_seconds for r in group]
                    ),
                    tree_peak_rss_mb=max(r.tree_peak_rss for r in group) / MB,
                    python_peak_rss_mb=max(r.python_peak_rss for r in group) / MB,
                    pipeline_rss_delta_mb=max(deltas) / MB if deltas else None,
                    speedup_wall=guide_wall / wall,
                    speedup_pipeline=guide_wall / pipeline,
                    stages={
                        k: median([float(t[k]) for t in timings if k in t]) for k in stage_keys
                    },
                )
            )
    return out


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _f(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


VARIANT_LABELS = {
    "guide": "guide backup-to-s3.sh",
    "gzip": "dbops backup gzip",
    "zstd": "dbops backup zstd",
}


def markdown(summaries: list[Summary], databases: list[Database], meta: dict[str, Any]) -> str:
    lines = [
        f"Machine: {meta['cpus']} CPUs ({meta['cpu_model']}), load average before: "
        f"{meta['load_before']}; pg_dump {meta['pg_dump']}, gzip {meta['gzip']}, "
        f"aws-cli {meta['aws']}, prefect {meta['prefect']}; Python bytecode cache "
        f"{'on' if meta.get('bytecode_cache') else 'off (cold imports)'}. "
        "Medians over the runs; RSS = peak.",
        "",
        "| dump | variant | runs | wall s | pipeline s | MB/s | speed-up wall | "
        "speed-up pipeline | peak RSS tree MB | peak RSS python MB | pipeline ΔRSS MB | "
        "CPU s | stored MB |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    sizes = {db.target_mb / 1024: db for db in databases}
    for s in summaries:
        db = sizes[s.size_gb]
        lines.append(
            f"| {db.plain_dump_bytes / MB:.0f} MB | {VARIANT_LABELS[s.variant]} | {s.runs} | "
            f"{s.wall_seconds:.2f} | {s.pipeline_seconds:.2f} | {s.mb_per_s:.1f} | "
            f"{s.speedup_wall:.2f}x | {s.speedup_pipeline:.2f}x | {s.tree_peak_rss_mb:.0f} | "
            f"{s.python_peak_rss_mb:.0f} | {_f(s.pipeline_rss_delta_mb)} | "
            f"{s.cpu_seconds:.1f} | {s.stored_mb:.1f} |"
        )
    lines += ["", "Databases and where the time goes:", ""]
    for db in databases:
        rows = {s.variant: s for s in summaries if s.size_gb == db.target_mb / 1024}
        lines.append(
            f"- {size_label(db.target_mb / 1024)} ({db.name}): plain dump {db.plain_dump_bytes:,} "
            f"bytes ({db.plain_dump_bytes / MB:.1f} MB; asked the generator for "
            f"{db.generated_for_mb:.0f} MB), {db.counts.get('public.Message', 0):,} messages, "
            f"{db.bytes_per_message:.0f} bytes/message (BYTES_PER_MESSAGE = {BYTES_PER_MESSAGE}); "
            f"`pg_dump | wc -c` alone {db.pg_dump_alone_seconds:.2f} s."
        )
        guide = rows.get("guide")
        if guide and guide.stages:
            lines.append(
                f"  - guide: {guide.wall_seconds:.2f} s = pg_dump | gzip > file "
                f"{guide.stages.get('dump_gzip_seconds', 0):.2f} s + aws s3 cp "
                f"{guide.stages.get('upload_seconds', 0):.2f} s"
            )
        for variant in ("gzip", "zstd"):
            s = rows.get(variant)
            if not s:
                continue
            st = s.stages
            lines.append(
                f"  - dbops {variant}: process {s.wall_seconds:.2f} s = before pg_dump starts "
                f"{st.get('before_pg_dump_seconds', 0):.2f} s (imports, flow and task run, "
                f"snapshot) + pg_dump running {st.get('pg_dump_running_seconds', 0):.2f} s + "
                f"after pg_dump exits {st.get('after_pg_dump_seconds', 0):.2f} s (last part, "
                f"manifest, report, Prefect shutdown). Manifest: duration "
                f"{s.pipeline_seconds:.2f} s, stream {st.get('seconds', 0):.2f} s, main thread "
                f"waiting for pg_dump {st.get('waiting_for_pg_dump_seconds', 0):.2f} s, writer "
                f"thread busy {st.get('writing_seconds', 0):.2f} s. Prefect server CPU "
                f"{s.prefect_server_cpu_seconds:.1f} s"
            )
    if meta.get("import_seconds") is not None:
        lines.append(
            f"- Reference: `python -c 'import flows.backup'` takes {meta['import_seconds']:.2f} s "
            "(best of 3) on this machine now: a fixed cost of every `dbops backup` process."
        )
    lines += ["", *targets(summaries)]
    return "\n".join(lines)


def targets(summaries: list[Summary]) -> list[str]:
    out = ["Targets (speed-up on whole-process wall time; RSS of the whole process tree):", ""]
    for s in summaries:
        if s.variant == "guide":
            continue
        goal = TARGETS[s.variant]
        ok = "PASS" if s.speedup_wall >= goal else "FAIL"
        rss = "PASS" if s.tree_peak_rss_mb < RSS_LIMIT_MB else "FAIL"
        out.append(
            f"- {size_label(s.size_gb)} {s.variant}: speed-up {s.speedup_wall:.2f}x "
            f"(target >= {goal:g}x) {ok}; pipeline-only {s.speedup_pipeline:.2f}x; "
            f"peak RSS {s.tree_peak_rss_mb:.0f} MB (< {RSS_LIMIT_MB:.0f}) {rss}"
        )
    for variant in ("gzip", "zstd"):
        group = [s for s in summaries if s.variant == variant]
        if len(group) > 1:
            low, high = group[0], group[-1]
            out.append(
                f"- {variant} peak RSS {size_label(low.size_gb)} -> {size_label(high.size_gb)}: "
                f"{low.tree_peak_rss_mb:.0f} -> {high.tree_peak_rss_mb:.0f} MB "
                f"({high.tree_peak_rss_mb - low.tree_peak_rss_mb:+.0f} MB)"
            )
    return out


def tool_version(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        text = (out.stdout + out.stderr).strip()
        found = re.search(r"\d+\.\d+(\.\d+)?", text)
        return found.group(0) if found else text[:40]
    return "?"


def import_seconds(bench: Environment) -> float:
    """The fixed cost of a dbops process before any work: importing Prefect and the flow."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", "import flows.backup"], env=bench.env, cwd=REPO, check=True
        )
        best = min(best, time.perf_counter() - started)
    return best


def machine_meta(bench: Environment) -> dict[str, Any]:
    model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "pg_dump": f"{bench.pg_dump.version} ({bench.pg_dump.path})",
        "gzip": tool_version(["gzip", "--version"]),
        "aws": tool_version([bench.aws, "--version"]),
        "prefect": tool_version([venv_tool("prefect"), "--version"]),
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time the guide's backup-to-s3.sh against `dbops backup` (gzip, zstd).",
    )
    parser.add_argument("--size-gb", type=float, default=1.0, help="plain dump size (GiB)")
    parser.add_argument("--sizes", help="comma-separated sizes in GiB; overrides --size-gb")
    parser.add_argument(
        "--repeat", type=int, help="runs per variant (default: 3 below 1 GiB, else 1)"
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help="subset of guide,gzip,zstd")
    parser.add_argument("--json", dest="json_out", help="also write the results to this file")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="also download every object: sha256 and decompressed size (slower)",
    )
    parser.add_argument("--workdir", help="where the cluster and logs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    parser.add_argument(
        "--no-bytecode-cache",
        action="store_true",
        help="keep PYTHONDONTWRITEBYTECODE from the environment: every dbops/aws process "
        "compiles its modules from source (measures a cold install)",
    )
    parser.add_argument(
        "--no-calibrate",
        action="store_true",
        help="trust BYTES_PER_MESSAGE instead of measuring a small database first",
    )
    args = parser.parse_args(argv)
    text = args.sizes or str(args.size_gb)
    try:
        args.size_list = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        parser.error(f"--sizes {text!r}: use numbers in GiB like 0.25,1")
    if not args.size_list or any(x <= 0 for x in args.size_list):
        parser.error("sizes must be positive")
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    if "guide" not in args.variant_list or set(args.variant_list) - set(VARIANTS):
        parser.error("--variants must include guide and name only guide, gzip, zstd")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    return args


def calibrate(bench: Environment) -> float:
    """Dump bytes per generated MB, measured on a small database (BYTES_PER_MESSAGE drifts)."""
    db = create_database(bench, "ai_saas_calibration", CALIBRATION_MB, CALIBRATION_MB)
    factor = db.plain_dump_bytes / (CALIBRATION_MB * MB)
    log(
        f"calibration: asked for {CALIBRATION_MB:g} MB, pg_dump gave "
        f"{db.plain_dump_bytes / MB:.2f} MB ({db.bytes_per_message:.0f} bytes/message vs "
        f"BYTES_PER_MESSAGE={BYTES_PER_MESSAGE})"
    )
    # Warm-up, not measured: imports and .pyc files, the Prefect server's first flow.
    log("warm-up runs (not measured)")
    run_guide(bench, db, 0, verify=False)
    run_dbops(bench, db, "gzip", 0, verify=False)
    drop_database(bench, db.name)
    return factor


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="dbops-bench-")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "logs").mkdir(exist_ok=True)
    log(f"work directory {workdir}")
    runs: list[Run] = []
    databases: list[Database] = []
    dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
    try:
        with environment(workdir, bytecode_cache=not args.no_bytecode_cache) as bench:
            meta = machine_meta(bench)
            meta["bytecode_cache"] = "PYTHONPYCACHEPREFIX" in bench.env
            meta["environment_dontwritebytecode"] = dont_write_bytecode
            log(
                f"pg_dump {bench.pg_dump.path} {bench.pg_dump.version}; Prefect {bench.prefect_url}"
            )
            factor = calibrate(bench)
            meta["import_seconds"] = import_seconds(bench)
            if args.no_calibrate:
                factor = 1.0
            for size_gb in args.size_list:
                target_mb = size_gb * 1024
                log(f"generating {size_label(size_gb)} of plain dump")
                db = create_database(bench, db_name(size_gb), target_mb / factor, target_mb)
                databases.append(db)
                log(
                    f"{db.name}: plain dump {db.plain_dump_bytes / MB:.1f} MB "
                    f"(generated in {db.generate_seconds:.1f} s; pg_dump | wc -c "
                    f"{db.pg_dump_alone_seconds:.2f} s)"
                )
                repeats = args.repeat or (3 if size_gb < 1 else 1)
                for repeat in range(1, repeats + 1):
                    for variant in args.variant_list:
                        run = run_variant(bench, db, variant, repeat, args.verify)
                        runs.append(run)
                        log(
                            f"{size_label(size_gb)} {variant:<5} #{repeat}: "
                            f"wall {run.wall_seconds:.2f} s, pipeline "
                            f"{run.pipeline_seconds:.2f} s, {run.mb_per_s:.1f} MB/s, "
                            f"peak RSS tree {run.tree_peak_rss / MB:.0f} MB, python "
                            f"{run.python_peak_rss / MB:.0f} MB, delta "
                            f"{_f(run.pipeline_rss_delta and run.pipeline_rss_delta / MB)} MB"
                        )
                drop_database(bench, db.name)
            meta["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except BenchError as exc:
        log(f"error: {exc}")
        return 1
    finally:
        if args.keep or args.workdir:
            log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    summaries = summarize(runs)
    meta["command"] = " ".join(["uv run python benchmarks/backup_throughput.py", *sys.argv[1:]])
    print(markdown(summaries, databases, meta))
    if args.json_out:
        document = {
            "meta": meta,
            "databases": [
                {**asdict(db), "bytes_per_message": db.bytes_per_message} for db in databases
            ],
            "summary": [asdict(s) for s in summaries],
            "runs": [{**asdict(r), "mb_per_s": r.mb_per_s} for r in runs],
        }
        Path(args.json_out).write_text(json.dumps(document, indent=2) + "\n")
        log(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

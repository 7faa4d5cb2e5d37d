"""A real Prefect server, work pool and process worker for end-to-end tests of deployments.

Use it from a test module:

    from tests.prefect_server import PrefectServer, prefect_server  # noqa: F401

    def test_x(prefect_server: PrefectServer):
        prefect_server.deploy("migrate-database/cd")
        run = prefect_server.cli("deployment", "run", "migrate-database/cd", "--watch")

`prefect server start` runs on a free loopback port with its own PREFECT_HOME
(so its SQLite database and profiles are temporary) and analytics off; the work
pool `dbops-local` (process) is created through the API; `prefect worker start`
runs from the repository root, as in production, so the deployments' entrypoints
resolve. Every process is started in its own session and killed at teardown.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tasks.demo.embedded import free_port

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
POOL = "dbops-local"


class PrefectServer:
    """`prefect server start` + a process worker; `with PrefectServer(home) as server:`."""

    def __init__(self, home: Path, repo: Path = REPO, pool: str = POOL) -> None:
        self.home = Path(home)
        self.repo = repo
        self.pool = pool
        self.port = free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.processes: list[subprocess.Popen[bytes]] = []
        self.workers: list[subprocess.Popen[bytes]] = []

    # -- environment ---------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of every Prefect process here: this server, nothing else."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("PREFECT_") or k == "PREFECT_LOGGING_LEVEL"
        }
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_URL=self.api_url,
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
            PREFECT_CLI_COLORS="false",
            PREFECT_CLI_WRAP_LINES="false",
            PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        )
        env.update(extra)
        return env

    @contextlib.contextmanager
    def client_settings(self) -> Iterator[None]:
        """Point this process's Prefect client at the server (e.g. to save a Secret block)."""
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: self.api_url}):
            yield

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115 - closed with the process
        process = subprocess.Popen(
            argv,
            cwd=self.repo,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.processes.append(process)
        return process

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.home / f"{name}.log"
        if not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 120) -> PrefectServer:
        self.home.mkdir(parents=True, exist_ok=True)
        env = self.env(PREFECT_UI_API_URL=self.api_url)  # the UI's browser calls this API
        del env["PREFECT_API_URL"]  # the server serves it; it is no client of anything
        server = self._spawn(
            "server",
            [
                str(BIN / "prefect"),
                "server",
                "start",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
            ],
            env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if server.poll() is not None:
                raise RuntimeError(f"prefect server exited:\n{self.log_tail('server')}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.3)
        raise RuntimeError(f"prefect server not healthy in {timeout} s:\n{self.log_tail('server')}")

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call; a busy server's 503 (SQLite locked under load) is retried."""
        for attempt in range(6):
            response = httpx.request(method, f"{self.api_url}{path}", timeout=30, **kwargs)
            if response.status_code != 503 or attempt == 5:
                break
            time.sleep(0.5 * (attempt + 1))
        response.raise_for_status()
        return response.json() if response.content else None

    def create_pool(self) -> None:
        from prefect.workers.process import ProcessWorker

        existing = httpx.get(f"{self.api_url}/work_pools/{self.pool}", timeout=30)
        if existing.status_code == 200:
            return
        self.request(
            "POST",
            "/work_pools/",
            json={
                "name": self.pool,
                "type": "process",
                "base_job_template": ProcessWorker.get_default_base_job_template(),
            },
        )

    def start_worker(self, timeout: float = 90, limit: int | None = None, **env: str) -> None:
        """A process worker polling every second, run from the repository root."""
        argv = [str(BIN / "prefect"), "worker", "start", "--pool", self.pool, "--type", "process"]
        if limit is not None:
            argv += ["--limit", str(limit)]
        worker = self._spawn("worker", argv, self.env(PREFECT_WORKER_QUERY_SECONDS="1", **env))
        self.workers.append(worker)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                raise RuntimeError(f"prefect worker exited:\n{self.log_tail('worker')}")
            if self.online_workers() >= len(self.workers):
                return
            time.sleep(0.5)
        raise RuntimeError(f"prefect worker not online in {timeout} s:\n{self.log_tail('worker')}")

    def online_workers(self) -> int:
        workers = self.request("POST", f"/work_pools/{self.pool}/workers/filter", json={})
        return sum(w.get("status") == "ONLINE" for w in workers)

    def stop_workers(self) -> None:
        """End every worker and forget them on the server (it would list them until their
        heartbeat expires)."""
        for worker in self.workers:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.pid, signal.SIGTERM)
            worker.wait(timeout=30)
        self.workers.clear()
        for worker in self.request("POST", f"/work_pools/{self.pool}/workers/filter", json={}):
            self.request("DELETE", f"/work_pools/{self.pool}/workers/{worker['name']}")

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        self.processes.clear()

    def __enter__(self) -> PrefectServer:
        try:
            self.start()
            self.create_pool()
            self.start_worker()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- using it ------------------------------------------------------------------------

    def cli(self, *args: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
        """The real `prefect` CLI against this server, from the repository root."""
        return subprocess.run(
            [str(BIN / "prefect"), *args],
            cwd=self.repo,
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def deploy(self, name: str, prefect_file: Path | None = None) -> None:
        """`prefect --no-prompt deploy --name NAME` from the repository root."""
        args = ["--no-prompt", "deploy", "--name", name]
        if prefect_file is not None:
            args += ["--prefect-file", str(prefect_file)]
        result = self.cli(*args)
        if result.returncode != 0:
            raise RuntimeError(f"prefect deploy failed:\n{result.stdout[-3000:]}{result.stderr}")

    def flow_runs(self, deployment: str) -> list[dict[str, Any]]:
        """Flow runs of `flow/deployment`, newest first."""
        flow_name, deployment_name = deployment.split("/", 1)
        found = self.request("GET", f"/deployments/name/{flow_name}/{deployment_name}")
        return self.request(
            "POST",
            "/flow_runs/filter",
            json={
                "deployments": {"id": {"any_": [found["id"]]}},
                "sort": "EXPECTED_START_TIME_DESC",
            },
        )

    def logs(self, flow_run_id: str) -> list[str]:
        rows = self.request(
            "POST", "/logs/filter", json={"logs": {"flow_run_id": {"any_": [flow_run_id]}}}
        )
        return [row["message"] for row in rows]


@pytest.fixture(scope="session")
def prefect_server(passfile: Path, s3_server: str) -> Iterator[PrefectServer]:
    """One server + worker for the session; the worker's environment has the passfile and
    the moto S3 endpoint and credentials, as a production worker has its own."""
    home = Path(tempfile.mkdtemp(prefix="dbops-prefect-"))
    with PrefectServer(home) as server:
        yield server
    import shutil

    shutil.rmtree(home, ignore_errors=True)

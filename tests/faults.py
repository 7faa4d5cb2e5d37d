"""Fault injection with real processes and sockets: a pg_dump that dies half way, an S3
endpoint that fails uploads, and client tools that record the argv they were given."""

from __future__ import annotations

import http.client
import http.server
import os
import stat
import threading
from pathlib import Path
from urllib.parse import urlsplit

from tasks.core.client_tools import find_client_tool


def write_script(path: Path, body: str) -> Path:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def dying_pg_dump(bin_dir: Path, after_bytes: int = 300_000) -> Path:
    """A pg_dump that passes through some real output, then is killed with SIGKILL."""
    real = find_client_tool("pg_dump", 18).path
    bin_dir.mkdir(parents=True, exist_ok=True)
    write_script(
        bin_dir / "pg_dump",
        f'if [ "$1" = "--version" ]; then exec "{real}" --version; fi\n'
        f'"{real}" "$@" | head -c {after_bytes}\n'
        "kill -9 $$\n",
    )
    return bin_dir


def recording_tools(bin_dir: Path, log: Path, names: tuple[str, ...]) -> Path:
    """Wrappers that append their argv and environment-free command line to log, then exec."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        real = find_client_tool(name, 18).path
        write_script(bin_dir / name, f'echo "{name} $*" >> "{log}"\nexec "{real}" "$@"\n')
    return bin_dir


class FailingS3Proxy:
    """Forwards S3 requests to moto, but answers uploads of a dump with 403 AccessDenied.

    Every UploadPart is refused, and so is the single PutObject of a dump smaller than a part.
    """

    def __init__(self, upstream: str) -> None:
        target = urlsplit(upstream)
        self.upstream = (target.hostname, target.port)
        self.failed_parts = 0
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                dump = ".sql" in self.path or ".dump" in self.path
                if self.command == "PUT" and ("partNumber=" in self.path or dump):
                    proxy.failed_parts += 1
                    error = (
                        b"<?xml version='1.0' encoding='UTF-8'?><Error><Code>AccessDenied</Code>"
                        b"<Message>Access Denied</Message></Error>"
                    )
                    self.send_response(403)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(error)))
                    self.end_headers()
                    self.wfile.write(error)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                headers = {k: v for k, v in self.headers.items()}
                conn.request(self.command, self.path, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.send_response(response.status)
                for key, value in response.getheaders():
                    if key.lower() not in ("transfer-encoding", "content-length", "connection"):
                        self.send_header(key, value)
                length = response.getheader("Content-Length") if self.command == "HEAD" else None
                self.send_header("Content-Length", length or str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FailingS3Proxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def immutable(path: Path) -> None:
    """Make a directory unwritable, even for root (chattr +i); chmod for other users."""
    if os.geteuid() == 0:
        os.system(f"chattr +i '{path}'")
    else:
        path.chmod(0o500)


def mutable(path: Path) -> None:
    if os.geteuid() == 0:
        os.system(f"chattr -i '{path}'")
    else:
        path.chmod(0o700)

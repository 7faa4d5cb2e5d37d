"""Another tool's command: `alembic upgrade head`, `npx prisma migrate deploy`, a verify script.

DATABASE_URL goes in its environment (never its argv, which `ps` shows), its
output is streamed line by line into the log with the password masked, a
timeout kills its whole process group (npx's children too), and a non-zero
exit is a failure that quotes its last line.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from tasks.core.errors import DbopsError, ParameterError
from tasks.core.settings import Settings

# The flow parameter that holds each kind of command, and how messages call it.
WHAT = {"command": "migration command", "verify_command": "verify command"}


class CommandResult(BaseModel):
    command: str
    exit_code: int
    seconds: float
    last_line: str = ""


def command_argv(command: str, parameter: str = "command") -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise ParameterError(
            parameter, f"{command!r} cannot be parsed ({exc}); check its quotes"
        ) from None
    if not argv:
        raise ParameterError(parameter, "is empty; pass e.g. 'alembic upgrade head'")
    return argv


def command_env(settings: Settings) -> dict[str, str]:
    """libpq variables plus DATABASE_URL, as the guide's tools expect (Prisma, Alembic...)."""
    env = settings.connection().child_env()
    env["DATABASE_URL"] = settings.require_database_url()
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_command(
    command: str,
    settings: Settings,
    workdir: str | None,
    timeout_seconds: float,
    log: Callable[[str], None],
    parameter: str = "command",
) -> CommandResult:
    """Run command with DATABASE_URL in its environment; its output goes to log line by line."""
    what = WHAT[parameter]
    argv = command_argv(command, parameter)
    cwd = Path(workdir).expanduser() if workdir else Path.cwd()
    if not cwd.is_dir():
        raise ParameterError("workdir", f"{str(cwd)!r} does not exist; pass an existing directory")
    env = command_env(settings)
    secret = settings.connection().password
    started = time.perf_counter()
    try:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so a timeout kills npx's children too
        )
    except FileNotFoundError:
        raise DbopsError(
            f"{what} {argv[0]!r} not found; install it or give its full path"
        ) from None
    except PermissionError:
        raise DbopsError(f"{what} {argv[0]!r} is not executable; check its permissions") from None
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(timeout_seconds, kill) if timeout_seconds > 0 else None
    if timer:
        timer.daemon = True
        timer.start()
    last = ""
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            if secret:
                line = line.replace(secret, "***")
            if line.strip():
                last = line.strip()
            log(f"{argv[0].rsplit('/', 1)[-1]}: {line}")
        code = process.wait()
    finally:
        if timer:
            timer.cancel()
        if process.poll() is None:
            kill()
            process.wait()
    seconds = round(time.perf_counter() - started, 3)
    if timed_out.is_set():
        raise DbopsError(f"{what} {command!r} was killed after {timeout_seconds:g} s (timeout)")
    if code != 0:
        status = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        raise DbopsError(f"{what} {command!r} failed ({status}): {last or 'no output'}")
    return CommandResult(command=command, exit_code=code, seconds=seconds, last_line=last)

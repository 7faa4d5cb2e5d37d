"""The application's own commands (stop, start, restart): parsed once, run without a shell.

A command is an argv list (`["docker", "compose", "stop", "web"]`); on the command line and
in the UI it may be one string, split as a shell would quote it (`shlex.split`) but never
given to a shell. It runs with a timeout, its output goes to the flow log line by line, and
it never carries a password: a command line with a password in it is refused, before
anything is touched, and known secrets are masked in what it prints.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator

from tasks.core.children import spawn
from tasks.core.errors import DbopsError, ParameterError
from tasks.core.notify import clean

Log = Callable[[str], None]

# What marks a password on a command line: a URL's user:password@, or NAME=value / --name=value
# where the name ends in password (PGPASSWORD=..., --db-password=...).
_URL_CREDENTIALS = re.compile(r"://[^:/@\s]*:[^@\s]+@")
_PASSWORD_ASSIGNMENT = re.compile(r"(?i)^[\w.-]*(password|passwd|pwd)=.")


class ApplicationError(DbopsError):
    """A stop command failed or timed out: the run stops before the database is touched."""


class ApplicationStartError(DbopsError):
    """The application could not be started again: the run fails loudly (and notifies)."""


Command = list[str]


def split_command(value: Any, field: str) -> Any:
    """A string is split as a shell would (no shell runs it); a list is taken as argv."""
    if isinstance(value, str):
        try:
            value = shlex.split(value)
        except ValueError as exc:
            raise ParameterError(field, f"cannot be split into words: {exc}") from None
        if not value:
            raise ParameterError(field, "is empty; give the command, e.g. 'systemctl stop app'")
    return value


def refuse_password(argv: list[str], field: str, secrets: Iterable[str | None] = ()) -> None:
    """No password on a command line: every process on the machine can read it (ps)."""
    known = [s for s in secrets if s]
    for arg in argv:
        if (
            _URL_CREDENTIALS.search(arg)
            or _PASSWORD_ASSIGNMENT.match(arg.lstrip("-"))
            or any(s in arg for s in known)
        ):
            raise ParameterError(
                field,
                "contains a password, which every process on the machine could read; let the "
                "command read it from its own configuration (an env file, a secret store)",
            )


def redact(line: str, secrets: Iterable[str | None]) -> str:
    for secret in secrets:
        if secret:
            line = line.replace(secret, "***")
    return clean(line) if "://" in line or "assword" in line else line


def describe(argv: list[str]) -> str:
    return shlex.join(argv)


class ApplicationHooks(BaseModel):
    """How dbops stops and starts the application around a restore, or restarts it after a
    password rotation. Commands run without a shell; give a list or one quoted string."""

    stop_app: Command | None = Field(
        None,
        description='stops the application before the swap, e.g. ["docker", "compose", '
        '"stop", "web"]',
    )
    start_app: Command | None = Field(
        None,
        description='starts it again afterwards, whatever happened, e.g. ["docker", '
        '"compose", "start", "web"]',
    )
    restart_app: Command | None = Field(
        None,
        description="rotate-password: restarts it once the new password is stored, e.g. "
        '["kubectl", "rollout", "restart", "deployment/web"]',
    )
    stop_app_at: Literal["swap", "start"] = Field(
        "swap",
        description="swap: the application runs while the backup is restored aside and stops "
        "only for the swap (least downtime; its writes meanwhile are lost with the swap); "
        "start: it stops before the restore begins",
    )
    confirm_app_stopped: bool = Field(
        False,
        description="no stop command: pause before the swap until an operator stopped the "
        "application and resumed the run in the UI",
    )
    confirm_timeout_seconds: int = Field(
        1800, gt=0, description="fail, changing nothing, when nobody resumes within this"
    )
    app_timeout_seconds: float = Field(
        300, gt=0, description="kill a stop, start or restart command after this long"
    )
    start_app_retries: int = Field(
        2, ge=0, le=10, description="retries of a failing start or restart command"
    )
    start_app_retry_delay_seconds: float = Field(
        10, ge=0, le=600, description="wait between start attempts"
    )

    @field_validator("stop_app", "start_app", "restart_app", mode="before")
    @classmethod
    def _split(cls, value: Any, info: Any) -> Any:
        return split_command(value, info.field_name)

    @field_validator("stop_app", "start_app", "restart_app")
    @classmethod
    def _no_password(cls, value: Command | None, info: Any) -> Command | None:
        if value is not None:
            if not value or not all(value):
                raise ParameterError(info.field_name, "has an empty word; give the command")
            refuse_password(value, info.field_name)
        return value

    def check_restore(self) -> None:
        """Around a restore: stop and start together, or an operator's confirmation."""
        if self.restart_app:
            raise ParameterError(
                "restart_app",
                "is for rotate-password; a restore stops the application (stop_app) and "
                "starts it again (start_app)",
                ("stop_app", "start_app"),
            )
        if self.stop_app and self.confirm_app_stopped:
            raise ParameterError(
                "confirm_app_stopped",
                "waits for an operator to stop the application; with stop_app dbops stops it: "
                "give one of them",
                ("stop_app",),
            )
        if self.stop_app and not self.start_app:
            raise ParameterError(
                "start_app",
                "is missing: dbops starts the application again whatever happens after "
                "stop_app stopped it",
                ("stop_app",),
            )
        if self.start_app and not (self.stop_app or self.confirm_app_stopped):
            raise ParameterError(
                "stop_app",
                "is missing: start_app starts the application after dbops stopped it; give "
                "stop_app too (or confirm_app_stopped)",
                ("start_app", "confirm_app_stopped"),
            )

    def check_restart(self) -> None:
        """After a rotation: one restart command, or a stop and a start."""
        if self.confirm_app_stopped:
            raise ParameterError(
                "confirm_app_stopped", "is for restores; rotate-password restarts by command"
            )
        if self.restart_app and (self.stop_app or self.start_app):
            raise ParameterError(
                "restart_app", "or stop_app and start_app: give one of them", ("stop_app",)
            )
        if bool(self.stop_app) != bool(self.start_app):
            raise ParameterError(
                "start_app" if self.stop_app else "stop_app",
                "is missing: give both stop_app and start_app, or restart_app",
                ("stop_app", "start_app", "restart_app"),
            )

    def commands(self) -> list[Command]:
        return [c for c in (self.stop_app, self.start_app, self.restart_app) if c]

    def refuse_secrets(self, secrets: Iterable[str | None]) -> None:
        """Refuse a command line with a known password in it (known only inside tasks)."""
        known = list(secrets)
        for name in ("stop_app", "start_app", "restart_app"):
            argv = getattr(self, name)
            if argv:
                refuse_password(argv, name, known)

    @property
    def active(self) -> bool:
        return bool(self.commands() or self.confirm_app_stopped)


AppHooksParameter = Annotated[
    ApplicationHooks | None,
    Field(
        description="stop the application before the swap and start it afterwards (commands "
        "as lists, no shell), or pause for an operator; default: leave it alone"
    ),
]


def run_command(
    argv: list[str],
    what: str,
    timeout: float,
    log: Log,
    secrets: Iterable[str | None] = (),
    die_with_dbops: bool = True,
) -> None:
    """Run one application command; its output to `log` line by line; raise on failure.

    A stop command dies with dbops (a killed dbops must not leave the application stopping
    under nobody's watch); a start command is left to finish. Interrupted (a cancel's
    SIGTERM), the command's process group is ended before the interruption goes on.
    """
    known = [s for s in secrets if s]
    log(f"{what}: running {describe(argv)}")
    started = time.monotonic()
    options: dict[str, Any] = {
        "stdin": subprocess.DEVNULL,
        "stdout": subprocess.PIPE,
        "stderr": subprocess.STDOUT,
        "start_new_session": True,
    }
    try:
        launch = spawn if die_with_dbops else subprocess.Popen  # argv list, no shell
        process = launch(argv, **options)
    except OSError as exc:
        raise DbopsError(f"{what} `{describe(argv)}` cannot run: {exc.strerror or exc}") from None
    assert process.stdout is not None
    last: list[str] = []

    def pump() -> None:
        assert process.stdout is not None
        for raw in process.stdout:
            line = redact(raw.decode(errors="replace").rstrip(), known)
            if line.strip():
                last[:] = [line]
                log(f"{what}: {line}")

    reader = threading.Thread(target=pump, daemon=True, name=f"{what}-output")
    reader.start()
    try:
        code = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _end(process)
        raise DbopsError(
            f"{what} `{describe(argv)}` did not finish within {timeout:g} s and was killed; "
            "raise app_timeout_seconds or check the command"
        ) from None
    except BaseException:
        _end(process)
        raise
    finally:
        reader.join(timeout=5)
    if code != 0:
        said = f": {last[0]}" if last else ""
        raise DbopsError(f"{what} `{describe(argv)}` exited with {code}{said}")
    log(f"{what}: done in {time.monotonic() - started:.1f} s")


def _end(process: subprocess.Popen[bytes]) -> None:
    """TERM the command's process group, KILL it when it lingers."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=wait)
            return

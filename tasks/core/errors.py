"""Typed outcomes of failure: what went wrong is the exception's class, never its wording.

Every message is one line that says what is wrong and how to fix it, and never
contains a secret. Callers decide by class (and `check`/`parameter` attributes),
so a reworded message cannot change behaviour.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class DbopsError(Exception):
    """A user-facing failure; its message is a single line and never contains a secret."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    def __reduce__(self) -> tuple[Any, ...]:
        # Prefect may pickle a failed run's exception; keep the subclass attributes.
        return (_rebuild, (type(self), self.args, self.__dict__))


def _rebuild(cls: type[DbopsError], args: tuple[Any, ...], state: dict[str, Any]) -> DbopsError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class ConfigError(DbopsError):
    """Bad input: a setting or value the user gave that cannot work. Nothing was touched."""


class ParameterError(ConfigError):
    """A flow parameter's value is refused; `parameter` names it so the CLI can name its flag.

    The message starts with the parameter's name, as the Prefect UI form shows it; `related`
    names other parameters the message mentions.
    """

    def __init__(self, parameter: str, problem: str, related: tuple[str, ...] = ()) -> None:
        super().__init__(f"{parameter} {problem}")
        self.parameter = parameter
        self.related = related


class NotFoundError(DbopsError):
    """A backup, object, database or block that does not exist."""


class TransientError(DbopsError):
    """A failure worth retrying (connection refused, S3 5xx, lock timeout)."""


class SurroundingsError(DbopsError):
    """The environment failed (a server, a right, a tool), not the backup being handled.

    Restore tests record nothing about a backup when this is raised.
    """


class LockTableFullError(SurroundingsError):
    """The server's shared lock table is full (`max_locks_per_transaction` is too low)."""


class BackupCheck(StrEnum):
    """Which of a backup's own checks failed."""

    MANIFEST = "manifest"
    SHA256 = "sha256"
    ARCHIVE = "archive"
    ROW_COUNTS = "row_counts"
    RESTORE = "restore"
    GLOBALS = "globals"
    SMOKE = "smoke"


class BackupFaultError(DbopsError):
    """The backup itself is at fault (corrupt, truncated, inconsistent, not restorable)."""

    def __init__(self, message: str, check: BackupCheck) -> None:
        super().__init__(message)
        self.check = check


def first_line(exc: BaseException) -> str:
    """The one line of an error worth showing: PostgreSQL's primary message when there is one."""
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None)
    if primary:
        return str(primary)
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def retry_transient(task: object, task_run: object, state: object) -> bool:
    """Prefect retry_condition_fn: retry connection refusals, S3 5xx and lock timeouts only.

    A wrong password, a missing database or a checksum mismatch fails at once.
    """
    try:
        state.result()  # type: ignore[attr-defined]
    except TransientError:
        return True
    except Exception:  # noqa: BLE001 - any other failure is permanent
        return False
    return False

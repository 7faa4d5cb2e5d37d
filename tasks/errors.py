"""The one exception type users see: a one-line message saying what is wrong and how to fix it."""


class DbopsError(Exception):
    """A user-facing failure; its message is a single line and never contains a secret."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


class TransientError(DbopsError):
    """A failure worth retrying (connection refused, S3 5xx, lock timeout)."""


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

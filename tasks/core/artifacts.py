"""What a person sees in the Prefect UI: table, markdown and progress artifacts."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import TypeVar
from uuid import UUID

from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

# Who else watches progress in this process (the CLI's terminal bar): called with
# (description, bytes done, bytes expected or 0, finished) at most every LISTEN_INTERVAL s.
ProgressListener = Callable[[str, int, int, bool], None]
LISTENERS: list[ProgressListener] = []
LISTEN_INTERVAL = 0.2


class ProgressReporter:
    """Updates a progress artifact at most every `interval` seconds while a long dump runs."""

    def __init__(self, expected_bytes: int, description: str, interval: float = 2.0) -> None:
        self.expected = max(expected_bytes, 1)
        self.known = expected_bytes > 0
        self.description = description
        self.interval = interval
        self._last = 0.0
        self._told = 0.0
        self._done_bytes = 0
        self.artifact_id: UUID | None = None
        try:
            self.artifact_id = create_progress_artifact(0.0, description=description)
        except Exception:  # noqa: BLE001 - progress is a nicety, never a reason to fail a backup
            self.artifact_id = None

    def _tell(self, done_bytes: int, finished: bool) -> None:
        for listener in LISTENERS:
            with contextlib.suppress(Exception):  # a terminal bar never fails the job
                listener(self.description, done_bytes, self.expected if self.known else 0, finished)

    def __call__(self, done_bytes: int) -> None:
        now = time.monotonic()
        self._done_bytes = done_bytes
        if LISTENERS and now - self._told >= LISTEN_INTERVAL:
            self._told = now
            self._tell(done_bytes, False)
        if self.artifact_id is None or now - self._last < self.interval:
            return
        self._last = now
        percent = min(99.0, 100.0 * done_bytes / self.expected)
        try:
            update_progress_artifact(self.artifact_id, percent)
        except Exception:  # noqa: BLE001
            self.artifact_id = None

    def done(self) -> None:
        self._tell(self.expected if self.known else self._done_bytes, True)
        if self.artifact_id is not None:
            with contextlib.suppress(Exception):
                update_progress_artifact(self.artifact_id, 100.0)


def artifact_key(text: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    key = "".join(ch if ch.isalnum() else "-" for ch in text.lower())
    return "-".join(filter(None, key.split("-"))) or "db"


T = TypeVar("T")
ARTIFACT_ROWS = 100  # a table a person reads in the UI; past it, a summary


def most_telling(
    items: list[T],
    first: Callable[[T], bool],
    weight: Callable[[T], float],
    limit: int = ARTIFACT_ROWS,
) -> list[T]:
    """At most `limit` items for the UI: every item `first` picks, then the heaviest others.

    A run over 10,000 tables keeps its whole list in the result (`--json`); its artifact shows
    what needs a person's eyes, in the original order."""
    if len(items) <= limit:
        return items
    chosen = {i for i, item in enumerate(items) if first(item)}
    chosen = set(sorted(chosen)[:limit])
    others = sorted(
        (i for i in range(len(items)) if i not in chosen),
        key=lambda i: weight(items[i]),
        reverse=True,
    )
    chosen.update(others[: limit - len(chosen)])
    return [items[i] for i in sorted(chosen)]


def publish_table(rows: list[dict[str, object]], key: str, description: str) -> None:
    create_table_artifact(rows, key=artifact_key(key), description=description)

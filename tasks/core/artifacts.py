"""What a person sees in the Prefect UI: table, markdown and progress artifacts."""

from __future__ import annotations

import contextlib
import time
from uuid import UUID

from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)


class ProgressReporter:
    """Updates a progress artifact at most every `interval` seconds while a long dump runs."""

    def __init__(self, expected_bytes: int, description: str, interval: float = 2.0) -> None:
        self.expected = max(expected_bytes, 1)
        self.interval = interval
        self._last = 0.0
        self.artifact_id: UUID | None = None
        try:
            self.artifact_id = create_progress_artifact(0.0, description=description)
        except Exception:  # noqa: BLE001 - progress is a nicety, never a reason to fail a backup
            self.artifact_id = None

    def __call__(self, done_bytes: int) -> None:
        now = time.monotonic()
        if self.artifact_id is None or now - self._last < self.interval:
            return
        self._last = now
        percent = min(99.0, 100.0 * done_bytes / self.expected)
        try:
            update_progress_artifact(self.artifact_id, percent)
        except Exception:  # noqa: BLE001
            self.artifact_id = None

    def done(self) -> None:
        if self.artifact_id is not None:
            with contextlib.suppress(Exception):
                update_progress_artifact(self.artifact_id, 100.0)


def artifact_key(text: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    key = "".join(ch if ch.isalnum() else "-" for ch in text.lower())
    return "-".join(filter(None, key.split("-"))) or "db"


def publish_table(rows: list[dict[str, object]], key: str, description: str) -> None:
    create_table_artifact(rows, key=artifact_key(key), description=description)

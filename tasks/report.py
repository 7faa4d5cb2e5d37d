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

from tasks.manifest import Manifest


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


def backup_table(manifest: Manifest, location: str) -> list[dict[str, object]]:
    stages = manifest.stages
    mb = 1024 * 1024
    rows: list[dict[str, object]] = [
        {"item": "backup", "value": manifest.backup_id},
        {"item": "location", "value": location},
        {"item": "database", "value": manifest.database},
        {"item": "server", "value": manifest.server_version},
        {"item": "pg_dump", "value": manifest.pg_dump_version},
        {
            "item": "format",
            "value": f"{manifest.format} + {manifest.compression}"
            f" (level {manifest.compression_level})",
        },
        {"item": "dump size (MB)", "value": round((manifest.dump.raw_size or 0) / mb, 2)},
        {"item": "stored size (MB)", "value": round(manifest.dump.size / mb, 2)},
        {"item": "ratio", "value": stages.get("ratio")},
        {"item": "duration (s)", "value": manifest.duration_seconds},
        {"item": "pg_dump MB/s", "value": stages.get("dump_mb_per_s")},
        {"item": "stored MB/s", "value": stages.get("store_mb_per_s")},
        {"item": "waiting for pg_dump (s)", "value": stages.get("waiting_for_pg_dump_seconds")},
        {"item": "writing/uploading (s)", "value": stages.get("writing_seconds")},
        {"item": "tables", "value": len(manifest.row_counts)},
        {"item": "rows", "value": sum(manifest.row_counts.values())},
        {"item": "sha256", "value": manifest.dump.sha256},
        {"item": "labels", "value": ", ".join(manifest.labels) or "-"},
    ]
    return rows


def publish_backup_report(manifest: Manifest, location: str) -> None:
    create_table_artifact(
        backup_table(manifest, location),
        key=f"backup-{artifact_key(manifest.database)}",
        description=f"Backup {manifest.backup_id} of {manifest.database}",
    )


def artifact_key(text: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    key = "".join(ch if ch.isalnum() else "-" for ch in text.lower())
    return "-".join(filter(None, key.split("-"))) or "db"


def publish_table(rows: list[dict[str, object]], key: str, description: str) -> None:
    create_table_artifact(rows, key=artifact_key(key), description=description)

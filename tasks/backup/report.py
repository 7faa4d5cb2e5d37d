"""The backup reports a person reads in the Prefect UI: sizes, speeds, checksum, location."""

from __future__ import annotations

from prefect.artifacts import create_table_artifact

from tasks.backup.fleet import FleetBackup
from tasks.backup.manifest import Manifest
from tasks.core.artifacts import artifact_key, publish_table


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
        *(
            [{"item": "data objects (jobs)", "value": f"{len(manifest.objects)} ({manifest.jobs})"}]
            if manifest.format == "parallel"
            else []
        ),
        {"item": "dump size (MB)", "value": round(manifest.raw_size / mb, 2)},
        {"item": "stored size (MB)", "value": round(manifest.stored_size / mb, 2)},
        {"item": "ratio", "value": stages.get("ratio")},
        {"item": "duration (s)", "value": manifest.duration_seconds},
        {"item": "pg_dump MB/s", "value": stages.get("dump_mb_per_s")},
        {"item": "stored MB/s", "value": stages.get("store_mb_per_s")},
        {"item": "waiting for pg_dump (s)", "value": stages.get("waiting_for_pg_dump_seconds")},
        {"item": "writing/uploading (s)", "value": stages.get("writing_seconds")},
        {"item": "tables", "value": len(manifest.row_counts)},
        {"item": "rows", "value": sum(manifest.row_counts.values())},
        {"item": "sha256", "value": manifest.dump.sha256},
        {
            "item": "encryption",
            "value": "age to " + ", ".join(manifest.encryption.recipients)
            if manifest.encryption
            else "none",
        },
        {"item": "labels", "value": ", ".join(manifest.labels) or "-"},
    ]
    return rows


def publish_backup_report(manifest: Manifest, location: str) -> None:
    create_table_artifact(
        backup_table(manifest, location),
        key=f"backup-{artifact_key(manifest.database)}",
        description=f"Backup {manifest.backup_id} of {manifest.database}",
    )


def publish_fleet_report(results: list[FleetBackup]) -> None:
    publish_table(
        [result.model_dump(mode="json") for result in results],
        key="backup-fleet",
        description=f"Backup of {len(results)} databases",
    )

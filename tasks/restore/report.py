"""What a person reads in the Prefect UI after a restore or a restore test."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact

from tasks.core.artifacts import artifact_key, publish_table
from tasks.restore.restore import RestoreResult
from tasks.restore.restore_test import VerificationRecord
from tasks.restore.tables import TableRestoreResult


def publish_restore_report(result: RestoreResult) -> None:
    rows = [
        {"item": key, "value": str(value)}
        for key, value in result.model_dump(exclude={"application"}).items()
    ]
    if result.application:  # who stopped it, and how long it was down
        rows += [
            {"item": f"application {key}", "value": str(value)}
            for key, value in result.application.model_dump().items()
        ]
    publish_table(
        rows,
        key=f"restore-{result.target.rsplit('/', 1)[-1]}",
        description=f"Restore of {result.source}",
    )


def publish_verification_report(record: VerificationRecord) -> None:
    create_markdown_artifact(
        verification_markdown(record),
        key=f"verify-{artifact_key(record.database or 'backup')}",
        description=f"Restore test of {record.backup_id or record.dump}",
    )


def verification_markdown(record: VerificationRecord) -> str:
    """What a person reads at a glance in the Prefect UI."""
    name = record.backup_id or record.dump
    if record.ok:
        lines = [
            f"## ✅ Backup `{name}` restores",
            "",
            f"Restored into the throw-away database `{record.server}` in "
            f"{record.restore_seconds:.1f} s, then dropped.",
            "",
            "| check | result |",
            "|---|---|",
            "| SHA-256 and size of the stored object match the manifest | ✅ |",
            "| the whole archive reads and replays without error | ✅ |",
            f"| row counts of {record.tables} tables ({record.rows:,} rows) match | ✅ |",
        ]
        if record.globals_checked:
            lines.append("| roles/tablespaces object (globals) reads, SHA-256 matches | ✅ |")
        lines += [f"| smoke query `{s.query}` | ✅ `{s.value}` |" for s in record.smoke]
    else:
        lines = [
            f"## ❌ Backup `{name}` FAILED verification",
            "",
            f"**Why:** {record.detail}",
            "",
            f"Failed check: `{record.failed_check}`. Do not count on this backup for a restore; "
            "the newest backup that passed is shown by `dbops list`.",
        ]
        lines += [
            f"- smoke query `{s.query}`: {'✅' if s.ok else '❌'} `{s.value}`" for s in record.smoke
        ]
    lines += ["", f"Object: `{record.dump_url}`"]
    if record.recorded_at:
        lines.append(f"Result recorded in `{record.recorded_at}`.")
    return "\n".join(lines)


def publish_table_restore_report(result: TableRestoreResult) -> None:
    """One row per restored table: where it came from, where it is, its checked rows."""
    rows = [
        {
            "backup table": source,
            "restored as": final,
            "rows (checked)": str(result.row_counts.get(final, "partitioned")),
        }
        for source, final in result.tables.items()
    ]
    rows += [
        {"backup table": key, "restored as": "left out", "rows (checked)": ""}
        for key in result.left_out
    ]
    publish_table(
        rows,
        key=f"restore-tables-{result.target.rsplit('/', 1)[-1]}",
        description=f"Tables restored from {result.source} (SHA-256 verified: "
        f"{result.checksum_verified})",
    )

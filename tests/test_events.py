"""Prefect events: every outcome of a backup, verify and restore is an event about its database,
read back through the Prefect API by resource id, with sizes and checksums and no secrets."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.backup import backup_database
from flows.restore import restore_database
from flows.verify import verify_backup
from tasks.core.events import clean_payload, resource_id
from tasks.core.postgres import ConnInfo
from tests.conftest import new_database
from tests.prefect_records import events_about


def system_identifier(url: str) -> str:
    with ConnInfo.parse(url).connect() as conn:
        return str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])


def test_backup_verify_and_restore_are_events_about_the_database(prefect, sample_db, pg, tmp_path):
    backups = str(tmp_path / "backups")
    database = ConnInfo.parse(sample_db).dbname
    server = system_identifier(sample_db)
    resource = f"dbops.database.{server}.{database}"
    assert resource_id(server, database) == resource

    state = backup_database(database_url=sample_db, backup_url=backups, return_state=True)
    manifest = state.result()
    verify_backup(source=manifest.backup_id, backup_url=backups, database_url=sample_db)
    target = new_database(pg, "events_target")
    restore_database(source=manifest.backup_id, database_url=target, backup_url=backups)

    events = events_about(resource, {"dbops.backup.completed", "dbops.verify.passed"})
    by_name = {e.event: e for e in events}
    completed = by_name["dbops.backup.completed"]
    assert completed.resource["dbops.backup-id"] == manifest.backup_id
    assert completed.resource["dbops.server"] == server
    assert completed.resource["dbops.database"] == database
    assert (
        completed.payload["size_bytes"]
        == manifest.dump.size
        == (Path(backups) / manifest.dump.name).stat().st_size
    )
    assert completed.payload["sha256"] == manifest.dump.sha256
    assert completed.payload["location"] == str(Path(backups).resolve())
    assert completed.payload["rows"] == sum(manifest.row_counts.values()) > 0
    # Prefect relates the event to the run that emitted it.
    assert state.state_details.flow_run_id and any(
        r.id == f"prefect.flow-run.{state.state_details.flow_run_id}" for r in completed.related
    )
    passed = by_name["dbops.verify.passed"]
    assert passed.resource["dbops.backup-id"] == manifest.backup_id
    assert passed.payload["row_counts_match"] is True
    assert passed.payload["restore_seconds"] > 0
    assert [e.event for e in events].count("dbops.verify.passed") == 1

    restored = events_about(
        resource_id(server, ConnInfo.parse(target).dbname), {"dbops.restore.completed"}
    )
    assert [e.event for e in restored] == ["dbops.restore.completed"]
    assert restored[0].payload["sha256"] == manifest.dump.sha256
    assert restored[0].payload["checksum_verified"] is True


def test_failures_are_events_once(prefect, sample_db, pg, tmp_path):
    """A corrupt backup is one `dbops.verify.failed` (not also `errored`); a backup of a
    database that does not exist is `dbops.backup.failed` about that database."""
    backups = tmp_path / "backups"
    manifest = backup_database(database_url=sample_db, backup_url=str(backups))
    dump = backups / manifest.dump.name
    dump.write_bytes(dump.read_bytes()[: manifest.dump.size // 2])
    state = verify_backup(
        source=manifest.backup_id,
        backup_url=str(backups),
        database_url=sample_db,
        return_state=True,
    )
    assert state.is_failed()
    server = system_identifier(sample_db)
    resource = resource_id(server, manifest.database)
    events = events_about(resource, {"dbops.backup.completed", "dbops.verify.failed"})
    names = [e.event for e in events]
    assert names.count("dbops.verify.failed") == 1 and "dbops.verify.errored" not in names
    failed = next(e for e in events if e.event == "dbops.verify.failed")
    assert failed.payload["failed_check"] == "archive" and "truncated" in failed.payload["detail"]

    missing = pg.url("no_such_database", password="")
    state = backup_database(database_url=missing, backup_url=str(backups), return_state=True)
    assert state.is_failed()
    (failed,) = events_about(resource_id(server, "no_such_database"), {"dbops.backup.failed"})
    assert failed.event == "dbops.backup.failed"
    assert "no_such_database" in failed.payload["error"]
    assert failed.payload["state"] == "Failed"


@pytest.mark.parametrize(
    "value",
    [
        {"location": "s3://key:s3cr3t@host/bucket"},
        {"list": ["postgresql://app:s3cr3t@db:5432/app"]},
    ],
)
def test_payload_never_carries_a_password(value):
    assert "s3cr3t" not in str(clean_payload(value))

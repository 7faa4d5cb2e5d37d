"""backup-database against real PostgreSQL, moto's S3 server and the Prefect test harness."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess

import pytest

from flows.backup import backup_database
from flows.restore import restore_database
from tasks.backup.manifest import list_manifests
from tasks.storage.destinations import Destination
from tests.conftest import content_checksums, new_database, psql, schema_dump
from tests.faults import FailingS3Proxy, dying_pg_dump


def backup(**kwargs):
    state = backup_database(**kwargs, return_state=True)
    assert state.is_completed(), state.message
    return state.result()


def restore(**kwargs):
    state = restore_database(**kwargs, return_state=True)
    assert state.is_completed(), state.message
    return state.result()


def test_backup_writes_dump_and_manifest_last(prefect, sample_db, tmp_path):
    manifest = backup(database_url=sample_db, backup_url=str(tmp_path))
    files = sorted(p.name for p in tmp_path.iterdir())
    backup_id = manifest.backup_id
    assert files == [
        f"{backup_id}.manifest.json",
        f"{backup_id}.sql.gz",
        f"{backup_id}.started.json",
    ]
    dump = tmp_path / f"{backup_id}.sql.gz"
    assert manifest.dump.sha256 == hashlib.sha256(dump.read_bytes()).hexdigest()
    assert manifest.dump.size == dump.stat().st_size
    assert manifest.dump.raw_size == len(gzip.decompress(dump.read_bytes()))
    assert manifest.row_counts == {
        table: count for table, (count, _) in content_checksums(sample_db).items()
    }
    assert manifest.format == "plain" and manifest.compression == "gzip"
    assert manifest.server_version.startswith("18")
    assert "password" not in manifest.model_dump_json().lower()


def test_guide_restore_gunzip_into_psql_reads_our_file(prefect, pg, sample_db, tmp_path):
    """The guide's own restore, `gunzip -c file | psql`, works on a dbops backup."""
    manifest = backup(database_url=sample_db, backup_url=str(tmp_path))
    target = new_database(pg, "guide")
    dump = tmp_path / manifest.dump.name
    sql = subprocess.run(["gunzip", "-c", str(dump)], capture_output=True, check=True).stdout
    psql(target, "-q", input=sql.decode())
    assert content_checksums(target) == content_checksums(sample_db)
    assert schema_dump(target) == schema_dump(sample_db)


@pytest.mark.parametrize(
    ("fmt", "compression"),
    [("plain", "gzip"), ("plain", "zstd"), ("plain", "none"), ("custom", "gzip")],
)
def test_rich_schema_round_trip(prefect, pg, rich_db, tmp_path, fmt, compression):
    manifest = backup(
        database_url=rich_db, backup_url=str(tmp_path), format=fmt, compression=compression
    )
    target = new_database(pg, "restored")
    result = restore(source=manifest.backup_id, database_url=target, backup_url=str(tmp_path))
    assert result.checksum_verified is True
    assert schema_dump(target) == schema_dump(rich_db)
    assert content_checksums(target) == content_checksums(rich_db)


def test_backup_to_s3_is_read_back_by_the_aws_cli(prefect, sample_db, bucket, s3_client, s3_server):
    manifest = backup(
        database_url=sample_db,
        backup_url=f"s3://{bucket}/nightly",
        s3={"sse": "AES256", "storage_class": "STANDARD_IA", "tags": {"team": "db", "env": "test"}},
    )
    key = f"nightly/{manifest.dump.name}"
    listing = subprocess.run(
        ["aws", "s3", "ls", f"s3://{bucket}/nightly/", "--endpoint-url", s3_server],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert manifest.dump.name in listing
    assert f"{manifest.backup_id}.manifest.json" in listing
    body = subprocess.run(
        ["aws", "s3", "cp", f"s3://{bucket}/{key}", "-", "--endpoint-url", s3_server],
        capture_output=True,
        check=True,
    ).stdout
    assert hashlib.sha256(body).hexdigest() == manifest.dump.sha256
    assert b'CREATE TABLE public."Message"' in gzip.decompress(body)
    head = s3_client.head_object(Bucket=bucket, Key=key)
    assert head["ServerSideEncryption"] == "AES256"
    assert head["StorageClass"] == "STANDARD_IA"
    tags = s3_client.get_object_tagging(Bucket=bucket, Key=key)["TagSet"]
    assert {t["Key"]: t["Value"] for t in tags} == {"team": "db", "env": "test"}


def test_restore_from_s3_latest(prefect, pg, sample_db, bucket):
    backup(database_url=sample_db, backup_url=f"s3://{bucket}/p", compression="zstd")
    target = new_database(pg, "froms3")
    source_db = sample_db.rsplit("/", 1)[-1]
    result = restore(
        source="latest", database_url=target, backup_url=f"s3://{bucket}/p", from_database=source_db
    )
    assert result.checksum_verified
    assert content_checksums(target) == content_checksums(sample_db)


def test_killed_pg_dump_leaves_no_backup(
    prefect, sample_db, tmp_path, monkeypatch, bucket, s3_client
):
    monkeypatch.setenv("PG_BIN_DIR", str(dying_pg_dump(tmp_path / "bin")))
    local = tmp_path / "backups"
    for where in (str(local), f"s3://{bucket}/x"):
        state = backup_database(
            database_url=sample_db, backup_url=where, retries=0, return_state=True
        )
        assert state.is_failed()
        assert "pg_dump failed" in state.message and "no backup was stored" in state.message
    assert list(local.iterdir()) == []  # not even a temporary file
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_failed_upload_leaves_no_object(prefect, sample_db, bucket, s3_client, s3_server):
    with FailingS3Proxy(s3_server) as proxy:
        state = backup_database(
            database_url=sample_db,
            backup_url=f"s3://{bucket}/x",
            s3={"endpoint_url": proxy.url},
            retries=0,
            return_state=True,
        )
    assert state.is_failed()
    assert proxy.failed_parts >= 1
    assert "denied" in state.message
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_globals_dump_has_the_roles(prefect, pg, sample_db, tmp_path):
    with (
        __import__("tasks.core.postgres", fromlist=["ConnInfo"])
        .ConnInfo.parse(sample_db)
        .connect() as conn
    ):
        conn.execute("DROP ROLE IF EXISTS app_reader; CREATE ROLE app_reader LOGIN")
    manifest = backup(database_url=sample_db, backup_url=str(tmp_path), include_globals=True)
    globals_file = tmp_path / manifest.globals.name
    text = gzip.decompress(globals_file.read_bytes()).decode()
    assert "CREATE ROLE app_reader" in text
    assert manifest.globals.sha256 == hashlib.sha256(globals_file.read_bytes()).hexdigest()


def test_cross_version_pg15_server(prefect, pg15, pg, tmp_path):
    """A PostgreSQL 15 server is dumped with a pg_dump >= 15 and restores into 15 and 18."""
    from tasks.core.postgres import ConnInfo
    from tasks.demo.sample_data import create_sample_database

    source = new_database(pg15, "old")
    create_sample_database(ConnInfo.parse(source), size_mb=1)
    manifest = backup(database_url=source, backup_url=str(tmp_path))
    assert manifest.server_version.startswith("15")
    assert int(manifest.pg_dump_version.split(".")[0]) >= 15
    for cluster in (pg15, pg):
        target = new_database(cluster, "new")
        restore(source=manifest.backup_id, database_url=target, backup_url=str(tmp_path))
        assert content_checksums(target) == content_checksums(source)


def test_listing_ignores_dumps_without_manifest(prefect, sample_db, tmp_path):
    manifest = backup(database_url=sample_db, backup_url=str(tmp_path))
    (tmp_path / "ai_saas_20200101_000000.sql.gz").write_bytes(gzip.compress(b"select 1;"))
    listed = list_manifests(Destination.from_url(str(tmp_path)))
    assert [m.backup_id for m in listed] == [manifest.backup_id]


def test_backup_run_publishes_table_and_progress_artifacts(prefect, sample_db, tmp_path):
    from prefect.client.orchestration import get_client

    state = backup_database(database_url=sample_db, backup_url=str(tmp_path), return_state=True)
    assert state.is_completed()
    manifest = state.result()
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:  # this run's artifacts only, not a first page
        mine = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    table = next(a for a in mine if a.type == "table")
    rows = {row["item"]: row["value"] for row in json.loads(table.data)}
    assert rows["backup"] == manifest.backup_id
    assert rows["sha256"] == manifest.dump.sha256
    assert rows["location"].endswith(manifest.dump.name)
    progress = next(a for a in mine if a.type == "progress")
    assert float(progress.data) == 100.0


def test_backup_waits_for_another_job_on_the_same_database(prefect, sample_db, tmp_path):
    """Maintenance holding the database's concurrency slot keeps a backup from starting."""
    from tasks.core.postgres import ConnInfo
    from tasks.core.slots import database_slot

    with database_slot(ConnInfo.parse(sample_db)):
        state = backup_database(
            database_url=sample_db,
            backup_url=str(tmp_path),
            slot_wait_seconds=2,
            retries=0,
            return_state=True,
        )
    assert state.is_failed()
    assert "another dbops job held" in state.message
    assert list(tmp_path.iterdir()) == []
    backup(database_url=sample_db, backup_url=str(tmp_path))  # free again afterwards

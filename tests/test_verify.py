"""verify-backup: real restores of a real backup into scratch databases on PostgreSQL 18,
from a local directory and from S3; corrupt, truncated and manifest-less backups fail."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.verify import verify_backup
from tasks.backup.manifest import VERIFIED_SUFFIX, Manifest, list_manifests, write_manifest
from tasks.backup.pipeline import BackupRequest, run_backup
from tasks.core.postgres import ConnInfo
from tasks.core.settings import s3_options_from_env
from tasks.demo.embedded import free_port
from tasks.demo.sample_data import create_sample_database
from tasks.restore.restore_test import VerificationRecord
from tasks.storage.destinations import Destination
from tests.backup_helpers import invoke_dbops, object_names
from tests.conftest import new_database

pytestmark = pytest.mark.xdist_group("verify")  # its module fixture is built once


@pytest.fixture(scope="module")
def original(pg, tmp_path_factory) -> tuple[str, Manifest, Destination]:
    """One real backup (with globals) of a small guide-shaped database, made once."""
    url = new_database(pg, "ai_saas")
    info = ConnInfo.parse(url)
    create_sample_database(info, size_mb=1)
    destination = Destination.from_url(str(tmp_path_factory.mktemp("original")))
    manifest = run_backup(BackupRequest(conn=info, destination=destination, include_globals=True))
    return url, manifest, destination


def copy_backup(original, url: str) -> Destination:
    _, manifest, source = original
    target = Destination.from_url(url, s3_options_from_env())
    assert manifest.globals is not None
    for name in (manifest.dump.name, manifest.globals.name, manifest.manifest_name):
        target.write_bytes(name, source.read_bytes(name))
    return target


@pytest.fixture
def local_copy(original, tmp_path) -> tuple[str, Destination]:
    url = str(tmp_path / "backups")
    return url, copy_backup(original, url)


def scratch_databases(pg) -> list[str]:
    with ConnInfo.parse(pg.url("postgres", password="")).connect() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE '%\\_\\_dbops\\_verify\\_%'"
        ).fetchall()
    return [r[0] for r in rows]


def sidecar(destination: Destination, manifest: Manifest) -> VerificationRecord:
    raw = destination.read_bytes(manifest.backup_id + VERIFIED_SUFFIX)
    return VerificationRecord.model_validate_json(raw)


def markdown_of(state) -> str:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    (artifact,) = [a for a in artifacts if a.type == "markdown"]
    return str(artifact.data)


def error_of(state) -> str:
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BaseException), state
    return str(error)


def test_verify_latest_restores_checks_records_and_drops_the_scratch(
    prefect, pg, original, local_copy, monkeypatch
):
    db_url, manifest, _ = original
    url, destination = local_copy
    monkeypatch.setenv("DATABASE_URL", db_url)
    smoke = ['SELECT count(*) > 0 FROM "Message"', 'SELECT count(*) FROM "User"']

    state = verify_backup(source="latest", backup_url=url, smoke_queries=smoke, return_state=True)

    assert state.is_completed(), state
    result = state.result()
    assert result.ok is True and result.backup_id == manifest.backup_id
    assert result.checksum_verified and result.archive_read and result.row_counts_match
    assert result.globals_checked is True
    assert result.tables == len(manifest.row_counts) == 3
    assert [s.ok for s in result.smoke] == [True, True]
    assert result.smoke[1].value == str(manifest.row_counts["public.User"])
    record = sidecar(destination, manifest)
    assert record.ok and record.sha256 == manifest.dump.sha256
    assert record.recorded_at is None and result.recorded_at.endswith(VERIFIED_SUFFIX)
    (listed,) = list_manifests(destination)
    assert listed.verification and listed.verification.ok
    assert (
        destination.read_bytes(manifest.manifest_name)
        == Path(original[2].url_for(manifest.manifest_name)).read_bytes()
    )  # the manifest itself is never rewritten
    assert scratch_databases(pg) == []
    text = markdown_of(state)
    assert f"## ✅ Backup `{manifest.backup_id}` restores" in text
    assert "row counts of 3 tables" in text and "password" not in text


def test_verify_a_backup_on_s3_on_a_separate_verify_server(prefect, pg, original, bucket):
    _, manifest, _ = original
    url = f"s3://{bucket}/nightly"
    destination = copy_backup(original, url)

    result = verify_backup(
        source=manifest.backup_id,
        backup_url=url,
        verify_database_url=pg.url("postgres", password=""),
    )

    assert result.ok and result.checksum_verified
    assert result.server.startswith(pg.url("postgres", password="").rsplit("/", 1)[0])
    assert f"/{manifest.database}__dbops_verify_" in result.server
    assert result.recorded_at == f"{url}/{manifest.backup_id}{VERIFIED_SUFFIX}"
    assert sidecar(destination, manifest).ok
    assert list_manifests(destination)[0].verification.ok  # type: ignore[union-attr]
    assert scratch_databases(pg) == []


def flip_a_byte(destination: Destination, manifest: Manifest) -> None:
    data = bytearray(destination.read_bytes(manifest.dump.name))
    data[len(data) // 2] ^= 0xFF
    destination.write_bytes(manifest.dump.name, bytes(data))


def truncate(destination: Destination, manifest: Manifest) -> None:
    data = destination.read_bytes(manifest.dump.name)
    destination.write_bytes(manifest.dump.name, data[: len(data) - 200])


def wrong_row_count(destination: Destination, manifest: Manifest) -> None:
    counts = dict(manifest.row_counts)
    counts["public.Message"] += 1
    write_manifest(destination, manifest.model_copy(update={"row_counts": counts}))


def corrupt_globals(destination: Destination, manifest: Manifest) -> None:
    assert manifest.globals is not None
    destination.write_bytes(manifest.globals.name, b"\x1f\x8b not gzip at all")


@pytest.mark.parametrize(
    ("damage", "checks", "words"),
    [
        (flip_a_byte, {"archive", "sha256"}, ("corrupt", "SHA-256")),
        (truncate, {"archive", "sha256"}, ("truncated", "bytes but its manifest says")),
        (wrong_row_count, {"row_counts"}, ("row counts differ",)),
        (corrupt_globals, {"globals"}, ("globals object",)),
    ],
)
def test_damaged_backups_fail_verification_with_the_reason(
    prefect, pg, original, local_copy, damage, checks, words, monkeypatch
):
    db_url, manifest, _ = original
    url, destination = local_copy
    monkeypatch.setenv("DATABASE_URL", db_url)
    damage(destination, manifest)

    state = verify_backup(source=manifest.backup_id, backup_url=url, return_state=True)

    assert state.is_failed()
    message = error_of(state)
    assert message.startswith(f"backup {manifest.backup_id} FAILED verification: ")
    assert any(word in message for word in words), message
    assert "\n" not in message
    record = sidecar(destination, manifest)
    assert record.ok is False and record.failed_check in checks
    assert record.detail in message
    (listed,) = list_manifests(destination)
    assert listed.verification is not None and listed.verification.ok is False
    assert scratch_databases(pg) == []
    text = markdown_of(state)
    assert "## ❌" in text and "FAILED verification" in text and record.detail in text


def test_failing_smoke_queries_fail_the_verification(
    prefect, pg, original, local_copy, monkeypatch
):
    db_url, manifest, _ = original
    url, destination = local_copy
    monkeypatch.setenv("DATABASE_URL", db_url)
    smoke = [
        'SELECT count(*) = -1 FROM "Message"',
        "SELECT * FROM no_such_table",
        'DELETE FROM "Message"',
        'SELECT id FROM "User" WHERE false',
    ]
    state = verify_backup(backup_url=url, smoke_queries=smoke, return_state=True)
    assert state.is_failed()
    assert "smoke query 'SELECT count(*) = -1 FROM \"Message\"' failed: False (and 3 more)" in (
        error_of(state)
    )
    record = sidecar(destination, manifest)
    assert record.failed_check == "smoke" and record.checksum_verified and record.row_counts_match
    values = [s.value for s in record.smoke]
    assert values[0] == "False" and "no_such_table" in values[1]
    assert "read-only transaction" in values[2] and values[3] == "returned no rows"
    assert scratch_databases(pg) == []


def test_a_backup_without_its_manifest_is_never_verified(
    prefect, original, local_copy, monkeypatch
):
    db_url, manifest, _ = original
    url, destination = local_copy
    monkeypatch.setenv("DATABASE_URL", db_url)
    destination.delete(manifest.manifest_name)
    before = object_names(destination)

    by_id = verify_backup(source=manifest.backup_id, backup_url=url, return_state=True)
    assert by_id.is_failed() and "is not a backup" in error_of(by_id)

    by_path = verify_backup(source=destination.url_for(manifest.dump.name), return_state=True)
    assert by_path.is_failed()
    assert "has no dbops manifest" in error_of(by_path) and "FAILED verification" in error_of(
        by_path
    )
    assert "## ❌" in markdown_of(by_path)

    latest = verify_backup(source="latest", backup_url=url, return_state=True)
    assert latest.is_failed() and "no backup of database" in error_of(latest)

    assert object_names(destination) == before  # no sidecar for what is not a backup


def test_an_unreachable_verify_server_records_nothing_about_the_backup(
    prefect, pg, original, local_copy
):
    _, manifest, _ = original
    url, destination = local_copy
    nowhere = f"postgresql://postgres@127.0.0.1:{free_port()}/postgres"
    state = verify_backup(
        backup_url=url, database=manifest.database, verify_database_url=nowhere,
        retries=0, return_state=True,
    )  # fmt: skip
    assert state.is_failed() and "server unreachable" in error_of(state)
    assert manifest.backup_id + VERIFIED_SUFFIX not in object_names(destination)

    with_password = verify_backup(
        backup_url=url, verify_database_url=pg.url("postgres", password="s3cret"),
        return_state=True,
    )  # fmt: skip
    assert with_password.is_failed()
    assert "verify_database_url contains a password" in error_of(with_password)
    assert "s3cret" not in error_of(with_password)


def test_cli_verify_exit_codes(prefect, pg, original, local_copy):
    db_url, manifest, _ = original
    url, destination = local_copy
    env = {"DATABASE_URL": db_url, "BACKUP_URL": url}
    good = invoke_dbops("verify", "--json", env=env)
    assert good.exit_code == 0, good.output
    assert json.loads(good.stdout)["ok"] is True

    truncate(destination, manifest)
    bad = invoke_dbops("verify", "latest", "--from", url, env=env)
    assert bad.exit_code == 1
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: backup {manifest.backup_id} FAILED verification:")
    assert scratch_databases(pg) == []

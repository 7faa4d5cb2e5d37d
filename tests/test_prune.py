"""prune-backups on a local directory and on S3 (moto's HTTP server), through the real flow."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.prune import prune_backups
from tasks.backup.manifest import VERIFIED_SUFFIX, list_manifests, write_manifest
from tasks.core.settings import s3_options_from_env
from tasks.retention.inventory import apply_plan, stale_incomplete_writes, take_inventory
from tasks.retention.plan import PRE_MIGRATION, BackupInfo, plan_retention
from tasks.retention.policy import RetentionPolicy
from tasks.storage.destinations import Destination, LocalDestination
from tests.backup_helpers import backup_objects, invoke_dbops, make_backup, object_names

HOUR = timedelta(hours=1)


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path) -> tuple[str, Destination]:
    if request.param == "local":
        url = str(tmp_path / "backups")
    else:
        url = f"s3://{request.getfixturevalue('bucket')}/backups"
    return url, Destination.from_url(url, s3_options_from_env())


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def daily_backups(destination: Destination, count: int, database: str = "ai_saas", **kw):
    start = now() - HOUR
    return [
        make_backup(destination, database, start - timedelta(days=i), **kw) for i in range(count)
    ]


def error_of(state) -> str:
    error = state.result(raise_on_failure=False)
    assert isinstance(error, BaseException), state
    return str(error)


def artifact_rows(state) -> tuple[list[dict], str]:
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    (artifact,) = [a for a in artifacts if a.type == "table"]
    data = artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)
    return data, artifact.description or ""


def test_prune_keeps_a_week_the_newest_verified_and_pre_migration(prefect, store):
    url, destination = store
    backups = daily_backups(destination, 12)
    backups[9] = make_backup(destination, "ai_saas", backups[9].started_at, verified=True)
    doomed_with_extras = make_backup(
        destination, "ai_saas", backups[10].started_at - HOUR, verified=False, with_globals=True
    )
    recent_migration = make_backup(
        destination, "ai_saas", now() - timedelta(days=20), labels=(PRE_MIGRATION,)
    )
    old_migration = make_backup(
        destination, "ai_saas", now() - timedelta(days=45), labels=(PRE_MIGRATION,)
    )
    # Not backups: a dump without a manifest and a foreign file are never touched.
    destination.write_bytes("ai_saas_20200101_000000.sql.gz", b"orphan dump")
    destination.write_bytes("notes.txt", b"not ours")
    before = object_names(destination)

    state = prune_backups(backup_url=url, return_state=True, policy=RetentionPolicy(keep_days=7))

    assert state.is_completed(), state
    result = state.result()
    kept = {b.backup_id for b in backups[:7]} | {backups[9].backup_id, recent_migration.backup_id}
    deleted = {b.backup_id for b in (*backups[7:9], *backups[10:], doomed_with_extras)}
    deleted.add(old_migration.backup_id)
    assert {i.backup_id for i in result.items if i.action == "keep"} == kept
    assert set(result.deleted_backups) == deleted
    rules = {i.backup_id: i.rules for i in result.items}
    assert rules[backups[9].backup_id] == ["newest verified"]
    assert rules[recent_migration.backup_id] == ["pre-migration < 30d"]
    assert rules[backups[0].backup_id] == ["newest", "younger than 7d"]

    remaining = object_names(destination)
    assert {m.backup_id for m in list_manifests(destination)} == kept
    gone = set().union(
        *(backup_objects(m) for m in (*backups[7:9], *backups[10:], old_migration)),
        backup_objects(doomed_with_extras),
        {doomed_with_extras.backup_id + VERIFIED_SUFFIX},
    )
    assert doomed_with_extras.globals and doomed_with_extras.globals.name in gone
    assert remaining == before - gone
    assert {"ai_saas_20200101_000000.sql.gz", "notes.txt"} <= remaining
    assert backups[9].backup_id + VERIFIED_SUFFIX in remaining

    rows, description = artifact_rows(state)
    assert "9 kept, 6 to delete" in description
    by_backup = {r["backup"]: r for r in rows}
    assert by_backup[backups[9].backup_id]["why"] == "newest verified"
    assert by_backup[backups[9].backup_id]["verified"] == "yes"
    assert by_backup[doomed_with_extras.backup_id]["action"] == "delete"


def test_dry_run_deletes_nothing_and_predicts_the_real_run(prefect, tmp_path):
    url = str(tmp_path / "backups")
    destination = Destination.from_url(url)
    backups = daily_backups(destination, 10)
    before = object_names(destination)

    state = prune_backups(
        backup_url=url,
        dry_run=True,
        return_state=True,
        policy=RetentionPolicy(keep_last=3, keep_weekly=1),
    )
    assert state.is_completed(), state
    plan = state.result()
    assert object_names(destination) == before
    assert plan.dry_run is True and plan.deleted_backups == []
    predicted = {i.backup_id for i in plan.items if i.action == "delete"}
    assert predicted == {b.backup_id for b in backups[3:]}
    _, description = artifact_rows(state)
    assert description.startswith("Dry run of")

    real = prune_backups(
        backup_url=url, return_state=True, policy=RetentionPolicy(keep_last=3, keep_weekly=1)
    ).result()
    assert set(real.deleted_backups) == predicted


def test_failing_dumps_stop_the_prune_loudly_and_delete_nothing(prefect, store):
    url, destination = store
    daily_backups(destination, 9)
    # app's backups stopped nine days ago: all of them are older than --keep-days 7, and
    # one database whose dumps fail stops the whole prune.
    stale = [make_backup(destination, "app", now() - timedelta(days=9 + i)) for i in range(3)]
    before = object_names(destination)

    state = prune_backups(backup_url=url, return_state=True, policy=RetentionPolicy(keep_days=7))

    assert state.is_failed()
    message = error_of(state)
    assert message.startswith("prune refused, nothing deleted:")
    assert stale[0].backup_id in message and "\n" not in message
    assert object_names(destination) == before
    rows, description = artifact_rows(state)
    assert "REFUSED" in description and all(r["action"] == "keep" for r in rows)

    dry = prune_backups(
        backup_url=url, dry_run=True, return_state=True, policy=RetentionPolicy(keep_days=7)
    )
    assert dry.is_completed() and dry.result().refused
    assert object_names(destination) == before


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        # (the policy's own checks are covered one by one in test_retention_policy.py)
        (
            {"policy": RetentionPolicy(timezone="Europe/Atlantis")},
            "'Europe/Atlantis' is not a known time zone",
        ),
        ({"abort_uploads_older_than_hours": -2}, "still running"),
        # 0 would abort the upload of a backup running right now.
        ({"abort_uploads_older_than_hours": 0}, "abort_uploads_older_than_hours 0 would touch"),
    ],
)
def test_bad_policy_fails_in_one_line_and_deletes_nothing(prefect, tmp_path, parameters, message):
    url = str(tmp_path / "backups")
    destination = Destination.from_url(url)
    daily_backups(destination, 10)
    before = object_names(destination)
    state = prune_backups(backup_url=url, **parameters, return_state=True)
    assert state.is_failed()
    text = error_of(state)
    assert message in text and "\n" not in text
    assert object_names(destination) == before


def test_stale_incomplete_uploads_are_aborted_only_under_the_prefix(prefect, bucket, s3_client):
    url = f"s3://{bucket}/backups"
    destination = Destination.from_url(url, s3_options_from_env())
    daily_backups(destination, 2)
    ours = s3_client.create_multipart_upload(Bucket=bucket, Key="backups/ai_saas_x.sql.gz")
    s3_client.upload_part(
        Bucket=bucket, Key="backups/ai_saas_x.sql.gz", UploadId=ours["UploadId"],
        PartNumber=1, Body=b"x" * 1024,
    )  # fmt: skip
    other = s3_client.create_multipart_upload(Bucket=bucket, Key="elsewhere/big.bin")

    def pending() -> set[str]:
        uploads = s3_client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        return {u["UploadId"] for u in uploads}

    # moto 5.2 reports every upload as initiated at 2010-11-10T20:48:33Z, so "young" is
    # judged against a clock set just after that instant.
    (listed,) = s3_client.list_multipart_uploads(Bucket=bucket, Prefix="backups/")["Uploads"]
    initiated = listed["Initiated"]
    just_after = initiated + timedelta(hours=2)
    assert stale_incomplete_writes(destination, timedelta(hours=24), just_after) == []
    (found,) = stale_incomplete_writes(
        destination, timedelta(hours=24), just_after + timedelta(days=1)
    )
    assert found.upload_id == ours["UploadId"]

    kept = prune_backups(
        backup_url=url, abort_uploads_older_than_hours=None, policy=RetentionPolicy(keep_days=7)
    )
    assert kept.aborted_uploads == [] and pending() == {ours["UploadId"], other["UploadId"]}

    dry = prune_backups(
        backup_url=url,
        abort_uploads_older_than_hours=6,
        dry_run=True,
        policy=RetentionPolicy(keep_days=7),
    )
    assert dry.incomplete_uploads == ["backups/ai_saas_x.sql.gz"] and len(pending()) == 2

    done = prune_backups(
        backup_url=url, abort_uploads_older_than_hours=6, policy=RetentionPolicy(keep_days=7)
    )
    assert done.aborted_uploads == ["backups/ai_saas_x.sql.gz"]
    assert pending() == {other["UploadId"]}
    assert len(list_manifests(destination)) == 2


def test_stale_partial_files_in_a_local_directory_are_removed(prefect, tmp_path):
    url = str(tmp_path / "backups")
    destination = Destination.from_url(url)
    daily_backups(destination, 2)
    partial = tmp_path / "backups" / ".ai_saas_20250101_000000.sql.gz.partial-0123abcd"
    partial.write_bytes(b"half a dump")
    old = (datetime.now(UTC) - timedelta(days=2)).timestamp()
    young = prune_backups(
        backup_url=url, abort_uploads_older_than_hours=72, policy=RetentionPolicy(keep_days=7)
    )
    assert young.aborted_uploads == [] and partial.exists()
    os.utime(partial, (old, old))
    done = prune_backups(backup_url=url, policy=RetentionPolicy(keep_days=7))
    assert done.aborted_uploads == [partial.name] and not partial.exists()


class RecordingDestination(LocalDestination):
    """The real local destination, noting the order in which objects are deleted."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.deleted: list[str] = []

    def delete(self, name: str) -> None:
        self.deleted.append(name)
        super().delete(name)


def test_dump_goes_first_and_manifest_last_and_a_half_done_prune_is_finished(prefect, tmp_path):
    destination = RecordingDestination(str(tmp_path / "backups"))
    keep = make_backup(destination, "ai_saas", now() - HOUR)
    doomed = make_backup(
        destination, "ai_saas", now() - timedelta(days=9), verified=False, with_globals=True
    )
    inventory = take_inventory(destination)
    policy = RetentionPolicy.build(keep_days=7)
    plan = plan_retention([BackupInfo.from_manifest(m) for m in inventory.manifests], policy, now())
    assert [i.backup_id for i in plan.delete] == [doomed.backup_id]
    # A prune that dies after its first delete: the dump is gone, the rest is still there.
    destination.delete(doomed.dump.name)
    assert [m.backup_id for m in list_manifests(destination)] == [keep.backup_id]

    url = str(tmp_path / "backups")
    dry = prune_backups(backup_url=url, dry_run=True, policy=RetentionPolicy(keep_days=7))
    assert dry.leftovers == [
        doomed.globals.name,
        doomed.backup_id + VERIFIED_SUFFIX,
        doomed.manifest_name,
    ]
    again = prune_backups(backup_url=url, policy=RetentionPolicy(keep_days=7))
    assert again.deleted_objects == dry.leftovers
    assert object_names(destination) == backup_objects(keep)

    # The order on a whole backup: dump, globals, sidecar, manifest.
    second = make_backup(
        destination, "ai_saas", now() - timedelta(days=9), verified=False, with_globals=True
    )
    destination.deleted.clear()
    inventory = take_inventory(destination)
    plan = plan_retention([BackupInfo.from_manifest(m) for m in inventory.manifests], policy, now())
    apply_plan(destination, plan, inventory)
    assert destination.deleted == [
        second.dump.name,
        second.globals.name,
        second.backup_id + VERIFIED_SUFFIX,
        second.manifest_name,
    ]


def test_database_option_prunes_only_that_database(prefect, tmp_path):
    url = str(tmp_path / "backups")
    destination = Destination.from_url(url)
    app = daily_backups(destination, 5, database="app")
    billing = daily_backups(destination, 5, database="billing")
    result = prune_backups(backup_url=url, database="billing", policy=RetentionPolicy(keep_last=2))
    assert set(result.deleted_backups) == {b.backup_id for b in billing[2:]}
    assert {m.backup_id for m in list_manifests(destination, "app")} == {b.backup_id for b in app}


def test_cli_prune_dry_run_json_and_errors(prefect, tmp_path):
    url = str(tmp_path / "backups")
    destination = Destination.from_url(url)
    backups = daily_backups(destination, 6)
    before = object_names(destination)

    dry = invoke_dbops("prune", "--to", url, "--keep-last", "2", "--dry-run", "--json")
    assert dry.exit_code == 0, dry.output
    plan = json.loads(dry.stdout)
    assert [i["action"] for i in plan["items"]] == ["keep"] * 2 + ["delete"] * 4
    assert object_names(destination) == before

    bad = invoke_dbops("prune", "--to", url, "--keep-days", "-1.5")
    assert bad.exit_code == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error: --keep-days -1.5 is not allowed")
    assert object_names(destination) == before

    real = invoke_dbops("prune", "--to", url, "--keep-last", "2")
    assert real.exit_code == 0, real.output
    assert "deleted 4 backups" in real.stderr
    assert {m.backup_id for m in list_manifests(destination)} == {b.backup_id for b in backups[:2]}


def test_a_manifest_naming_objects_outside_its_backup_is_never_acted_on(prefect, tmp_path):
    url = str(tmp_path / "backups")
    destination = Destination.from_url(url)
    daily_backups(destination, 2)
    odd = make_backup(destination, "ai_saas", now() - timedelta(days=30))
    destination.write_bytes("notes.txt", b"someone's notes")
    dump = odd.dump.model_copy(update={"name": "notes.txt"})
    write_manifest(destination, odd.model_copy(update={"dump": dump}))
    result = prune_backups(backup_url=url, policy=RetentionPolicy(keep_days=7))
    assert result.deleted_backups == [] and result.deleted_objects == []
    assert {"notes.txt", odd.manifest_name, odd.dump.name} <= object_names(destination)


def test_listing_and_inventory_read_past_one_s3_page(bucket, s3_client):
    """S3 returns 1,000 keys a page: backups listed after 1,000 other objects are all found."""
    from concurrent.futures import ThreadPoolExecutor

    destination = Destination.from_url(f"s3://{bucket}/many", s3_options_from_env())
    with ThreadPoolExecutor(8) as pool:  # names sorting before every backup: the first page
        list(pool.map(lambda i: s3_client.put_object(
            Bucket=bucket, Key=f"many/0-notes-{i:04}.txt", Body=b"x"), range(1000)))  # fmt: skip
    start = now() - HOUR
    made = [
        make_backup(destination, "ai_saas", start - timedelta(hours=i), verified=i % 2 == 0)
        for i in range(12)
    ]
    assert len(destination.list()) == 1000 + 12 * 3
    listed = list_manifests(destination, "ai_saas")
    assert [m.backup_id for m in listed] == [m.backup_id for m in made]  # newest first
    assert [bool(m.verification and m.verification.ok) for m in listed] == [
        i % 2 == 0 for i in range(12)
    ]
    inventory = take_inventory(destination, "ai_saas")
    assert [m.backup_id for m in inventory.manifests] == [m.backup_id for m in made]
    assert len(inventory.ignored) == 1000 and not inventory.unreadable

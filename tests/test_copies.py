"""Second copies: streamed and checked against the manifest, manifest last, recorded; restore
from the copy; where each backup exists; retention per destination (moto S3, real Prefect)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from flows.backup import backup_database
from flows.copy import copy_backups
from flows.prune import prune_backups
from flows.restore import restore_database
from tasks.backup.manifest import list_manifests
from tasks.copies.records import COPY_MARK
from tasks.copies.transfer import copy_backup
from tasks.core.postgres import ConnInfo
from tasks.core.settings import s3_options_from_env
from tasks.retention.policy import RetentionPolicy
from tasks.storage.destinations import Destination
from tests.backup_helpers import invoke_dbops, make_backup, object_names
from tests.conftest import content_checksums, new_database


def small_db(pg) -> str:
    url = new_database(pg, "copies")
    with ConnInfo.parse(url).connect() as conn:
        conn.execute("CREATE TABLE note(id int PRIMARY KEY, body text)")
        conn.execute("INSERT INTO note SELECT g, md5(g::text) FROM generate_series(1, 500) g")
    return url


def s3_place(bucket: str, prefix: str = "backups") -> tuple[str, Destination]:
    url = f"s3://{bucket}/{prefix}"
    return url, Destination.from_url(url, s3_options_from_env())


def old_backups(destination: Destination, count: int):
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    return [make_backup(destination, "ai_saas", start - timedelta(days=i)) for i in range(count)]


def test_copy_to_a_directory_and_a_second_bucket_then_list_shows_both(
    prefect, bucket, s3_client, tmp_path
):
    url, source = s3_place(bucket)
    backups = old_backups(source, 2)
    second = f"copy-{bucket}"
    s3_client.create_bucket(Bucket=second)
    copy_url, copy_dest = s3_place(second, "offsite")
    local = tmp_path / "usb"

    for target in (str(local), copy_url):
        state = copy_backups(copy_to=target, backup_url=url, return_state=True)
        assert state.is_completed(), state.message
        assert sorted(state.result().copied) == sorted(b.backup_id for b in backups)

    local_dest = Destination.from_url(str(local))
    for manifest in backups:
        names = [manifest.dump.name, manifest.manifest_name]
        for target in (local_dest, copy_dest):
            for name in names:
                assert target.read_bytes(name) == source.read_bytes(name)
    assert not any(COPY_MARK in n for n in object_names(copy_dest) | object_names(local_dest))

    again = copy_backup(source, copy_dest, backups[0])  # the same place again: nothing copied
    assert again.already_there and again.record.destination == copy_dest.url

    result = invoke_dbops("list", "--to", url, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    for row in rows:
        places = {p["destination"]: p["present"] for p in row["locations"]}
        assert places == {source.url: True, local_dest.url: True, copy_dest.url: True}

    # The second bucket's own retention (keep 1) leaves the source untouched; list notices.
    pruned = invoke_dbops("prune", "--from", copy_url, "--keep-last", "1", "--json")
    assert pruned.exit_code == 0, pruned.output
    assert json.loads(pruned.stdout)["deleted_backups"] == [backups[1].backup_id]
    assert backups[1].manifest_name in object_names(source)
    rows = json.loads(invoke_dbops("list", "--to", url, "--json").stdout)
    present = {
        r["backup_id"]: {p["destination"]: p["present"] for p in r["locations"]} for r in rows
    }
    assert present[backups[1].backup_id][copy_dest.url] is False
    assert present[backups[0].backup_id][copy_dest.url] is True


def test_a_flipped_byte_at_the_source_is_caught_and_nothing_looks_complete(prefect, tmp_path):
    source = Destination.from_url(str(tmp_path / "src"))
    (manifest,) = old_backups(source, 1)
    dump = bytearray(source.read_bytes(manifest.dump.name))
    dump[len(dump) // 2] ^= 0x01
    source.write_bytes(manifest.dump.name, bytes(dump))
    target = tmp_path / "dst"

    state = copy_backups(
        copy_to=str(target), backup_url=str(tmp_path / "src"), return_state=True, retries=0
    )

    assert state.is_failed()
    assert "SHA-256" in state.message and manifest.backup_id in state.message
    left = {p.name for p in target.iterdir()} if target.exists() else set()
    assert manifest.manifest_name not in left and manifest.dump.name not in left
    assert not any(COPY_MARK in n for n in object_names(source))


def test_copy_onto_its_own_source_is_refused_in_one_line(prefect, bucket, tmp_path):
    url, source = s3_place(bucket)
    old_backups(source, 1)
    before = object_names(source)
    result = invoke_dbops("copy", "--from", url, "--to", url + "/", "latest")
    assert result.exit_code == 1
    assert "is where the backups already are" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert object_names(source) == before


def test_backup_with_copy_to_then_restore_from_the_copy(prefect, pg, tmp_path):
    db = small_db(pg)
    primary, usb = tmp_path / "primary", tmp_path / "usb"
    state = backup_database(
        database_url=db, backup_url=str(primary), copy_to=[str(usb)], return_state=True
    )
    assert state.is_completed(), state.message
    manifest = state.result()
    assert {manifest.dump.name, manifest.manifest_name} <= {p.name for p in usb.iterdir()}
    # The copy alone restores: the primary is gone.
    for path in primary.iterdir():
        if not path.name.endswith(".json"):
            path.unlink()
    target = new_database(pg, "fromcopy")
    state = restore_database(
        source="latest",
        database_url=target,
        backup_url=str(usb),
        from_database=manifest.database,
        clean=True,
        return_state=True,
    )
    assert state.is_completed(), state.message
    assert content_checksums(target) == content_checksums(db)


def test_backup_refuses_a_copy_to_its_own_destination_before_dumping(prefect, pg, tmp_path):
    db = small_db(pg)
    where = tmp_path / "primary"
    state = backup_database(
        database_url=db, backup_url=str(where), copy_to=[str(where)], return_state=True
    )
    assert state.is_failed()
    assert "is where the backups already are" in state.message
    assert not where.exists() or not list(where.iterdir())


def lock_bucket(s3_client, name: str) -> str:
    s3_client.create_bucket(Bucket=name, ObjectLockEnabledForBucket=True)
    return name


def test_locked_backup_and_its_copy_lock_every_object(prefect, pg, s3_client, bucket):
    db = small_db(pg)
    primary = lock_bucket(s3_client, f"lock-{bucket}")
    offsite = lock_bucket(s3_client, f"lockcopy-{bucket}")
    started = datetime.now(UTC)
    state = backup_database(
        database_url=db,
        backup_url=f"s3://{primary}/b",
        copy_to=[f"s3://{offsite}/c"],
        object_lock="governance",
        object_lock_days=2,
        return_state=True,
    )
    assert state.is_completed(), state.message
    manifest = state.result()
    own = {".sql.gz", ".started.json", ".manifest.json"}
    for name, prefix, records in ((primary, "b/", 1), (offsite, "c/", 0)):
        keys = [o["Key"] for o in s3_client.list_objects_v2(Bucket=name)["Contents"]]
        assert all(k.startswith(prefix + manifest.backup_id + ".") for k in keys), keys
        suffixes = [k.removeprefix(prefix + manifest.backup_id) for k in keys]
        assert own <= set(suffixes)
        assert len([s for s in suffixes if s.startswith(COPY_MARK)]) == records
        assert len(keys) == len(own) + records, keys
        for key in keys:
            head = s3_client.head_object(Bucket=name, Key=key)
            assert head["ObjectLockMode"] == "GOVERNANCE", key
            until = head["ObjectLockRetainUntilDate"]
            assert timedelta(days=2) <= until - started < timedelta(days=2, minutes=10), key


def test_a_bucket_without_object_lock_is_refused_before_anything_is_written(
    prefect, pg, bucket, s3_client
):
    db = small_db(pg)
    result = invoke_dbops(
        "backup",
        "--to",
        f"s3://{bucket}/b",
        "--object-lock",
        "compliance",
        "--object-lock-days",
        "7",
        env={"DATABASE_URL": db},
    )
    assert result.exit_code == 1
    assert "does not have Object Lock enabled" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "Contents" not in s3_client.list_objects_v2(Bucket=bucket)
    missing_days = invoke_dbops("backup", "--object-lock", "governance", env={"DATABASE_URL": db})
    assert missing_days.exit_code == 1 and "--object-lock-days" in missing_days.output


def test_prune_keeps_locked_backups_and_reports_what_s3_refused(prefect, s3_client, bucket):
    from tasks.retention.inventory import apply_plan, take_inventory
    from tasks.retention.plan import BackupInfo, plan_retention

    name = lock_bucket(s3_client, f"prune-{bucket}")
    url = f"s3://{name}/b"
    plain = Destination.from_url(url, s3_options_from_env())
    locked = Destination.from_url(
        url, s3_options_from_env().merged(object_lock="governance", object_lock_days=1)
    )
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    newest = make_backup(plain, "ai_saas", start)
    held = [make_backup(locked, "ai_saas", start - timedelta(days=d)) for d in (1, 2)]
    doomed = make_backup(plain, "ai_saas", start - timedelta(days=3))

    # Without the plan's look at the locks, S3 refuses; the refusal is reported, not a deletion.
    inventory = take_inventory(plain)
    blind = plan_retention(
        [BackupInfo.from_manifest(m) for m in inventory.manifests],
        RetentionPolicy(keep_last=1, min_keep=1).resolved(),
        datetime.now(UTC),
    )
    assert {i.backup_id for i in blind.delete} == {*(m.backup_id for m in held), doomed.backup_id}
    refused = apply_plan(plain, blind.model_copy(deep=True), inventory)
    assert refused.deleted_backups == [doomed.backup_id]
    assert sorted(r.split(":")[0] for r in refused.locked) == sorted(m.backup_id for m in held)
    assert all("locked until" in r for r in refused.locked)

    state = prune_backups(
        backup_url=url, policy=RetentionPolicy(keep_last=1, min_keep=1), return_state=True
    )
    assert state.is_completed(), state.message
    report = state.result()
    assert report.deleted_backups == [] and report.locked == []
    reasons = {i.backup_id: i.reason for i in report.items}
    for manifest in held:
        assert reasons[manifest.backup_id].startswith("locked until ")
    listed = {m.backup_id for m in list_manifests(plain)}
    assert listed == {newest.backup_id, *(m.backup_id for m in held)}


def test_check_requires_checked_copies_of_the_newest_verified_backup(prefect, tmp_path):
    from flows.check import backup_freshness

    source = Destination.from_url(str(tmp_path / "src"))
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    verified = make_backup(source, "ai_saas", start, verified=True)

    state = backup_freshness(backup_url=str(tmp_path / "src"), min_copies=1, return_state=True)
    assert state.is_failed()
    assert f"{verified.backup_id} has 0 checked copies elsewhere, 1 required" in state.message

    copy_backup(source, Destination.from_url(str(tmp_path / "usb")), verified)
    report = backup_freshness(backup_url=str(tmp_path / "src"), min_copies=1)
    assert report.ok and report.databases[0].copies == 1


def test_lock_date_rounds_up_to_the_whole_second_stores_keep():
    from tasks.storage.object_lock import lock_args

    now = datetime(2026, 11, 25, 5, 24, 4, 62303, tzinfo=UTC)
    until = lock_args("governance", 2, now)["ObjectLockRetainUntilDate"]
    assert until == datetime(2026, 11, 27, 5, 24, 5, tzinfo=UTC)
    whole = lock_args("compliance", 1, now.replace(microsecond=0))["ObjectLockRetainUntilDate"]
    assert whole == datetime(2026, 11, 26, 5, 24, 4, tzinfo=UTC)

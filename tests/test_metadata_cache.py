"""The metadata cache: a second listing of a destination reads only what changed since the
first (GETs counted on moto's S3 server), a replaced or broken object is read again, a corrupt
cache is rebuilt, DBOPS_CACHE_DIR=off reads everything, and prune deletes what it planned."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from flows.prune import prune_backups
from tasks.backup.manifest import (
    VERIFIED_SUFFIX,
    Verification,
    list_manifests,
    write_manifest,
)
from tasks.copies.locations import backup_locations
from tasks.copies.records import CopyRecord
from tasks.core.settings import Settings, metadata_cache_dir
from tasks.retention.inventory import take_inventory
from tasks.retention.plan import PRE_MIGRATION
from tasks.retention.policy import RetentionPolicy
from tasks.storage.destinations import Destination, S3Destination
from tests.backup_helpers import backup_objects, make_backup, object_names


def count_gets(destination: S3Destination) -> list[str]:
    """Every GetObject this destination's client sends, by key (a botocore event hook)."""
    gets: list[str] = []
    destination.client.meta.events.register(
        "before-call.s3.GetObject", lambda params, **_: gets.append(params["url_path"])
    )
    return gets


def backups(destination: Destination, count: int) -> list:
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    return [
        make_backup(destination, "ai_saas", start - timedelta(days=i), verified=i % 2 == 0 or None)
        for i in range(count)
    ]


def cache_names(directory: Path) -> set[str]:
    (path,) = directory.glob("*.jsonl")
    lines = path.read_text().splitlines()
    return {json.loads(line)["name"] for line in lines[1:]}


def test_second_listing_reads_only_what_changed(bucket, tmp_path, monkeypatch):
    monkeypatch.setenv("DBOPS_CACHE_DIR", str(tmp_path / "cache"))
    url = f"s3://{bucket}/backups"
    destination = Settings.load(None, url).destination()
    assert isinstance(destination, S3Destination)
    made = backups(destination, 4)  # 4 manifests, 2 verification records
    record = CopyRecord(
        backup_id=made[0].backup_id, destination="/elsewhere", copied_at=made[0].finished_at,
        objects=[made[0].dump.name],
    )  # fmt: skip
    destination.write_bytes(record.name, record.model_dump_json().encode())
    gets = count_gets(destination)

    first = list_manifests(destination, "ai_saas")
    assert len(gets) == 6
    assert all(obj.etag for obj in destination.list())
    places = backup_locations(destination, first)
    assert len(gets) == 7 and places[made[0].backup_id][1].destination == "/elsewhere"

    gets.clear()
    second = list_manifests(destination, "ai_saas")
    inventory = take_inventory(destination, "ai_saas")  # strict reads, from the cache too
    assert backup_locations(destination, second) == places
    assert gets == []
    assert [m.model_dump() for m in second] == [m.model_dump() for m in first]
    assert [m.model_dump() for m in inventory.manifests] == [m.model_dump() for m in first]
    assert [bool(m.verification and m.verification.ok) for m in second] == [
        True, False, True, False,
    ]  # fmt: skip

    # Replaced under the same name (a new ETag): read again, the new content wins.
    changed = made[1].model_copy(update={"labels": ["replaced"]})
    write_manifest(destination, changed)
    failed = Verification(verified_at=made[0].finished_at, ok=False, detail="restore failed")
    destination.write_bytes(made[0].backup_id + VERIFIED_SUFFIX, failed.model_dump_json().encode())
    third = list_manifests(destination, "ai_saas")
    assert sorted(gets) == sorted(
        f"/backups/{n}" for n in (changed.manifest_name, made[0].backup_id + VERIFIED_SUFFIX)
    )
    assert third[1].labels == ["replaced"] and third[0].verification.ok is False

    # Broken in place: a cached good copy never hides it; prune's reading protects its id.
    gets.clear()
    destination.write_bytes(made[2].manifest_name, b'{"backup_id": "trunc')
    assert [m.backup_id for m in list_manifests(destination, "ai_saas")] == [
        made[0].backup_id, made[1].backup_id, made[3].backup_id,
    ]  # fmt: skip
    assert take_inventory(destination, "ai_saas").unreadable == [made[2].manifest_name]
    assert len(gets) == 1  # read once: its broken bytes are cached as they are, and fail again

    # A deleted backup's entries leave the cache when it is next written.
    for name in backup_objects(made[3]):
        destination.delete(name)
    assert made[3].manifest_name in cache_names(tmp_path / "cache")
    list_manifests(destination, "ai_saas")
    assert made[3].manifest_name not in cache_names(tmp_path / "cache")
    assert (tmp_path / "cache").stat().st_mode & 0o077 == 0


def test_corrupt_cache_is_rebuilt_and_off_reads_everything(bucket, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("DBOPS_CACHE_DIR", str(cache))
    destination = Settings.load(None, f"s3://{bucket}/b").destination()
    assert isinstance(destination, S3Destination)
    made = backups(destination, 3)
    gets = count_gets(destination)
    expected = [m.backup_id for m in made]
    assert [m.backup_id for m in list_manifests(destination)] == expected
    assert len(gets) == 5
    (path,) = cache.glob("*.jsonl")
    for garbage in (b"\x00\xffnot json", path.read_bytes()[:-40], b""):
        path.write_bytes(garbage)
        gets.clear()
        assert [m.backup_id for m in list_manifests(destination)] == expected
        assert len(gets) == 5  # everything read again
        gets.clear()
        assert [m.backup_id for m in list_manifests(destination)] == expected
        assert gets == []  # and the rebuilt cache answers the next listing

    for off in ("off", ""):
        monkeypatch.setenv("DBOPS_CACHE_DIR", off)
        assert metadata_cache_dir() is None and Settings.from_env().cache_dir is None
        for _ in range(2):
            gets.clear()
            assert [m.backup_id for m in list_manifests(destination)] == expected
            assert len(gets) == 5
    monkeypatch.delenv("DBOPS_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert metadata_cache_dir() == tmp_path / "xdg" / "dbops"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert Settings.from_env().cache_dir == str(tmp_path / "home" / ".cache" / "dbops")


def test_local_directory_changed_files_are_read_again(tmp_path, monkeypatch):
    monkeypatch.setenv("DBOPS_CACHE_DIR", str(tmp_path / "cache"))
    destination = Destination.from_url(str(tmp_path / "backups"))
    made = backups(destination, 2)
    assert [m.labels for m in list_manifests(destination)] == [[], []]
    assert cache_names(tmp_path / "cache") >= {m.manifest_name for m in made}
    write_manifest(destination, made[0].model_copy(update={"labels": ["replaced"]}))
    (tmp_path / "backups" / made[1].manifest_name).write_text("{}")  # same inode, rewritten
    listed = list_manifests(destination)
    assert [m.backup_id for m in listed] == [made[0].backup_id]
    assert listed[0].labels == ["replaced"]


def test_prune_with_a_cached_inventory_deletes_exactly_what_it_planned(
    prefect, bucket, tmp_path, monkeypatch
):
    monkeypatch.setenv("DBOPS_CACHE_DIR", str(tmp_path / "cache"))
    url = f"s3://{bucket}/backups"
    destination = Settings.load(None, url).destination()
    made = backups(destination, 6)
    policy = RetentionPolicy(keep_last=2)

    dry = prune_backups(backup_url=url, dry_run=True, policy=policy, return_state=True).result()
    predicted = {i.backup_id for i in dry.items if i.action == "delete"}
    assert predicted == {m.backup_id for m in made[2:]}
    # After the dry run filled the cache: one planned deletion becomes a pre-migration backup
    # (kept), another's manifest becomes unreadable (its id is never touched).
    write_manifest(destination, made[2].model_copy(update={"labels": [PRE_MIGRATION]}))
    destination.write_bytes(made[3].manifest_name, b"not a manifest")
    before = object_names(destination)

    real = prune_backups(backup_url=url, policy=policy, return_state=True).result()
    assert set(real.deleted_backups) == {m.backup_id for m in made[4:]}
    deleted = set().union(*(backup_objects(m) for m in made[4:])) | {
        m.backup_id + VERIFIED_SUFFIX for m in made[4:] if m.backup_id + VERIFIED_SUFFIX in before
    }
    assert set(real.deleted_objects) == deleted
    assert object_names(destination) == before - deleted
    assert real.unreadable == [made[3].manifest_name]
    assert {m.manifest_name for m in made[:4]} <= cache_names(tmp_path / "cache")

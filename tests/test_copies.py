"""Second copies: streamed and checked against the manifest, manifest last, recorded; restore
from the copy; where each backup exists; retention per destination (moto S3, real Prefect)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from flows.backup import backup_database
from flows.copy import copy_backups
from flows.prune import prune_backups
from flows.restore import restore_database
from tasks.copies.records import COPY_MARK
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

    again = copy_backups(copy_to=copy_url, backup_url=url, backup_id="latest")
    assert again.copied == [] and again.already_there == [backups[0].backup_id]

    result = invoke_dbops("list", "--to", url, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    for row in rows:
        places = {p["destination"]: p["present"] for p in row["locations"]}
        assert places == {source.url: True, local_dest.url: True, copy_dest.url: True}

    # The second bucket's own retention (keep 1) leaves the source untouched; list notices.
    state = prune_backups(
        backup_url=copy_url, policy=RetentionPolicy(keep_last=1, min_keep=1), return_state=True
    )
    assert state.is_completed(), state.message
    assert state.result().deleted_backups == [backups[1].backup_id]
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

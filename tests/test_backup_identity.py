"""Identity, ids, clocks and unreadable objects over real servers (PostgreSQL 18 and 15),
moto's S3 server and the Prefect harness."""

from __future__ import annotations

import json
import os
import threading
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from psycopg import sql

from flows.prune import prune_backups
from flows.verify import verify_backup
from tasks.backup import pipeline
from tasks.backup.catalog import choose_latest
from tasks.backup.claim import Claim, claim_backup_id
from tasks.backup.identity import identify_server
from tasks.backup.manifest import VERIFIED_SUFFIX, list_manifests
from tasks.backup.pipeline import BackupRequest, run_backup
from tasks.core.errors import ParameterError
from tasks.core.postgres import ConnInfo
from tasks.core.settings import s3_options_from_env
from tasks.retention.freshness import assess_freshness
from tasks.retention.plan import BackupInfo
from tasks.retention.policy import RetentionPolicy
from tasks.storage.destinations import Destination
from tests.backup_helpers import (
    invoke_dbops,
    location,
    make_backup,
    object_names,
)
from tests.conftest import psql

HOUR = timedelta(hours=1)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def same_database(name: str, *clusters) -> list[str]:
    urls = []
    for cluster in clusters:
        with ConnInfo.parse(cluster.url("postgres", password="")).connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = cluster.url(name, password="")
        psql(url, "-q", input="CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2);")
        urls.append(url)
    return urls


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_concurrent_claims_of_one_second_get_distinct_ids(kind, tmp_path, request):
    _, destination = location(kind, tmp_path, request)
    when = now()
    claims: list[Claim] = []

    def claim() -> None:
        claims.append(claim_backup_id(destination, "app", when, [".sql.gz"], None))

    threads = [threading.Thread(target=claim) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    ids = sorted(c.backup_id for c in claims)
    stamp = when.strftime("%Y%m%d_%H%M%S")
    assert ids == sorted([f"app_{stamp}"] + [f"app_{stamp}-{n}" for n in range(2, 7)])
    assert {c.name for c in claims} <= object_names(destination)


class FrozenClock(datetime):
    """Every backup starts in the same second."""

    frozen = datetime(2025, 1, 1, 12, tzinfo=UTC)

    @classmethod
    def now(cls, tz=None):  # type: ignore[override]
        return cls.frozen


def test_backups_in_the_same_second_and_lookalike_names_never_share_objects(
    pg, tmp_path, monkeypatch
):
    suffix = uuid.uuid4().hex[:6]
    first, second = same_database(f"a b{suffix}", pg)[0], same_database(f"a_b{suffix}", pg)[0]
    destination = Destination.from_url(str(tmp_path / "backups"))
    monkeypatch.setattr(pipeline, "datetime", FrozenClock)
    manifests = [
        run_backup(BackupRequest(conn=ConnInfo.parse(url), destination=destination))
        for url in (first, first, second, second)
    ]
    ids = [m.backup_id for m in manifests]
    assert len(set(ids)) == 4, ids
    assert ids[1] == ids[0] + "-2" and ids[3] == ids[2] + "-2"
    listed = list_manifests(destination)
    assert sorted(m.backup_id for m in listed) == sorted(ids)
    for manifest in manifests:  # every dump is its own, intact
        data = destination.read_bytes(manifest.dump.name)
        assert len(data) == manifest.dump.size


def test_two_servers_with_one_database_name_are_listed_and_chosen_apart(
    prefect, pg, pg15, bucket, monkeypatch
):
    name = f"app_{uuid.uuid4().hex[:6]}"
    on18, on15 = same_database(name, pg, pg15)
    url = f"s3://{bucket}/shared"
    destination = Destination.from_url(url, s3_options_from_env())
    m18 = run_backup(BackupRequest(conn=ConnInfo.parse(on18), destination=destination))
    m15 = run_backup(BackupRequest(conn=ConnInfo.parse(on15), destination=destination))
    id18, id15 = (identify_server(ConnInfo.parse(u)).key for u in (on18, on15))
    assert id18 != id15 and id18.isdigit()
    assert m18.server and m18.server.system_identifier == id18
    assert m18.server.port == str(pg.port) and m18.server.host == "127.0.0.1"
    assert "password" not in m18.to_json() and pg.password not in m18.to_json()

    listed = invoke_dbops("list", "--to", url, "--json")
    assert listed.exit_code == 0, listed.output
    assert {(r["server"], r["database"]) for r in json.loads(listed.stdout)} == {
        (id18, name),
        (id15, name),
    }
    # `latest` into a server with its own backups: that server's; else refused until chosen.
    assert choose_latest(destination, name, home=ConnInfo.parse(on15)).backup_id == m15.backup_id
    assert choose_latest(destination, name, home=ConnInfo.parse(on18)).backup_id == m18.backup_id
    with pytest.raises(ParameterError) as refused:
        choose_latest(destination, name)
    text = str(refused.value)
    assert refused.value.parameter == "from_server" and "\n" not in text
    assert id18 in text and id15 in text and m15.backup_id in text
    assert choose_latest(destination, name, from_server=id15).backup_id == m15.backup_id

    monkeypatch.setenv("VERIFY_DATABASE_URL", pg.url("postgres", password=""))
    state = verify_backup(backup_url=url, database=name, return_state=True, retries=0)
    assert state.is_failed() and "from_server" in str(state.result(raise_on_failure=False))
    result = verify_backup(backup_url=url, database=name, from_server=id15)
    assert result.ok and result.backup_id == m15.backup_id

    backups = [BackupInfo.from_manifest(m) for m in list_manifests(destination)]
    rows = assess_freshness(backups, datetime.now(UTC), 192).databases
    assert {(r.server, r.ok) for r in rows} == {(id18, False), (id15, True)}


def test_old_manifests_without_identity_still_list_and_restore(prefect, tmp_path):
    destination = Destination.from_url(str(tmp_path / "backups"))
    old = make_backup(destination, "app", now() - 2 * HOUR)
    assert choose_latest(destination, "app").backup_id == old.backup_id
    (row,) = json.loads(invoke_dbops("list", "--to", destination.url, "--json").stdout)
    assert row["server"] == "unknown" and row["in_the_future"] is False


def test_a_future_dated_backup_is_flagged_never_latest_and_stops_the_prune(prefect, tmp_path):
    url = str(tmp_path / "backups")
    destination = Destination.from_url(url)
    daily = [make_backup(destination, "app", now() - HOUR - timedelta(days=i)) for i in range(9)]
    ahead = make_backup(destination, "app", now() + 6 * HOUR)
    assert choose_latest(destination, "app").backup_id == daily[0].backup_id

    listed = invoke_dbops("list", "--to", url)
    line = next(
        x for x in listed.stderr.splitlines() + listed.stdout.splitlines() if ahead.backup_id in x
    )
    assert "FUTURE-DATED" in line

    before = object_names(destination)
    state = prune_backups(backup_url=url, policy=RetentionPolicy(keep_days=3), return_state=True)
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert message.startswith("prune refused, nothing deleted:") and ahead.backup_id in message
    assert object_names(destination) == before


def test_unreadable_objects_are_never_deleted_and_fail_the_prune_closed(prefect, tmp_path):
    url = str(tmp_path / "backups")
    destination = Destination.from_url(url)
    for i in range(3):
        make_backup(destination, "app", now() - HOUR - timedelta(days=i), verified=True)
    old = make_backup(destination, "app", now() - timedelta(days=30), verified=True)
    edited = make_backup(destination, "app", now() - timedelta(days=31), verified=True)
    destination.write_bytes(edited.manifest_name, b'{"format_version": 99, "edited": ')
    result = prune_backups(backup_url=url, policy=RetentionPolicy(keep_days=7))
    assert old.backup_id in result.deleted_backups
    assert result.unreadable == [edited.manifest_name]
    assert {edited.manifest_name, edited.dump.name, edited.backup_id + VERIFIED_SUFFIX} <= (
        object_names(destination)
    )  # its sidecar is no orphan

    doomed = make_backup(destination, "app", now() - timedelta(days=40), verified=True)
    destination.write_bytes(doomed.backup_id + VERIFIED_SUFFIX, b"not json")
    before = object_names(destination)
    state = prune_backups(backup_url=url, policy=RetentionPolicy(keep_days=7), return_state=True)
    assert state.is_failed()
    assert "verification record" in str(state.result(raise_on_failure=False))
    assert object_names(destination) == before


def test_what_a_killed_run_left_is_cleaned_after_the_threshold_even_when_refused(prefect, tmp_path):
    url = str(tmp_path / "backups")
    destination = Destination.from_url(url)
    # Every backup is 9 days old: the plan is refused (backups failing).
    make_backup(destination, "app", now() - timedelta(days=9))
    killed = claim_backup_id(destination, "app", now() - timedelta(days=2), [".sql.gz"], None)
    destination.write_bytes(killed.objects[0], b"a dump whose manifest never came")
    running = claim_backup_id(destination, "app", now(), [".sql.gz"], None)
    old = (datetime.now(UTC) - timedelta(days=2)).timestamp()
    for name in (killed.name, killed.objects[0]):
        os.utime(tmp_path / "backups" / name, (old, old))

    dry = prune_backups(backup_url=url, dry_run=True, policy=RetentionPolicy(keep_days=7))
    assert dry.refused and dry.abandoned == [killed.objects[0], killed.name]
    state = prune_backups(backup_url=url, policy=RetentionPolicy(keep_days=7), return_state=True)
    assert state.is_failed() and "cleaned 2 objects" in str(state.result(raise_on_failure=False))
    remaining = object_names(destination)
    assert killed.name not in remaining and killed.objects[0] not in remaining
    assert running.name in remaining  # a running backup is never touched


def test_verify_on_a_separate_server_lacking_the_roles(prefect, pg, pg15, tmp_path, passfile):
    suffix = uuid.uuid4().hex[:6]
    owner, reader = f"owner_{suffix}", f"reader_{suffix}"
    (source,) = same_database(f"app_{suffix}", pg15)
    psql(
        pg15.url("postgres", password=""), "-q",
        input=f"CREATE ROLE {owner} NOLOGIN; CREATE ROLE {reader} NOLOGIN;",
    )  # fmt: skip
    psql(source, "-q", input=f"ALTER TABLE t OWNER TO {owner}; GRANT SELECT ON t TO {reader};")
    url = str(tmp_path / "backups")
    destination = Destination.from_url(url)
    manifest = run_backup(BackupRequest(conn=ConnInfo.parse(source), destination=destination))
    assert {owner, reader} <= set(manifest.roles)

    # A verify server (PostgreSQL 18) where dbops may create databases but not roles.
    verifier = f"verifier_{suffix}"
    psql(
        pg.url("postgres", password=""), "-q",
        input=f"CREATE ROLE {verifier} LOGIN CREATEDB PASSWORD 'pw-{suffix}';",
    )  # fmt: skip
    with open(passfile, "a") as handle:
        handle.write(f"127.0.0.1:{pg.port}:*:{verifier}:pw-{suffix}\n")
    limited = pg.url("postgres", user=verifier, password="")
    state = verify_backup(
        source=manifest.backup_id, backup_url=url, verify_database_url=limited,
        retries=0, return_state=True,
    )  # fmt: skip
    assert state.is_failed()
    message = str(state.result(raise_on_failure=False))
    assert "lacks the roles" in message and owner in message and "FAILED" not in message
    assert manifest.backup_id + VERIFIED_SUFFIX not in object_names(destination)

    good = verify_backup(
        source=manifest.backup_id, backup_url=url,
        verify_database_url=pg.url("postgres", password=""),
    )  # fmt: skip
    assert good.ok and {owner, reader} <= set(good.roles_created)
    psql(pg.url("postgres", password=""), "-q", input=f"DROP ROLE {owner}; DROP ROLE {reader};")
    again = verify_backup(
        source=manifest.backup_id, backup_url=url, verify_database_url=limited,
        retries=0, return_state=True,
    )  # fmt: skip
    assert again.is_failed()
    record = json.loads(destination.read_bytes(manifest.backup_id + VERIFIED_SUFFIX))
    assert record["ok"] is True  # the good record is not overwritten

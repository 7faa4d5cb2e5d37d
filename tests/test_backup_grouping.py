"""Whose backups: (server, database) groups, future-dated backups, ids that never collide.

Pure functions only (no server); the flows over real servers are in test_backup_identity.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tasks.backup.manifest import BACKUP_ID, encode_database, new_backup_id
from tasks.retention.freshness import assess_freshness
from tasks.retention.plan import BackupInfo, plan_retention
from tasks.retention.policy import RetentionPolicy

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)
PROD, STAGING = "7400000000000000001", "7400000000000000002"


def info(db: str, hours: float, server: str = PROD, verified: bool | None = True) -> BackupInfo:
    when = NOW - timedelta(hours=hours)
    return BackupInfo(f"{db}_{when:%Y%m%d_%H%M%S}_{server[-1]}", db, when, (), verified, server)


def test_two_servers_with_the_same_database_are_planned_apart():
    # Staging's dumps of `app` stopped ten days ago; production's are fine. By name alone,
    # production's successes hid staging's failure and staging's backups were pruned.
    prod = [info("app", 2 + 24 * i, PROD) for i in range(10)]
    staging = [info("app", 240 + 24 * i, STAGING) for i in range(5)]
    plan = plan_retention(prod + staging, RetentionPolicy.build(keep_days=7), NOW)
    assert plan.refused and staging[0].backup_id in plan.refused and plan.delete == []
    items = {i.backup_id: i for i in plan.items}
    assert items[staging[0].backup_id].server == STAGING
    assert items[prod[0].backup_id].rules == ["newest", "newest verified", "younger than 7d"]
    assert items[staging[0].backup_id].rules[0] == "newest"  # each server has its newest

    both_fresh = [info("app", 1 + 24 * i, STAGING) for i in range(4)]
    plan = plan_retention(prod + both_fresh, RetentionPolicy.build(keep_last=2), NOW)
    kept = {i.backup_id for i in plan.keep}
    assert kept == {b.backup_id for b in (*prod[:2], *both_fresh[:2])}


def test_backups_from_before_identities_join_the_one_server_of_their_database():
    legacy = [info("app", 24 * (8 + i), "unknown") for i in range(3)]
    current = [info("app", 2 + 24 * i, PROD) for i in range(5)]
    plan = plan_retention(legacy + current, RetentionPolicy.build(keep_days=7), NOW)
    assert not plan.refused
    assert {i.backup_id for i in plan.delete} == {b.backup_id for b in legacy}
    # With two identified servers they stay apart, but never stop the prune as "stale".
    other = [info("app", 3 + 24 * i, STAGING) for i in range(2)]
    plan = plan_retention(legacy + current + other, RetentionPolicy.build(keep_days=7), NOW)
    assert not plan.refused
    report = assess_freshness(legacy + current + other, NOW, 48)
    assert [(d.server, d.database) for d in report.databases] == [
        (PROD, "app"),
        (STAGING, "app"),
    ]


def test_a_backup_dated_in_the_future_is_never_newest_and_stops_the_prune():
    backups = [info("app", 24 * i) for i in range(10)]
    ahead = info("app", -5)  # five hours ahead of this clock
    plan = plan_retention([*backups, ahead], RetentionPolicy.build(keep_days=3), NOW)
    assert plan.delete == []
    assert plan.refused and ahead.backup_id in plan.refused and "clock" in plan.refused
    items = {i.backup_id: i for i in plan.items}
    assert items[ahead.backup_id].rules == ["dated in the future"]
    assert "newest" in items[backups[0].backup_id].rules
    # Within the tolerance it is an ordinary newest backup.
    slightly = info("app", -0.5)
    plan = plan_retention([*backups, slightly], RetentionPolicy.build(keep_days=3), NOW)
    assert (
        not plan.refused
        and "newest" in {i.backup_id: i for i in plan.items}[slightly.backup_id].rules
    )


def test_a_future_backup_is_never_fresh():
    stale = [info("app", 300, verified=True)]
    ahead = info("app", -48, verified=True)
    report = assess_freshness([*stale, ahead], NOW, 192)
    (row,) = report.databases
    assert not report.ok and row.newest == stale[0].backup_id
    assert row.newest_verified == stale[0].backup_id
    assert ahead.backup_id in row.problem and "clock" in row.problem


def test_different_database_names_never_share_an_id():
    names = ["a b", "a_b", "a~20", "a.b", "a/b", "ä", "a", "a_20250101_000000"]
    ids = {new_backup_id(name, NOW) for name in names}
    assert len(ids) == len(names)
    assert new_backup_id("a_b", NOW) == "a_b_20250601_120000"
    assert new_backup_id("a b", NOW) == "a~20b_20250601_120000"
    assert new_backup_id("a_b", NOW, 2) == "a_b_20250601_120000-2"
    for name in names:
        backup_id = new_backup_id(name, NOW, 3)
        assert "." not in backup_id and "/" not in backup_id
        match = BACKUP_ID.match(backup_id)
        assert match and match.group("database") == encode_database(name)

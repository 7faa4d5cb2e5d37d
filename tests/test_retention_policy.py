"""The retention policy as a pure function: examples, bad input, and hypothesis properties.

The calendar-bucket oracle uses the standard library's zoneinfo, independently
of the pendulum code under test.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tasks.backup.identity import CLOCK_TOLERANCE
from tasks.core.errors import DbopsError, ParameterError
from tasks.retention.plan import PRE_MIGRATION, BackupInfo, plan_retention
from tasks.retention.policy import RetentionPolicy

NOW = datetime(2025, 3, 30, 12, 0, tzinfo=UTC)  # the day Europe's clocks go forward
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Asia/Kathmandu",
    "Pacific/Chatham",
    "Australia/Lord_Howe",
    "Pacific/Kiritimati",
]


def backup(db: str, when: datetime, labels=(), verified=None) -> BackupInfo:
    return BackupInfo(
        backup_id=f"{db}_{when:%Y%m%d_%H%M%S}",
        database=db,
        started_at=when,
        labels=tuple(labels),
        verified=verified,
    )


def daily(n: int, db: str = "app", start: datetime = NOW, hour_offset: float = 1) -> list:
    return [backup(db, start - timedelta(days=i, hours=hour_offset)) for i in range(n)]


def kept_ids(plan) -> set[str]:
    return {i.backup_id for i in plan.keep}


# ---------------------------------------------------------------------------
# Examples
# ---------------------------------------------------------------------------


def test_the_guides_seven_days_is_the_default_and_keeps_exactly_a_week():
    policy = RetentionPolicy.build()
    assert policy.keep_days == 7
    backups = daily(30)
    plan = plan_retention(backups, policy, NOW)
    assert len(plan.keep) == 7 and len(plan.delete) == 23
    assert kept_ids(plan) == {b.backup_id for b in backups[:7]}
    newest = next(i for i in plan.items if i.backup_id == backups[0].backup_id)
    assert newest.rules == ["newest", "younger than 7d"]
    assert plan.delete[0].reason == "no rule keeps it" and plan.refused is None


def test_every_kept_backup_names_the_rules_that_kept_it():
    backups = daily(40)
    backups[20] = BackupInfo(**{**backups[20].__dict__, "verified": True})
    backups[35] = BackupInfo(**{**backups[35].__dict__, "labels": (PRE_MIGRATION,)})
    policy = RetentionPolicy.build(keep_last=3, keep_weekly=2, keep_pre_migration_days=60)
    plan = plan_retention(backups, policy, NOW)
    rules = {i.backup_id: i.rules for i in plan.items}
    assert rules[backups[0].backup_id][:2] == ["newest", "last 3"]
    assert rules[backups[2].backup_id] == ["last 3"]
    assert rules[backups[20].backup_id] == ["newest verified"]
    assert rules[backups[35].backup_id] == ["pre-migration < 60d"]
    weekly = [i.backup_id for i in plan.items if any(r.startswith("weekly") for r in i.rules)]
    # NOW is Sunday 2025-03-30 (ISO week 13); the newest of week 12 is Sunday 2025-03-23.
    assert weekly == [backups[0].backup_id, backups[7].backup_id]
    assert rules[backups[7].backup_id] == ["weekly 2025-12"]


def test_calendar_days_are_counted_in_the_configured_time_zone():
    # 03:00, 04:00 and 06:00 UTC on 2 January are 22:00 and 23:00 on 1 January and
    # 01:00 on 2 January in New York.
    times = [datetime(2024, 1, 2, h, tzinfo=UTC) for h in (6, 4, 3)]
    backups = [backup("app", t) for t in times]
    now = datetime(2024, 1, 2, 7, tzinfo=UTC)
    in_utc = plan_retention(backups, RetentionPolicy.build(keep_daily=2), now)
    in_ny = plan_retention(
        backups, RetentionPolicy.build(keep_daily=2, timezone="America/New_York"), now
    )
    assert kept_ids(in_utc) == {backups[0].backup_id}
    assert kept_ids(in_ny) == {backups[0].backup_id, backups[1].backup_id}
    reasons = {i.backup_id: i.rules for i in in_ny.items}
    assert reasons[backups[1].backup_id] == ["daily 2024-01-01"]


def test_nothing_is_deleted_when_the_newest_backup_is_older_than_the_window():
    # Dumps stopped 10 days ago: `find -mtime +7 -delete` would now delete every backup.
    backups = daily(30, start=NOW - timedelta(days=10))
    plan = plan_retention(backups, RetentionPolicy.build(keep_days=7), NOW)
    assert plan.delete == []
    assert plan.refused and "older than the policy's 7.0d window" in plan.refused
    assert "app_" in plan.refused and "nothing is deleted" in plan.refused
    assert all(i.rules for i in plan.keep)


def test_one_stale_database_stops_the_whole_prune():
    backups = daily(10, db="fresh") + daily(10, db="old", start=NOW - timedelta(days=30))
    plan = plan_retention(backups, RetentionPolicy.build(keep_days=3), NOW)
    assert plan.delete == [] and "old" in (plan.refused or "")
    plan_fresh = plan_retention(backups[:10], RetentionPolicy.build(keep_days=3), NOW)
    assert len(plan_fresh.delete) == 7


def test_calendar_only_policy_window_is_the_finest_rule_and_can_be_set():
    assert RetentionPolicy.build(keep_daily=7, keep_monthly=12).window() == timedelta(days=7)
    assert RetentionPolicy.build(keep_weekly=4).window() == timedelta(days=28)
    assert RetentionPolicy.build(keep_last=5).window() is None
    policy = RetentionPolicy.build(keep_days=7, stale_after_days=2)
    assert policy.window() == timedelta(days=2)
    backups = daily(10, start=NOW - timedelta(days=3))
    assert plan_retention(backups, policy, NOW).refused


def test_iso_weeks_span_the_new_year():
    # Monday 30 Dec 2024 to Sunday 5 Jan 2025 is ISO week 2025-W01.
    times = [datetime(2025, 1, 2, 3, tzinfo=UTC), datetime(2024, 12, 30, 3, tzinfo=UTC)]
    times.append(datetime(2024, 12, 29, 3, tzinfo=UTC))  # Sunday of 2024-W52
    backups = [backup("app", t) for t in times]
    now = datetime(2025, 1, 3, tzinfo=UTC)
    plan = plan_retention(backups, RetentionPolicy.build(keep_weekly=2), now)
    assert [i.rules for i in plan.items] == [["newest", "weekly 2025-01"], [], ["weekly 2024-52"]]


def test_pre_migration_backups_are_kept_for_their_own_window_then_pruned():
    backups = daily(3) + [
        backup("app", NOW - timedelta(days=20), labels=[PRE_MIGRATION]),
        backup("app", NOW - timedelta(days=40), labels=[PRE_MIGRATION]),
    ]
    plan = plan_retention(backups, RetentionPolicy.build(keep_days=7), NOW)
    assert kept_ids(plan) == {b.backup_id for b in backups[:4]}
    assert [i.backup_id for i in plan.delete] == [backups[4].backup_id]


def test_min_keep_floor_and_the_only_backup():
    old = daily(5, start=NOW - timedelta(days=100))
    policy = RetentionPolicy.build(keep_last=5, min_keep=3, stale_after_days=365)
    assert len(plan_retention(old, policy, NOW).keep) == 5
    policy = RetentionPolicy.build(keep_days=1, min_keep=3, stale_after_days=1)
    fresh_and_old = daily(1) + old
    plan = plan_retention(fresh_and_old, policy, NOW)
    assert [i.rules for i in plan.keep] == [["newest", "younger than 1d"], ["min-keep 3"]] + [
        ["min-keep 3"]
    ]
    only = [backup("app", NOW - timedelta(hours=2))]
    assert len(plan_retention(only, RetentionPolicy.build(keep_days=0.01), NOW).keep) == 1


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"keep_days": -1}, "keep_days -1"),
        ({"keep_last": 0}, "keep_last 0 is not allowed"),
        ({"keep_monthly": -3}, "keep_monthly -3"),
        ({"min_keep": 0}, "min_keep 0 is not allowed"),
        ({"keep_pre_migration_days": -1}, "negative"),
        ({"keep_last": 2, "min_keep": 5}, "min_keep 5 contradicts keep_last 2"),
        ({"keep_days": 7, "stale_after_days": 30}, "stale_after_days 30 contradicts"),
        ({"timezone": "Mars/Olympus_Mons"}, "'Mars/Olympus_Mons' is not a known time zone"),
        ({"timezone": ""}, "'' is not a known time zone"),
    ],
)
def test_bad_policy_values_are_one_clear_line(values, message):
    with pytest.raises(ParameterError) as caught:
        RetentionPolicy.build(**values)
    text = str(caught.value)
    assert message in text and "\n" not in text and ";" in text
    # The error names the parameter as the Prefect UI shows it, never a command-line flag.
    assert "--" not in text and text.startswith(caught.value.parameter)


# ---------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------

DATABASES = ["app", "billing"]


def _to_backups(rows) -> list[BackupInfo]:
    return [
        backup(db, NOW - timedelta(minutes=minutes, seconds=seconds), sorted(labels), verified)
        for db, minutes, seconds, labels, verified in rows
    ]


# Up to 40 backups of two databases over ~3 years, some clock-skewed into the future.
backup_sets = st.lists(
    st.tuples(
        st.sampled_from(DATABASES),
        st.one_of(
            st.integers(-90, 3 * 24 * 60),  # the last few days, densely
            st.integers(-90, 3 * 366 * 24 * 60),  # years
            st.builds(  # close to whole days, where the keep-days edge is
                lambda days, jitter: max(0, days * 1440 + jitter),
                st.integers(0, 60),
                st.integers(-45, 45),
            ),
        ),
        st.integers(0, 59),
        st.frozensets(st.sampled_from([PRE_MIGRATION, "manual"]), max_size=2),
        st.sampled_from([None, None, True, False]),
    ),
    max_size=40,
    unique_by=lambda row: (row[0], row[1]),
).map(_to_backups)
optional_count = st.one_of(st.none(), st.integers(1, 15))


@st.composite
def policies(draw) -> RetentionPolicy:
    values = {
        "keep_days": draw(
            st.one_of(
                st.none(),
                st.integers(1, 40).map(float),
                st.floats(0.01, 400, allow_nan=False, allow_infinity=False),
            )
        ),
        "keep_last": draw(optional_count),
        "keep_daily": draw(optional_count),
        "keep_weekly": draw(optional_count),
        "keep_monthly": draw(optional_count),
        "keep_yearly": draw(st.one_of(st.none(), st.integers(1, 4))),
        "min_keep": draw(st.integers(1, 6)),
        "keep_pre_migration_days": draw(st.floats(0, 90, allow_nan=False)),
        "stale_after_days": draw(
            st.one_of(st.none(), st.floats(0.01, 1200, allow_nan=False, allow_infinity=False))
        ),
        "timezone": draw(st.sampled_from(ZONES)),
    }
    try:
        return RetentionPolicy.build(**values)
    except DbopsError:
        assume(False)
        raise


def period_key(when: datetime, period: str, tz: str) -> tuple:
    local = when.astimezone(ZoneInfo(tz))
    return {
        "daily": (local.year, local.month, local.day),
        "weekly": tuple(local.isocalendar()[:2]),
        "monthly": (local.year, local.month),
        "yearly": (local.year,),
    }[period]


def oracle_keeps(group: list[BackupInfo], policy: RetentionPolicy, now: datetime) -> set[str]:
    """What the rules (without the min-keep floor) must keep, computed independently."""
    keep = {group[0].backup_id}
    verified = [b for b in group if b.verified]
    if verified:
        keep.add(verified[0].backup_id)
    if policy.keep_last:
        keep |= {b.backup_id for b in group[: policy.keep_last]}
    if policy.keep_days is not None:
        keep |= {b.backup_id for b in group if now - b.started_at < timedelta(policy.keep_days)}
    for period, count in policy.buckets():
        newest_of: dict[tuple, str] = {}
        for b in group:  # newest first
            newest_of.setdefault(period_key(b.started_at, period, policy.timezone), b.backup_id)
        keep |= set(list(newest_of.values())[:count])
    keep |= {
        b.backup_id
        for b in group
        if PRE_MIGRATION in b.labels
        and now - b.started_at < timedelta(days=policy.keep_pre_migration_days)
    }
    return keep


def by_database(backups: list[BackupInfo]) -> dict[str, list[BackupInfo]]:
    groups: dict[str, list[BackupInfo]] = {}
    for b in sorted(backups, key=lambda b: (b.started_at, b.backup_id), reverse=True):
        groups.setdefault(b.database, []).append(b)
    return groups


PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much]
)


@settings(PROPERTY_SETTINGS, max_examples=300)
@given(backups=backup_sets, policy=policies())
def test_policy_invariants(backups, policy):
    plan = plan_retention(backups, policy, NOW)
    items = {i.backup_id: i for i in plan.items}
    # Every backup is planned exactly once; kept ones say why, deleted ones say no rule.
    assert sorted(items) == sorted(b.backup_id for b in backups)
    assert len(plan.items) == len(backups)
    for item in plan.items:
        assert bool(item.rules) == (item.action == "keep")
    window = policy.window()
    stale = False
    for group in by_database(backups).values():
        kept = [b for b in group if items[b.backup_id].action == "keep"]
        # The newest backup and the newest verified backup are never deleted.
        assert items[group[0].backup_id].action == "keep"
        verified = [b for b in group if b.verified]
        if verified:
            assert items[verified[0].backup_id].action == "keep"
        # The floor.
        assert len(kept) >= min(policy.min_keep, len(group))
        # pre-migration backups inside their own window survive.
        for b in group:
            if PRE_MIGRATION in b.labels and NOW - b.started_at < timedelta(
                days=policy.keep_pre_migration_days
            ):
                assert items[b.backup_id].action == "keep"
        # Exactly what the rules keep is kept by a rule; beyond that only the floor keeps
        # backups: the newest others, just as many as it needs.
        must_keep = oracle_keeps(group, policy, NOW)
        assert must_keep <= {b.backup_id for b in kept}
        if not plan.refused:
            by_rule = {
                b.backup_id
                for b in kept
                if any(not r.startswith("min-keep") for r in items[b.backup_id].rules)
            }
            assert by_rule == must_keep
            floor = [b.backup_id for b in kept if b.backup_id not in must_keep]
            others = [b.backup_id for b in group if b.backup_id not in must_keep]
            needed = max(0, min(policy.min_keep, len(group)) - len(must_keep))
            assert floor == others[:needed]
            assert all(items[f].rules == [f"min-keep {policy.min_keep}"] for f in floor)
        dated = [b for b in group if b.started_at - NOW <= CLOCK_TOLERANCE]
        if len(dated) < len(group):
            stale = True  # a backup dated in the future: the clock is wrong
        elif window is not None and NOW - dated[0].started_at > window:
            stale = True
    # Dumps failing (newest older than the window) or a clock gone wrong (a backup dated
    # beyond the tolerance) means nothing is deleted at all.
    assert bool(plan.refused) == stale
    if stale:
        assert plan.delete == []


@PROPERTY_SETTINGS
@given(backups=backup_sets, policy=policies(), seed=st.integers(0, 2**32))
def test_plan_does_not_depend_on_listing_order(backups, policy, seed):
    shuffled = list(backups)
    random.Random(seed).shuffle(shuffled)
    first = plan_retention(backups, policy, NOW)
    second = plan_retention(shuffled, policy, NOW)
    assert first.model_dump() == second.model_dump()


@PROPERTY_SETTINGS
@given(
    backups=backup_sets,
    policy=policies(),
    rule=st.sampled_from(
        ["keep_days", "keep_last", "keep_daily", "keep_weekly", "keep_monthly", "keep_yearly"]
    ),
    more=st.integers(1, 10),
)
def test_a_more_generous_policy_never_keeps_less(backups, policy, rule, more):
    """Raising any keep value (the window fixed) keeps everything the rules kept before, and
    at least as many backups in all (the min-keep floor may then pick other ones)."""
    window = policy.window()
    days = window.total_seconds() / 86400 if window else None
    base = policy.model_copy(update={"stale_after_days": days})
    generous = base.model_copy(update={rule: (getattr(base, rule) or 0) + more})
    before = plan_retention(backups, base, NOW)
    after = plan_retention(backups, generous, NOW)
    if after.refused:
        assert after.delete == []
        return
    assert not before.refused

    def by_rules(plan) -> set[str]:
        return {i.backup_id for i in plan.keep if any(not r.startswith("min") for r in i.rules)}

    assert by_rules(before) <= by_rules(after)
    assert len(after.keep) >= len(before.keep)


@PROPERTY_SETTINGS
@given(backups=backup_sets, policy=policies())
def test_databases_are_planned_independently(backups, policy):
    plan = plan_retention(backups, policy, NOW)
    assume(not plan.refused)
    for db, group in by_database(backups).items():
        alone = plan_retention(group, policy, NOW)
        assert {i.backup_id: i.action for i in alone.items} == {
            i.backup_id: i.action for i in plan.items if i.database == db
        }


@settings(max_examples=100, deadline=None)
@given(
    days=st.integers(1, 60),
    offsets=st.lists(st.integers(-120, 120), min_size=1, max_size=12, unique=True),
    tz=st.sampled_from(ZONES),
)
def test_keep_days_edge_is_exact(days, offsets, tz):
    """Around the N-day edge: younger than N days is kept, N days or older is not."""
    newest = backup("app", NOW - timedelta(minutes=1))
    edge = [backup("app", NOW - timedelta(days=days, minutes=m)) for m in offsets]
    plan = plan_retention([newest, *edge], RetentionPolicy.build(keep_days=days, timezone=tz), NOW)
    younger = {b.backup_id for b in edge if NOW - b.started_at < timedelta(days=days)}
    assert kept_ids(plan) == {newest.backup_id} | younger

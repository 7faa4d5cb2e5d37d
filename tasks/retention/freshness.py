"""Staleness alert: is the newest *verified* backup of each database recent enough?

Like Barman's `last_backup_maximum_age`, but counting only backups that a
restore test passed: a nightly dump that nobody can restore is not a backup.
Optionally the newest backup of any kind has its own, shorter limit, which
catches failing nightly dumps before the weekly restore test does.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from pydantic import BaseModel, Field, computed_field

from tasks.backup.identity import UNKNOWN_SERVER, in_the_future, legacy_group
from tasks.core.errors import ParameterError
from tasks.retention.plan import BackupInfo, future_problem, group_backups, human_age


class DatabaseFreshness(BaseModel):
    database: str
    server: str = UNKNOWN_SERVER
    backups: int
    newest: str | None
    newest_age_hours: float | None
    newest_verified: str | None
    newest_verified_age_hours: float | None
    ok: bool
    problem: str = ""
    copies: int | None = Field(
        None, description="checked copies of the newest verified backup elsewhere (min_copies)"
    )


class FreshnessReport(BaseModel):
    location: str = ""
    checked_at: datetime
    max_age_hours: float
    max_backup_age_hours: float | None
    databases: list[DatabaseFreshness] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return bool(self.databases) and all(d.ok for d in self.databases)

    def problems(self) -> str:
        return "; ".join(d.problem for d in self.databases if not d.ok)

    def table(self) -> list[dict[str, object]]:
        return [
            {
                "database": d.database,
                "server": d.server,
                "newest verified": d.newest_verified or "-",
                "verified age (h)": d.newest_verified_age_hours,
                "newest backup": d.newest or "-",
                "age (h)": d.newest_age_hours,
                "status": "OK" if d.ok else "STALE: " + d.problem,
            }
            for d in self.databases
        ]


def check_limits(max_age_hours: float, max_backup_age_hours: float | None) -> None:
    if not max_age_hours > 0:
        raise ParameterError(
            "max_age_hours", f"{max_age_hours:g} must be positive, e.g. 192 (8 days)"
        )
    if max_backup_age_hours is not None and not max_backup_age_hours > 0:
        raise ParameterError(
            "max_backup_age_hours", f"{max_backup_age_hours:g} must be positive, e.g. 26"
        )


def assess_freshness(
    backups: Sequence[BackupInfo],
    now: datetime,
    max_age_hours: float,
    max_backup_age_hours: float | None = None,
    databases: Sequence[str] = (),
) -> FreshnessReport:
    """One row per (server, database) found, and per database expected; pure, so easy to test.

    A backup dated beyond the clock tolerance is never newest nor fresh: it is a problem.
    """
    check_limits(max_age_hours, max_backup_age_hours)
    report = FreshnessReport(
        checked_at=now, max_age_hours=max_age_hours, max_backup_age_hours=max_backup_age_hours
    )
    chosen = [b for b in backups if not databases or b.database in databases]
    groups = group_backups(chosen)
    for database in databases:
        if not any(d == database for _, d in groups):
            groups[(UNKNOWN_SERVER, database)] = []
    for key in sorted(groups, key=lambda k: (k[1], k[0])):
        if legacy_group(key, groups):
            continue  # backups from before identities; their server's own row judges it
        report.databases.append(_assess(key, groups[key], now, max_age_hours, max_backup_age_hours))
    return report


def _assess(
    key: tuple[str, str],
    backups: list[BackupInfo],
    now: datetime,
    max_age_hours: float,
    max_backup_age_hours: float | None,
) -> DatabaseFreshness:
    server, database = key
    future = [b for b in backups if in_the_future(b.started_at, now)]
    group = [b for b in backups if b not in future]
    newest = group[0] if group else None
    verified = next((b for b in group if b.verified), None)
    row = DatabaseFreshness(
        database=database,
        server=server,
        backups=len(backups),
        newest=newest.backup_id if newest else None,
        newest_age_hours=_hours(now - newest.started_at) if newest else None,
        newest_verified=verified.backup_id if verified else None,
        newest_verified_age_hours=_hours(now - verified.started_at) if verified else None,
        ok=True,
    )
    problems = [future_problem(b, now) for b in future]
    if newest is None:
        problems.append(f"{database} has no backups")
    elif verified is None:
        problems.append(f"{database} has no verified backup (run `dbops verify latest`)")
    elif now - verified.started_at > timedelta(hours=max_age_hours):
        problems.append(
            f"the newest verified backup of {database} ({verified.backup_id}) is "
            f"{human_age(now - verified.started_at)} old, over the {max_age_hours:g}h limit"
        )
    if (
        newest is not None
        and max_backup_age_hours is not None
        and now - newest.started_at > timedelta(hours=max_backup_age_hours)
    ):
        problems.append(
            f"the newest backup of {database} ({newest.backup_id}) is "
            f"{human_age(now - newest.started_at)} old, "
            f"over the {max_backup_age_hours:g}h limit"
        )
    if problems:
        row.ok = False
        row.problem = "; ".join(problems)
    return row


def _hours(delta: timedelta) -> float:
    return round(delta.total_seconds() / 3600, 2)

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

from tasks.core.errors import ParameterError
from tasks.retention.plan import BackupInfo, human_age


class DatabaseFreshness(BaseModel):
    database: str
    backups: int
    newest: str | None
    newest_age_hours: float | None
    newest_verified: str | None
    newest_verified_age_hours: float | None
    ok: bool
    problem: str = ""


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
    """One row per database found (and per database expected); pure, so it is easy to test."""
    check_limits(max_age_hours, max_backup_age_hours)
    report = FreshnessReport(
        checked_at=now, max_age_hours=max_age_hours, max_backup_age_hours=max_backup_age_hours
    )
    by_db: dict[str, list[BackupInfo]] = {name: [] for name in databases}
    for backup in backups:
        if databases and backup.database not in databases:
            continue
        by_db.setdefault(backup.database, []).append(backup)
    limit = timedelta(hours=max_age_hours)
    for database in sorted(by_db):
        group = sorted(by_db[database], key=lambda b: (b.started_at, b.backup_id), reverse=True)
        newest = group[0] if group else None
        verified = next((b for b in group if b.verified), None)
        row = DatabaseFreshness(
            database=database,
            backups=len(group),
            newest=newest.backup_id if newest else None,
            newest_age_hours=_hours(now - newest.started_at) if newest else None,
            newest_verified=verified.backup_id if verified else None,
            newest_verified_age_hours=_hours(now - verified.started_at) if verified else None,
            ok=True,
        )
        problems = []
        if newest is None:
            problems.append(f"{database} has no backups")
        elif verified is None:
            problems.append(f"{database} has no verified backup (run `dbops verify latest`)")
        elif now - verified.started_at > limit:
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
        report.databases.append(row)
    return report


def _hours(delta: timedelta) -> float:
    return round(delta.total_seconds() / 3600, 2)

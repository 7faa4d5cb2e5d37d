"""The retention policy: which rules keep a backup, checked once, shared by the flow and the CLI.

The model's field descriptions are what the Prefect UI form and `dbops prune --help` show.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

import pendulum
from pydantic import BaseModel, Field

from tasks.core.errors import ParameterError

GUIDE_KEEP_DAYS = 7  # the guide's `find /backups -mtime +7 -delete`
Period = Literal["daily", "weekly", "monthly", "yearly"]
PERIOD_DAYS: dict[str, int] = {"daily": 1, "weekly": 7, "monthly": 31, "yearly": 366}
# An upload or claimed backup younger than this may belong to a running backup. A 5 TiB
# dump at 100 MB/s takes about 15 hours; prune also waits twice the longest recorded backup.
MIN_ABANDON_HOURS = 6.0


class RetentionPolicy(BaseModel):
    """What to keep. Rules combine: a backup is kept when any rule keeps it."""

    keep_days: float | None = Field(
        None, description="keep every backup younger than N days (default 7 if no rule given)"
    )
    keep_last: int | None = Field(None, description="keep the newest N backups")
    keep_daily: int | None = Field(
        None, description="keep the newest backup of each of the last N days"
    )
    keep_weekly: int | None = Field(
        None, description="keep the newest backup of each of the last N ISO weeks"
    )
    keep_monthly: int | None = Field(
        None, description="keep the newest backup of each of the last N months"
    )
    keep_yearly: int | None = Field(
        None, description="keep the newest backup of each of the last N years"
    )
    min_keep: int = Field(1, description="never keep fewer than N backups of a database")
    keep_pre_migration_days: float = Field(
        30, description="keep backups labelled pre-migration for N days"
    )
    stale_after_days: float | None = Field(
        None,
        description="delete nothing and fail when the newest backup is older than N days; "
        "default keep_days, else the finest calendar rule's span",
    )
    timezone: str = Field("UTC", description="IANA time zone of the calendar days/weeks/months")

    @classmethod
    def build(cls, **values: float | int | str | None) -> RetentionPolicy:
        """A checked policy from loose values (None: not given)."""
        return cls(**{k: v for k, v in values.items() if v is not None}).resolved()

    def resolved(self) -> RetentionPolicy:
        """Checked, with the guide's 7 days when no rule is given; raises ParameterError."""
        self.check()
        if not self.has_rules():
            return self.model_copy(update={"keep_days": float(GUIDE_KEEP_DAYS)})
        return self

    def has_rules(self) -> bool:
        return any(
            v is not None
            for v in (
                self.keep_days,
                self.keep_last,
                self.keep_daily,
                self.keep_weekly,
                self.keep_monthly,
                self.keep_yearly,
            )
        )

    def buckets(self) -> list[tuple[Period, int]]:
        rules: list[tuple[Period, int | None]] = [
            ("daily", self.keep_daily),
            ("weekly", self.keep_weekly),
            ("monthly", self.keep_monthly),
            ("yearly", self.keep_yearly),
        ]
        return [(period, n) for period, n in rules if n is not None]

    def window(self) -> timedelta | None:
        """How old the newest backup may be before pruning refuses to delete anything."""
        if self.stale_after_days is not None:
            return timedelta(days=self.stale_after_days)
        if self.keep_days is not None:
            return timedelta(days=self.keep_days)
        buckets = self.buckets()
        if buckets:
            return min(timedelta(days=PERIOD_DAYS[p] * n) for p, n in buckets)
        return None

    def check(self) -> None:
        """Negative, zero or contradictory values and unknown time zones are refused."""
        for name in (
            "keep_days",
            "keep_last",
            "keep_daily",
            "keep_weekly",
            "keep_monthly",
            "keep_yearly",
            "stale_after_days",
        ):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ParameterError(
                    name, f"{value:g} is not allowed; give a positive number or leave it out"
                )
        if self.min_keep < 1:
            raise ParameterError(
                "min_keep",
                f"{self.min_keep} is not allowed; the newest backup is always kept, "
                "so use 1 or more",
            )
        if self.keep_pre_migration_days < 0:
            raise ParameterError(
                "keep_pre_migration_days",
                f"{self.keep_pre_migration_days:g} is negative; use 0 or more days",
            )
        only_last = self.keep_last is not None and not (self.keep_days or self.buckets())
        if only_last and self.keep_last is not None and self.min_keep > self.keep_last:
            raise ParameterError(
                "min_keep",
                f"{self.min_keep} contradicts keep_last {self.keep_last}; "
                "make min_keep at most keep_last",
                related=("keep_last",),
            )
        if (
            self.stale_after_days is not None
            and self.keep_days is not None
            and self.stale_after_days > self.keep_days
        ):
            raise ParameterError(
                "stale_after_days",
                f"{self.stale_after_days:g} contradicts keep_days {self.keep_days:g}: failing "
                "dumps would let prune delete all but the newest; make it at most keep_days",
                related=("keep_days",),
            )
        zone(self.timezone)


def zone(name: str) -> pendulum.Timezone:
    try:
        return pendulum.timezone(name)
    except (ValueError, pendulum.tz.exceptions.TimezoneError):
        raise ParameterError(
            "timezone",
            f"{name!r} is not a known time zone; use an IANA name such as UTC or Europe/Berlin",
        ) from None


def check_abandon_hours(hours: float | None) -> None:
    """0 would abort running backups: the threshold must outlast any backup."""
    if hours is not None and not hours >= MIN_ABANDON_HOURS:
        raise ParameterError(
            "abort_uploads_older_than_hours",
            f"{hours:g} would touch backups that are still running; use at least "
            f"{MIN_ABANDON_HOURS:g} hours, more than your longest backup takes (default 24), "
            "or leave it empty to never abort",
        )

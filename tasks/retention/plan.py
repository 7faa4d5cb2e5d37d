"""Retention as a pure plan of (backups, policy, now), so its safety rules can be property-tested.

The newest backup and the newest verified backup are always kept,
`pre-migration` backups are kept for their own window, a floor of `min_keep`
backups always survives, and nothing at all is deleted when the newest backup
is older than the policy's window (the dumps are failing; the old backups are
all there is).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import pendulum
from pydantic import BaseModel, Field

from tasks.backup.identity import (
    CLOCK_TOLERANCE,
    UNKNOWN_SERVER,
    group_by_server,
    in_the_future,
    legacy_group,
)
from tasks.backup.manifest import Manifest
from tasks.retention.policy import Period, RetentionPolicy, zone

PRE_MIGRATION = "pre-migration"


@dataclass(frozen=True)
class BackupInfo:
    """What the policy needs to know about one backup."""

    backup_id: str
    database: str
    started_at: datetime
    labels: tuple[str, ...] = ()
    verified: bool | None = None  # True: restore-tested OK; False: failed; None: not tested
    server: str = UNKNOWN_SERVER  # ServerIdentity.key of the server it came from

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> BackupInfo:
        started = manifest.started_at
        return cls(
            backup_id=manifest.backup_id,
            database=manifest.database,
            started_at=started if started.tzinfo else started.replace(tzinfo=UTC),
            labels=tuple(manifest.labels),
            verified=manifest.verification.ok if manifest.verification else None,
            server=manifest.server_key,
        )


def group_backups(backups: Sequence[BackupInfo]) -> dict[tuple[str, str], list[BackupInfo]]:
    """(server, database) -> its backups, newest first."""
    ordered = sorted(backups, key=lambda b: (b.started_at, b.backup_id), reverse=True)
    return group_by_server(ordered, lambda b: b.server, lambda b: b.database)


def future_problem(backup: BackupInfo, now: datetime) -> str:
    return (
        f"backup {backup.backup_id} of {backup.database} is dated "
        f"{backup.started_at:%Y-%m-%d %H:%M} UTC, {human_age(backup.started_at - now)} ahead "
        f"of this clock (tolerance "
        f"{human_age(CLOCK_TOLERANCE)}): the clock of the host that took it is wrong"
    )


class PlanItem(BaseModel):
    backup_id: str
    database: str
    server: str = UNKNOWN_SERVER
    started_at: datetime
    age: str
    labels: list[str]
    verified: bool | None
    action: Literal["keep", "delete"]
    rules: list[str] = Field(description="the rules that keep it; empty when deleted")
    reason: str


class RetentionPlan(BaseModel):
    policy: RetentionPolicy
    now: datetime
    items: list[PlanItem] = Field(default_factory=list)
    refused: str | None = Field(None, description="why no backup may be deleted, if so")
    unreadable: list[str] = Field(
        default_factory=list,
        description="manifests that cannot be read: their objects are never touched",
    )
    leftovers: list[str] = Field(
        default_factory=list,
        description="objects of half-deleted backups (a manifest without its dump, a sidecar "
        "without its manifest) that the prune finishes deleting",
    )
    ignored: list[str] = Field(
        default_factory=list, description="objects that belong to no manifest: never touched"
    )
    incomplete_uploads: list[str] = Field(
        default_factory=list, description="stale multipart uploads / partial files to abort"
    )
    abandoned: list[str] = Field(
        default_factory=list,
        description="objects of backups whose run stopped before its manifest (a claim and "
        "what it wrote), old enough that no running backup owns them: deleted",
    )

    @property
    def keep(self) -> list[PlanItem]:
        return [i for i in self.items if i.action == "keep"]

    @property
    def delete(self) -> list[PlanItem]:
        return [i for i in self.items if i.action == "delete"]

    def summary(self) -> str:
        text = f"{len(self.keep)} kept, {len(self.delete)} to delete"
        if self.leftovers:
            text += f", {len(self.leftovers)} leftover objects"
        if self.incomplete_uploads:
            text += f", {len(self.incomplete_uploads)} incomplete uploads to abort"
        if self.abandoned:
            text += f", {len(self.abandoned)} objects of unfinished backups"
        if self.unreadable:
            text += f", {len(self.unreadable)} unreadable manifests left alone"
        return text + (f"; REFUSED: {self.refused}" if self.refused else "")

    def table(self) -> list[dict[str, object]]:
        """Rows for the Prefect table artifact and the human output."""
        return [
            {
                "backup": i.backup_id,
                "server": i.server,
                "started": i.started_at.isoformat(timespec="seconds"),
                "age": i.age,
                "verified": {True: "yes", False: "FAILED", None: "-"}[i.verified],
                "labels": ", ".join(i.labels) or "-",
                "action": i.action,
                "why": i.reason,
            }
            for i in self.items
        ]


def _period_key(when: datetime, period: Period, tz: pendulum.Timezone) -> tuple[int, ...]:
    local = pendulum.instance(when).in_timezone(tz)
    if period == "daily":
        return (local.year, local.month, local.day)
    if period == "weekly":
        iso = local.isocalendar()
        return (iso[0], iso[1])
    if period == "monthly":
        return (local.year, local.month)
    return (local.year,)


def human_age(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds < 0:
        return "in the future" if seconds < -CLOCK_TOLERANCE.total_seconds() else "0m"
    if seconds < 3600:
        return f"{int(seconds // 60)}m"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def plan_retention(
    backups: Sequence[BackupInfo],
    policy: RetentionPolicy,
    now: datetime,
    leftovers: Sequence[str] = (),
    ignored: Sequence[str] = (),
) -> RetentionPlan:
    """Decide keep/delete for every backup, per (server, database), naming the rules that keep
    each. A backup dated in the future is kept, and makes the plan refuse."""
    plan = RetentionPlan(policy=policy, now=now, leftovers=list(leftovers), ignored=list(ignored))
    groups = group_backups(backups)
    window = policy.window()
    problems: list[str] = []
    for key in sorted(groups):
        server, database = key
        future = [b for b in groups[key] if in_the_future(b.started_at, now)]
        group = [b for b in groups[key] if b not in future]
        problems += [future_problem(b, now) for b in future]
        rules = _keep_rules(group, policy, now) if group else {}
        for backup in future:
            rules[backup.backup_id] = ["dated in the future"]
        newest_age = now - group[0].started_at if group else None
        if (
            window is not None
            and newest_age is not None
            and newest_age > window
            and not legacy_group(key, groups)
        ):
            problems.append(
                f"the newest backup of {database} ({group[0].backup_id}) is "
                f"{human_age(newest_age)} old, older than the policy's {human_age(window)} window"
                ": backups seem to be failing"
            )
        for backup in groups[key]:
            kept_by = rules[backup.backup_id]
            plan.items.append(
                PlanItem(
                    backup_id=backup.backup_id,
                    database=database,
                    server=server,
                    started_at=backup.started_at,
                    age=human_age(now - backup.started_at),
                    labels=list(backup.labels),
                    verified=backup.verified,
                    action="keep" if kept_by else "delete",
                    rules=kept_by,
                    reason=", ".join(kept_by) if kept_by else "no rule keeps it",
                )
            )
    if problems:
        plan.refused = (
            "; ".join(problems) + "; so nothing is deleted: fix the backups (or the clock, then "
            "delete the future-dated backup by hand), or prune with a window that covers the "
            "newest backup"
        )
        for item in plan.delete:
            item.action = "keep"
            item.rules = ["refused"]
            item.reason = "kept: prune refused (" + item.reason + ")"
    return plan


def _keep_rules(
    group: list[BackupInfo], policy: RetentionPolicy, now: datetime
) -> dict[str, list[str]]:
    """Rules keeping each backup of one database; `group` is newest first."""
    rules: dict[str, list[str]] = {b.backup_id: [] for b in group}
    rules[group[0].backup_id].append("newest")
    verified = next((b for b in group if b.verified), None)
    if verified is not None:
        rules[verified.backup_id].append("newest verified")
    if policy.keep_last is not None:
        for backup in group[: policy.keep_last]:
            rules[backup.backup_id].append(f"last {policy.keep_last}")
    if policy.keep_days is not None:
        limit = timedelta(days=policy.keep_days)
        for backup in group:
            if now - backup.started_at < limit:
                rules[backup.backup_id].append(f"younger than {policy.keep_days:g}d")
    tz = zone(policy.timezone)
    for period, count in policy.buckets():
        seen: list[tuple[int, ...]] = []
        for backup in group:
            key = _period_key(backup.started_at, period, tz)
            if key in seen:
                continue
            if len(seen) == count:
                break
            seen.append(key)
            rules[backup.backup_id].append(f"{period} {'-'.join(f'{k:02d}' for k in key)}")
    pre_window = timedelta(days=policy.keep_pre_migration_days)
    for backup in group:
        if PRE_MIGRATION in backup.labels and now - backup.started_at < pre_window:
            rules[backup.backup_id].append(f"pre-migration < {policy.keep_pre_migration_days:g}d")
    kept = sum(1 for b in group if rules[b.backup_id])
    for backup in group:
        if kept >= policy.min_keep:
            break
        if not rules[backup.backup_id]:
            rules[backup.backup_id].append(f"min-keep {policy.min_keep}")
            kept += 1
    return rules

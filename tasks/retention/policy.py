"""Retention: which backups to keep and why (a pure plan), then deleting what the plan says.

The plan is a pure function of (backups, policy, now) so that its safety rules
can be property-tested: the newest backup and the newest verified backup are
always kept, `pre-migration` backups are kept for their own window, a floor of
`min_keep` backups always survives, and nothing at all is deleted when the
newest backup is older than the policy's window (the dumps are failing; the
old backups are all there is). Only backups with a manifest are counted or
touched; a backup's objects are deleted dump first and manifest last, so a
prune that dies half-way leaves at worst a manifest without its dump, which no
reader takes for a backup and the next prune finishes deleting.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import botocore.exceptions
import pendulum
from pydantic import BaseModel, Field

from tasks.backup.manifest import (
    MANIFEST_SUFFIX,
    VERIFIED_SUFFIX,
    Manifest,
    read_manifest,
    read_verification,
)
from tasks.core.errors import DbopsError, TransientError
from tasks.storage.destinations import PARTIAL_MARK, Destination, LocalDestination, S3Destination

PRE_MIGRATION = "pre-migration"
GUIDE_KEEP_DAYS = 7  # the guide's `find /backups -mtime +7 -delete`
Period = Literal["daily", "weekly", "monthly", "yearly"]
PERIOD_DAYS: dict[str, int] = {"daily": 1, "weekly": 7, "monthly": 31, "yearly": 366}


class RetentionPolicy(BaseModel):
    """What to keep. Rules combine: a backup is kept when any rule keeps it."""

    keep_days: float | None = Field(None, description="keep every backup younger than N days")
    keep_last: int | None = Field(None, description="keep the newest N backups")
    keep_daily: int | None = Field(None, description="newest backup of each of the last N days")
    keep_weekly: int | None = Field(None, description="newest backup of each of the last N weeks")
    keep_monthly: int | None = Field(None, description="newest of each of the last N months")
    keep_yearly: int | None = Field(None, description="newest of each of the last N years")
    min_keep: int = Field(1, description="never keep fewer than N backups of a database")
    keep_pre_migration_days: float = Field(
        30, description="keep backups labelled pre-migration for N days"
    )
    stale_after_days: float | None = Field(
        None,
        description="delete nothing when the newest backup is older than this; "
        "default: keep_days, else the span of the finest calendar rule",
    )
    timezone: str = Field("UTC", description="time zone of the calendar days/weeks/months")

    @classmethod
    def build(cls, **values: Any) -> RetentionPolicy:
        """Validate user input into a policy, or raise one clear DbopsError line."""
        given = {k: v for k, v in values.items() if v is not None}
        policy = cls(**given)
        policy.check()
        if not policy.has_rules():
            policy = policy.model_copy(update={"keep_days": float(GUIDE_KEEP_DAYS)})
        return policy

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
        for flag, value in (
            ("--keep-days", self.keep_days),
            ("--keep-last", self.keep_last),
            ("--keep-daily", self.keep_daily),
            ("--keep-weekly", self.keep_weekly),
            ("--keep-monthly", self.keep_monthly),
            ("--keep-yearly", self.keep_yearly),
            ("--stale-after-days", self.stale_after_days),
        ):
            if value is not None and not value > 0:
                raise DbopsError(
                    f"{flag} {value:g} is not allowed; give a positive number or leave it out"
                )
        if self.min_keep < 1:
            raise DbopsError(
                f"--min-keep {self.min_keep} is not allowed; the newest backup is always kept, "
                "so use 1 or more"
            )
        if self.keep_pre_migration_days < 0:
            raise DbopsError(
                f"--keep-pre-migration-days {self.keep_pre_migration_days:g} is negative; "
                "use 0 or more days"
            )
        only_last = self.keep_last is not None and not (self.keep_days or self.buckets())
        if only_last and self.keep_last is not None and self.min_keep > self.keep_last:
            raise DbopsError(
                f"--min-keep {self.min_keep} contradicts --keep-last {self.keep_last}; "
                "make --min-keep at most --keep-last"
            )
        if (
            self.stale_after_days is not None
            and self.keep_days is not None
            and self.stale_after_days > self.keep_days
        ):
            raise DbopsError(
                f"--stale-after-days {self.stale_after_days:g} contradicts --keep-days "
                f"{self.keep_days:g}: failing dumps would let prune delete all but the newest; "
                "make it at most --keep-days"
            )
        zone(self.timezone)


def zone(name: str) -> pendulum.Timezone:
    try:
        return pendulum.timezone(name)
    except (ValueError, pendulum.tz.exceptions.TimezoneError):
        raise DbopsError(
            f"unknown time zone {name!r}; use an IANA name such as UTC or Europe/Berlin"
        ) from None


@dataclass(frozen=True)
class BackupInfo:
    """What the policy needs to know about one backup."""

    backup_id: str
    database: str
    started_at: datetime
    labels: tuple[str, ...] = ()
    verified: bool | None = None  # True: restore-tested OK; False: failed; None: not tested

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> BackupInfo:
        started = manifest.started_at
        return cls(
            backup_id=manifest.backup_id,
            database=manifest.database,
            started_at=started if started.tzinfo else started.replace(tzinfo=UTC),
            labels=tuple(manifest.labels),
            verified=manifest.verification.ok if manifest.verification else None,
        )


class PlanItem(BaseModel):
    backup_id: str
    database: str
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
    refused: str | None = Field(None, description="why nothing may be deleted, if so")
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
        return text + (f"; REFUSED: {self.refused}" if self.refused else "")

    def table(self) -> list[dict[str, object]]:
        """Rows for the Prefect table artifact and the human output."""
        return [
            {
                "backup": i.backup_id,
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
        return "in the future"
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
    """Decide keep/delete for every backup, per database, naming the rules that keep each."""
    plan = RetentionPlan(policy=policy, now=now, leftovers=list(leftovers), ignored=list(ignored))
    by_db: dict[str, list[BackupInfo]] = {}
    for backup in backups:
        by_db.setdefault(backup.database, []).append(backup)
    window = policy.window()
    stale: list[str] = []
    for database in sorted(by_db):
        group = sorted(by_db[database], key=lambda b: (b.started_at, b.backup_id), reverse=True)
        rules = _keep_rules(group, policy, now)
        newest_age = now - group[0].started_at
        if window is not None and newest_age > window:
            stale.append(
                f"the newest backup of {database} ({group[0].backup_id}) is "
                f"{human_age(newest_age)} old, older than the policy's {human_age(window)} window"
            )
        for backup in group:
            kept_by = rules[backup.backup_id]
            plan.items.append(
                PlanItem(
                    backup_id=backup.backup_id,
                    database=database,
                    started_at=backup.started_at,
                    age=human_age(now - backup.started_at),
                    labels=list(backup.labels),
                    verified=backup.verified,
                    action="keep" if kept_by else "delete",
                    rules=kept_by,
                    reason=", ".join(kept_by) if kept_by else "no rule keeps it",
                )
            )
    if stale:
        plan.refused = (
            "; ".join(stale) + ": backups seem to be failing, so nothing is deleted; "
            "fix the backups first, or prune with a window that covers the newest backup"
        )
        for item in plan.delete:
            item.action = "keep"
            item.rules = ["refused: newest backup too old"]
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


# ---------------------------------------------------------------------------
# Reading the destination and applying a plan
# ---------------------------------------------------------------------------


@dataclass
class Inventory:
    """The backups under a destination, plus leftovers of half-deleted ones."""

    manifests: list[Manifest]
    leftovers: list[str]
    ignored: list[str]  # dumps without a manifest: not backups, never touched


def take_inventory(destination: Destination, database: str | None = None) -> Inventory:
    """Read every manifest once; a manifest whose dump is gone is a leftover, not a backup."""
    objects = {obj.name for obj in destination.list()}
    manifests: list[Manifest] = []
    leftovers: list[str] = []
    named: set[str] = set()
    for name in sorted(objects):
        if not name.endswith(MANIFEST_SUFFIX):
            continue
        try:
            manifest = read_manifest(destination, name)
        except DbopsError:
            continue  # not ours to judge: never deleted
        own = _backup_objects(manifest)
        if not all(n.startswith(manifest.backup_id + ".") for n in own):
            continue  # a manifest naming objects outside its backup: never acted on
        named.update(own)
        if database and manifest.database != database:
            continue
        if manifest.dump.name not in objects:
            leftovers.extend(n for n in own if n in objects)
            continue
        sidecar = manifest.backup_id + VERIFIED_SUFFIX
        if sidecar in objects:
            manifest.verification = read_verification(destination, sidecar)
        manifests.append(manifest)
    for name in sorted(objects):
        if name.endswith(VERIFIED_SUFFIX) and name not in named:
            backup_id = name[: -len(VERIFIED_SUFFIX)]
            if not database or backup_id.startswith(f"{database}_"):
                leftovers.append(name)
    ignored = sorted(
        n for n in objects if n not in named and not n.endswith((VERIFIED_SUFFIX, MANIFEST_SUFFIX))
    )
    manifests.sort(key=lambda m: (m.started_at, m.backup_id), reverse=True)
    return Inventory(manifests, leftovers, ignored)


def _backup_objects(manifest: Manifest) -> list[str]:
    """A backup's objects in deletion order: the manifest, its completion mark, goes last."""
    names = [manifest.dump.name]
    if manifest.globals is not None:
        names.append(manifest.globals.name)
    names += [manifest.backup_id + VERIFIED_SUFFIX, manifest.manifest_name]
    return names


@dataclass
class PruneResult:
    deleted_backups: list[str]
    deleted_objects: list[str]
    aborted_uploads: list[str]


def apply_plan(destination: Destination, plan: RetentionPlan, inventory: Inventory) -> PruneResult:
    """Delete what the plan marks for deletion; a refused plan deletes nothing."""
    if plan.refused:
        raise DbopsError(f"prune refused: {plan.refused}")
    by_id = {m.backup_id: m for m in inventory.manifests}
    result = PruneResult([], [], [])
    for item in plan.delete:
        for name in _backup_objects(by_id[item.backup_id]):
            _delete(destination, name)
            result.deleted_objects.append(name)
        result.deleted_backups.append(item.backup_id)
    for name in plan.leftovers:
        _delete(destination, name)
        result.deleted_objects.append(name)
    return result


def _delete(destination: Destination, name: str) -> None:
    try:
        destination.delete(name)
    except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
        error = TransientError if isinstance(exc, botocore.exceptions.BotoCoreError) else DbopsError
        raise error(
            f"deleting {destination.url_for(name)} failed ({type(exc).__name__}); "
            "run prune again to finish: a backup missing its dump is no longer listed"
        ) from None
    except OSError as exc:
        raise DbopsError(
            f"deleting {destination.url_for(name)} failed: {exc.strerror}; "
            "fix the permissions and run prune again"
        ) from None


def stale_partial_writes(destination: Destination, older_than: timedelta, now: datetime) -> list:
    """Incomplete writes older than `older_than`: S3 multipart uploads never completed or
    aborted (they cost storage and no listing shows them), or a local directory's temporary
    `.partial-` files left by a killed process."""
    found: list[dict[str, Any]] = []
    if isinstance(destination, S3Destination):
        try:
            uploads = destination.incomplete_uploads()
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise DbopsError(
                f"listing incomplete uploads in s3://{destination.bucket} failed "
                f"({type(exc).__name__}); grant s3:ListBucketMultipartUploads or skip with "
                "--abort-uploads-older-than-hours 0"
            ) from None
        for upload in uploads:
            initiated = upload["Initiated"]
            if now - initiated >= older_than:
                found.append(
                    {"key": upload["Key"], "upload_id": upload["UploadId"], "since": initiated}
                )
    elif isinstance(destination, LocalDestination) and destination.root.is_dir():
        for entry in os.scandir(destination.root):
            if PARTIAL_MARK not in entry.name or not entry.is_file():
                continue
            since = datetime.fromtimestamp(entry.stat().st_mtime, UTC)
            if now - since >= older_than:
                found.append({"key": entry.name, "upload_id": None, "since": since})
    return found


def abort_partial_writes(destination: Destination, stale: list[dict[str, Any]]) -> list[str]:
    aborted = []
    for item in stale:
        if isinstance(destination, S3Destination):
            try:
                destination.client.abort_multipart_upload(
                    Bucket=destination.bucket, Key=item["key"], UploadId=item["upload_id"]
                )
            except botocore.exceptions.ClientError as exc:
                if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                    raise DbopsError(
                        f"aborting the upload of s3://{destination.bucket}/{item['key']} "
                        f"failed ({exc.response.get('Error', {}).get('Code')}); grant "
                        "s3:AbortMultipartUpload"
                    ) from None
        elif isinstance(destination, LocalDestination):
            (destination.root / item["key"]).unlink(missing_ok=True)
        aborted.append(item["key"])
    return aborted

"""The copy's Prefect task: choose the backups, copy each (checked), record, report."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.backup.manifest import Manifest, list_manifests
from tasks.copies.locations import Location, backup_locations
from tasks.copies.report import CopyFailure, CopyReport, publish_copies
from tasks.copies.transfer import check_copy_targets, copy_backup, refuse_same_place
from tasks.core.errors import DbopsError, NotFoundError, TransientError, first_line, retry_transient
from tasks.core.settings import Settings
from tasks.storage.destinations import Destination, S3Options


def copy_target(url: str, s3: S3Options) -> Destination:
    """The second place; Object Lock applies to S3 targets only (a directory cannot lock)."""
    if not url.startswith("s3://"):
        s3 = s3.model_copy(update={"object_lock": None, "object_lock_days": None})
    return Destination.from_url(url, s3)


def choose_backups(
    source: Destination, target: Destination, backup_id: str | None, database: str | None
) -> list[Manifest]:
    """`backup_id` (or `latest`: the newest of each database), or else every backup the
    target lacks, oldest first."""
    manifests = list_manifests(source, database)
    if backup_id == "latest":
        newest: dict[tuple[str, str], Manifest] = {}
        for manifest in manifests:
            newest.setdefault((manifest.server_key, manifest.database), manifest)
        return list(newest.values())
    if backup_id:
        chosen = [m for m in manifests if m.backup_id == backup_id]
        if not chosen:
            raise NotFoundError(
                f"no complete backup {backup_id!r} under {source.url}; `dbops list` shows them"
            )
        return chosen
    present = {obj.name for obj in target.list()}
    return [m for m in reversed(manifests) if m.manifest_name not in present]


@task(name="check-copy-targets", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def check_targets(backup_url: str | None, s3: S3Options | None, copy_to: list[str]) -> None:
    """One clear line before a backup is taken when a --copy-to target cannot take it."""
    settings = Settings.load(None, backup_url, s3)
    check_copy_targets(settings.destination(), [copy_target(u, settings.s3) for u in copy_to])


@task(name="find-copies", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def find_copies(
    backup_url: str | None, s3: S3Options | None, database: str | None
) -> dict[str, list[Location]]:
    """Where each backup exists: its destination and every recorded copy still in place."""
    settings = Settings.load(None, backup_url, s3)
    source = settings.destination()
    return backup_locations(source, list_manifests(source, database), settings.s3)


@task(name="copy-to-destination", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def copy_to_destination(
    backup_url: str | None,
    s3: S3Options | None,
    copy_to: str,
    target_s3: S3Options | None,
    backup_id: str | None,
    database: str | None = None,
) -> CopyReport:
    """Each chosen backup is copied whole or not at all; one failure does not stop the rest."""
    logger = get_run_logger()
    settings = Settings.load(None, backup_url, s3)
    source = settings.destination()
    target = copy_target(copy_to, target_s3 or settings.s3)
    refuse_same_place(source, target)
    target.check_writable()  # a bucket without Object Lock is refused before any write
    report = CopyReport(source=source.url, target=target.url)
    for manifest in choose_backups(source, target, backup_id, database):
        try:
            outcome = copy_backup(source, target, manifest)
        except TransientError:
            raise  # the store, not the backup: the task's retries start over (copies skip)
        except DbopsError as exc:
            logger.error("Copy of %s to %s failed: %s", manifest.backup_id, target.url, exc)
            report.failed.append(CopyFailure(backup_id=manifest.backup_id, error=first_line(exc)))
            continue
        if outcome.already_there:
            report.already_there.append(manifest.backup_id)
        else:
            report.copied.append(manifest.backup_id)
            report.bytes += outcome.record.bytes
            logger.info("Copied %s to %s (checked)", manifest.backup_id, target.url)
    publish_copies(report)
    return report

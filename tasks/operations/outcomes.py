"""Each flow's outcome as a Prefect event, plus the hooks every dbops flow carries.

The flows call one function per outcome (`backup_completed(manifest, ...)`); the hooks
(`outcome_hooks("backup")`) do what every run does: heartbeat pings, the failure (and, when
asked, success) webhook, and a `dbops.<noun>.failed` event when the run failed before it
could say more. A run that already emitted its own outcome event emits no second one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.backup.identity import ServerIdentity, identify_server
from tasks.core.events import UNKNOWN, Subject, emit_dbops_event
from tasks.core.notify import clean, notify_failure, notify_success
from tasks.core.pings import Ping, ping

if TYPE_CHECKING:
    from tasks.backup.manifest import Manifest
    from tasks.restore.restore import RestoreResult
    from tasks.restore.restore_test import VerificationRecord
    from tasks.storage.destinations import S3Options

ALL = "all"  # the subject of a run over every database of a location (prune, freshness)
# Flow runs (ids) of this process that emitted their own outcome event.
_REPORTED: set[str] = set()
# How long a failing run's hook may spend learning the server's identity.
IDENTIFY_TIMEOUT_SECONDS = "3"


def _current_run() -> str | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else None


def emit(noun: str, verb: str, subject: Subject, payload: dict[str, Any]) -> None:
    """Emit an outcome event and remember that this run reported its outcome."""
    emit_dbops_event(noun, verb, subject, payload)
    run = _current_run()
    if run:
        _REPORTED.add(run)


def subject_of_url(
    database_url: str | None, database: str | None = None, backup_id: str | None = None
) -> Subject:
    """The database a URL (or DATABASE_URL) names, with its server's identity when reachable."""
    from tasks.core.postgres import ConnInfo
    from tasks.core.settings import Settings

    try:
        info = Settings.load(database_url).connection()
    except Exception:  # noqa: BLE001 - no URL, a bad one, a missing Secret: say what is known
        return Subject(database=database or UNKNOWN, backup_id=backup_id)
    quick = ConnInfo(
        params={**info.params, "connect_timeout": IDENTIFY_TIMEOUT_SECONDS},
        app_params=info.app_params,
    )
    try:
        identity = identify_server(quick)
    except Exception:  # noqa: BLE001 - unreachable: name it by how it is reached
        host = info.params.get("host", "") or info.params.get("hostaddr", "")
        identity = ServerIdentity(host=host, port=info.params.get("port", ""))
    return Subject(database=database or info.dbname, server=identity.key, backup_id=backup_id)


def _location(backup_url: str | None, s3: S3Options | None) -> str | None:
    """Where the backup is, as an s3:// URL or a directory (an S3Bucket block resolved)."""
    from tasks.core.settings import Settings, resolve_secret

    env = Settings.from_env()
    try:
        url = resolve_secret(backup_url or env.backup_url) or env.backup_url
        return env.model_copy(update={"backup_url": url, "s3": s3 or env.s3}).destination().url
    except Exception:  # noqa: BLE001 - the event goes out without it
        return None


# -- one function per outcome: what the flows call -----------------------------------------


def backup_completed(manifest: Manifest, backup_url: str | None, s3: S3Options | None) -> None:
    emit(
        "backup",
        "completed",
        Subject(
            database=manifest.database, server=manifest.server_key, backup_id=manifest.backup_id
        ),
        {
            "location": _location(backup_url, s3),
            "dump": manifest.dump.name,
            "size_bytes": manifest.stored_size,
            "raw_size_bytes": manifest.dump.raw_size,
            "sha256": manifest.dump.sha256,
            "format": manifest.format,
            "compression": manifest.compression,
            "duration_seconds": manifest.duration_seconds,
            "tables": len(manifest.row_counts),
            "rows": sum(manifest.row_counts.values()),
            "labels": manifest.labels,
            "started_at": manifest.started_at.isoformat(),
        },
    )


def restore_completed(result: RestoreResult, database_url: str | None) -> None:
    emit(
        "restore",
        "completed",
        subject_of_url(database_url, backup_id=result.backup_id),
        {
            "source": result.source,
            "bytes_read": result.bytes_read,
            "duration_seconds": result.seconds,
            "sha256": result.sha256,
            "checksum_verified": result.checksum_verified,
            "row_counts_checked": result.row_counts_checked,
            "tables": result.tables,
            "replaced_existing": result.replaced_existing,
        },
    )


def verify_finished(record: VerificationRecord) -> None:
    """`dbops.verify.passed` or `.failed`: a verdict about the backup, not about the run."""
    emit(
        "verify",
        "passed" if record.ok else "failed",
        Subject(
            database=record.database or UNKNOWN,
            server=record.backup_server or UNKNOWN,
            backup_id=record.backup_id,
        ),
        {
            "detail": record.detail,
            "failed_check": record.failed_check,
            "dump": record.dump,
            "sha256": record.sha256,
            "checksum_verified": record.checksum_verified,
            "row_counts_match": record.row_counts_match,
            "tables": record.tables,
            "rows": record.rows,
            "bytes_read": record.bytes_read,
            "restore_seconds": record.restore_seconds,
        },
    )


def prune_finished(report: Any) -> None:
    """One `dbops.prune.deleted` per (server, database) that lost backups."""
    deleted = set(report.deleted_backups)
    groups: dict[tuple[str, str], list[str]] = {}
    for item in report.items:
        if item.backup_id in deleted:
            groups.setdefault((item.server, item.database), []).append(item.backup_id)
    for (server, database), ids in sorted(groups.items()):
        kept = [i for i in report.items if (i.server, i.database) == (server, database)]
        emit(
            "prune",
            "deleted",
            Subject(database=database, server=server),
            {
                "location": report.location,
                "deleted": len(ids),
                "deleted_backups": sorted(ids),
                "kept": len(kept) - len(ids),
            },
        )
    if not groups:  # nothing to delete is an outcome too: the hook emits no second event
        run = _current_run()
        if run:
            _REPORTED.add(run)


def migration_finished(summary: Any, database_url: str | None) -> None:
    """`dbops.migration.applied`, `.rolled-back` (failed, backup restored) or `.failed`."""
    status = str(summary.status)
    state = str(summary.database_state or "")
    if status == "applied":
        verb = "applied"
    elif state == "restored":
        verb = "rolled-back"
    elif status in ("failed", "cancelled"):
        verb = "failed" if status == "failed" else "cancelled"
    else:
        return
    backup = summary.backup
    emit(
        "migration",
        verb,
        subject_of_url(database_url, summary.database, backup.backup_id if backup else None),
        {
            "status": status,
            "database_state": state or None,
            "target_version": summary.target_version,
            "applied": [a.id for a in summary.applied or []],
            "undone": summary.undone,
            "duration_seconds": summary.seconds,
            "error": clean(summary.error) if summary.error else None,
        },
    )


# -- hooks every dbops flow carries ------------------------------------------------------------


def _ping_url(flow: Any, flow_run: Any) -> str | None:
    """The `ping_url` parameter, else DBOPS_PING_URL, for flows that have the parameter: a
    monitor's check watches one job (the backup), not every flow of the worker."""
    from tasks.core.settings import Settings

    if "ping_url" not in flow.parameters.properties:
        return None
    parameters = getattr(flow_run, "parameters", None) or {}
    return parameters.get("ping_url") or Settings.from_env().ping_url


def _log(flow_run: Any) -> Any:
    """The run's own logger: what a hook logs reaches the Prefect server with the run."""
    from prefect.logging.loggers import flow_run_logger

    return flow_run_logger(flow_run)


def _subject_of_run(flow: Any, flow_run: Any) -> Subject:
    """The database a run was about, from its parameters; `all` for flows over a location."""
    parameters = getattr(flow_run, "parameters", None) or {}
    database = parameters.get("database") or parameters.get("from_database")
    if "database_url" in flow.parameters.properties:
        return subject_of_url(parameters.get("database_url"), database)
    return Subject(database=database or ALL, server=ALL)


def outcome_hooks(
    noun: str, failed_verb: str = "failed", notify: bool = True
) -> dict[str, list[Any]]:
    """`@flow(name=..., **outcome_hooks("backup"))`: pings, webhook and events for every run.

    One hook per state (Prefect logs two lines per hook it runs); each part is guarded, so a
    monitor or webhook that is down never changes the run's outcome. `notify=False` for flows
    that post their own message (restore and migrate say what became of the application).
    """

    def dbops_started(flow: Any, flow_run: Any, state: Any) -> None:
        text = f"{flow.name} {flow_run.name} started"
        ping(_ping_url(flow, flow_run), Ping.START, text, _log(flow_run))

    def dbops_completed(flow: Any, flow_run: Any, state: Any) -> None:
        if str(flow_run.id) not in _REPORTED:
            subject = _subject_of_run(flow, flow_run)
            emit_dbops_event(noun, "completed", subject, {"flow": flow.name})
        text = f"{flow.name} {flow_run.name} completed"
        ping(_ping_url(flow, flow_run), Ping.SUCCESS, text, _log(flow_run))
        if notify:
            notify_success(flow, flow_run, state)

    def dbops_failed(flow: Any, flow_run: Any, state: Any) -> None:
        message = clean(state.message or state.name)
        if str(flow_run.id) not in _REPORTED:
            emit_dbops_event(
                noun,
                failed_verb,
                _subject_of_run(flow, flow_run),
                {"state": state.name, "error": message, "flow": flow.name},
            )
        text = f"{flow.name} {flow_run.name} {state.name}: {message}"
        ping(_ping_url(flow, flow_run), Ping.FAIL, text, _log(flow_run))
        if notify:
            notify_failure(flow, flow_run, state)

    return {
        "on_running": [dbops_started],
        "on_completion": [dbops_completed],
        "on_failure": [dbops_failed],
        "on_crashed": [dbops_failed],
    }


def backup_missing(
    resource_id: str, database: str, server: str, last_backup_id: str, hours: float
) -> str:
    """What the absence automation runs: say which database has had no backup, emit
    `dbops.backup.missing` and post it to the webhook when one is configured."""
    from prefect.logging import get_run_logger

    from tasks.core.notify import post_webhook
    from tasks.core.settings import Settings, resolve_secret

    text = (
        f"no dbops.backup.completed for database {database!r} on server {server} in "
        f"{hours:g} h (last backup: {last_backup_id or 'unknown'}); check the backup "
        "deployment, its worker and the Prefect server"
    )
    get_run_logger().warning("%s", text)
    emit(
        "backup",
        "missing",
        Subject(database=database or UNKNOWN, server=server or UNKNOWN),
        {"watched_resource": resource_id, "last_backup_id": last_backup_id, "hours": hours},
    )
    url = resolve_secret(Settings.from_env().webhook_url)
    if url:
        try:
            post_webhook(url, f":warning: dbops: {clean(text)}")
        except Exception as exc:  # noqa: BLE001 - the run's log and event still say it
            get_run_logger().warning("could not post to the webhook: %s", clean(str(exc)))
    return text

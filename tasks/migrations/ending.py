"""How a migration run that did not complete ends: restore or not, and the one-line message.

The backup is restored only when something of this run committed (a recorded
migration, or statements of one outside a transaction): restoring when nothing
changed would only lose the writes made since the backup. A cancelled run never
restores (a cancel's kill deadline would cut the restore short): transactional
migrations are applied and recorded or not at all, so the database is as before
or migrated-and-recorded. The final message is what CD sees as the run's state
message: whether the database was restored, what was applied and undone, and
the pre-migration backup.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tasks.backup.encryption import AGE_SUFFIX
from tasks.migrations.outcomes import DatabaseState, PreMigrationBackup, RunProgress
from tasks.migrations.plan import MigrationPlan
from tasks.migrations.runner import FailureKind, MigrationFailed


@dataclass(frozen=True)
class Decision:
    state: DatabaseState
    restore: bool = False
    undone: tuple[str, ...] = ()


def seen_progress(applied: list[str], failure: BaseException | None) -> RunProgress:
    """What the run saw itself, when the history table cannot be read."""
    unfinished = []
    if (
        isinstance(failure, MigrationFailed)
        and not failure.transactional
        and failure.kind != FailureKind.CANNOT_START
    ):
        unfinished = [failure.migration_id]
    return RunProgress(applied=applied, unfinished=unfinished)


def decide(
    plan: MigrationPlan, progress: RunProgress, failure: BaseException | None, cancelled: bool
) -> Decision:
    """Whether to restore the pre-migration backup, and what the database holds otherwise."""
    if plan.mode == "command":  # only the tool knows what it committed
        if cancelled:
            return Decision(DatabaseState.UNKNOWN)
        return Decision(DatabaseState.RESTORED, True, (f"`{plan.command}`",))
    undone = list(progress.applied)
    if isinstance(failure, MigrationFailed) and failure.committed_statements:
        count = failure.committed_statements
        which = "statement 1" if count == 1 else f"statements 1-{count}"
        undone.append(f"{failure.migration_id} ({which} of it, outside a transaction)")
    if undone and not cancelled:
        return Decision(DatabaseState.RESTORED, True, tuple(undone))
    if progress.unfinished:
        return Decision(DatabaseState.UNFINISHED)
    if progress.applied:
        return Decision(DatabaseState.MIGRATED)
    return Decision(DatabaseState.UNCHANGED)


@dataclass(frozen=True)
class Ending:
    """How a run that did not complete ended, for its one-line final message."""

    database: str
    state: DatabaseState
    backup: PreMigrationBackup | None
    reason: str | None = None  # the failure; None for a cancel
    progress: RunProgress = field(default_factory=RunProgress)
    undone: tuple[str, ...] = ()
    pending: tuple[str, ...] = ()
    rollback_error: str | None = None
    application_error: str | None = None  # the application was not started again


def ending_message(end: Ending) -> str:
    """Says whether the database was restored, what was applied (and undone), and the backup;
    first of all when the application was left stopped."""
    text = _database_message(end)
    return f"{end.application_error}; {text}" if end.application_error else text


def _database_message(end: Ending) -> str:
    head = (
        f"migration of {end.database} was cancelled"
        if end.reason is None
        else f"migration of {end.database} failed: {end.reason}"
    )
    if end.backup is None:
        return f"{head}; nothing was applied (no pre-migration backup was taken yet)"
    where = f"{end.backup.backup_id} ({end.backup.url})"
    applied = ", ".join(end.progress.applied)
    not_applied = [m for m in end.pending if m not in end.progress.applied]
    kept = f"; pre-migration backup {where} was taken and kept"
    key = " --identity FILE" if end.backup.url.endswith(AGE_SUFFIX) else ""  # it is encrypted
    match end.state:
        case DatabaseState.RESTORED:
            return (
                f"migration rolled back: database {end.database} was restored from pre-migration "
                f"backup {where} after: {end.reason}; applied and undone: "
                f"{', '.join(end.undone)}; writes made to {end.database} since the backup are gone"
            )
        case DatabaseState.ROLLBACK_FAILED:
            return (
                f"ROLLBACK FAILED: {head}, after {', '.join(end.undone)} changed the database, "
                f"and restoring the pre-migration backup failed too ({end.rollback_error}); the "
                "database may be half migrated: restore it by hand with `dbops restore "
                f"{end.backup.backup_id} --clean{key}` from the backup at {end.backup.url}"
            )
        case DatabaseState.UNFINISHED:
            done = f"; applied and recorded: {applied}" if applied else ""
            return (
                f"{head}; the database was not restored: migration "
                f"{', '.join(end.progress.unfinished)} ran outside a transaction and stopped part "
                "way, so its history row stays unfinished: check the database against it, then "
                f"clear the record with repair (`dbops migrate --repair --yes`){done}{kept}"
            )
        case DatabaseState.MIGRATED:
            rest = f"; not applied: {', '.join(not_applied)}" if not_applied else ""
            return (
                f"{head}; applied and recorded: {applied}{rest}; the database was not "
                f"restored{kept}"
            )
        case DatabaseState.UNKNOWN:
            return (
                f"{head} while the migration command ran: only the tool's own history says what "
                "it applied; the database was not restored; to go back, run `dbops restore "
                f"{end.backup.backup_id} --clean{key}`{kept}"
            )
        case _:
            return (
                f"{head}; nothing was applied; the database was not restored (no write lost){kept}"
            )

"""What a migration run returns and reports: a typed summary, not a dict read by key."""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from tasks.application.window import ApplicationReport
from tasks.migrations.checks import CheckResult
from tasks.migrations.command import CommandResult
from tasks.migrations.plan import MigrationPlan
from tasks.migrations.runner import AppliedResult


class MigrationStatus(StrEnum):
    PLANNED = "planned"  # dry run: nothing changed
    UP_TO_DATE = "up-to-date"  # nothing pending: checked, nothing backed up or changed
    APPLIED = "applied"  # backed up, migrated and verified
    FAILED = "failed"  # see database_state: unchanged, restored, or the rollback failed
    CANCELLED = "cancelled"  # interrupted: see database_state; never restored
    REPAIRED = "repaired"  # repair: unfinished history rows removed, nothing migrated


class DatabaseState(StrEnum):
    """Where a run that did not complete left the database (its final message says it too)."""

    UNCHANGED = "unchanged"  # nothing was applied; not restored, no write lost
    UNFINISHED = "unfinished"  # a migration outside a transaction stopped part way: repair
    MIGRATED = "migrated"  # cancelled: the recorded migrations are applied; not restored
    RESTORED = "restored"  # something was applied, the pre-migration backup was restored
    ROLLBACK_FAILED = "rollback-failed"  # something was applied and the restore failed
    UNKNOWN = "unknown"  # an interrupted migration command: it alone knows what it did


class RunProgress(BaseModel):
    """What this run got into the database, as its history table says after a failure."""

    applied: list[str] = Field(default_factory=list, description="finished and recorded")
    unfinished: list[str] = Field(
        default_factory=list, description="started outside a transaction, never finished"
    )


class PreMigrationBackup(BaseModel):
    """The backup a failed migration is rolled back to."""

    backup_id: str
    url: str
    sha256: str


class RollbackOutcome(BaseModel):
    """What restoring the pre-migration backup did, for the flow's final message."""

    restored: bool
    backup: PreMigrationBackup
    seconds: float | None = None
    error: str | None = None
    application: ApplicationReport | None = None  # stopped and started around the swap
    application_error: str | None = None  # the application was not started again


class MigrationSummary(BaseModel):
    """The flow's result; the parts a run did not reach are absent from its JSON."""

    status: MigrationStatus
    database: str
    mode: Literal["directory", "command"]
    target_version: str
    plan: MigrationPlan
    backup: PreMigrationBackup | None = None
    applied: list[AppliedResult] | None = None
    command: CommandResult | None = None
    checks: list[CheckResult] | None = None
    database_state: DatabaseState | None = None
    undone: list[str] | None = Field(None, description="applied, then undone by the restore")
    repaired: list[str] | None = Field(None, description="unfinished records removed")
    application: ApplicationReport | None = Field(
        None, description="the application's stop and start around the rollback's swap"
    )
    seconds: float | None = None
    error: str | None = None

    @classmethod
    def of(cls, plan: MigrationPlan, status: MigrationStatus) -> MigrationSummary:
        return cls(
            status=status,
            database=plan.database,
            mode=plan.mode,
            target_version=plan.target_version,
            plan=plan,
        )

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}

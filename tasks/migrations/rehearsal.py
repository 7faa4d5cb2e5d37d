"""A migration rehearsed on a restored copy: what each statement did, rated green/amber/red.

The pending migrations run in the scratch copy through the same runner, with
the same timeouts, as in production; `observe.Observer` records each
statement's locks, rewrites, scans and rows, and squawk's lint of the file is
placed beside it. A statement is red when it failed, or when it held a lock
that blocks writes (SHARE and stronger) on a table that existed before for
longer than `max_lock_seconds`; amber when it rewrote a table, built an index
without CONCURRENTLY, or squawk found something; green otherwise. The sum of
the migrations' times on the copy is the expected production duration.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum

from pydantic import BaseModel, Field

from tasks.core.postgres import ConnInfo
from tasks.core.settings import Settings
from tasks.migrations.checks import CheckResult
from tasks.migrations.command import run_command
from tasks.migrations.files import Migration, read_planned
from tasks.migrations.lint import LintFinding, lint_migration, place_findings
from tasks.migrations.observe import (
    BLOCKS_WRITES,
    LockSampler,
    Observer,
    RelationEffect,
    StatementObservation,
    effects_between,
    lock_label,
    snapshot,
)
from tasks.migrations.runner import MigrationFailed, RunOptions, apply_migration
from tasks.migrations.statements import Statement, split_statements

REHEARSAL_APPLIED_BY = "dbops-rehearsal"
BLOCKING = {lock_label(mode) for mode in BLOCKS_WRITES}

CONCURRENTLY = (
    "build it with CREATE INDEX CONCURRENTLY, in a migration of its own whose first line is "
    "`-- dbops:no-transaction`: writes go on during the build"
)
REWRITE = (
    "avoid the rewrite: add a new column of the new type, backfill it in batches, switch the "
    "application over, then drop the old column (varchar(n) to a larger n or to text needs "
    "no rewrite)"
)
NOT_NULL = (
    "add the column nullable and without a volatile default, backfill it in batches, then add "
    "CHECK (col IS NOT NULL) NOT VALID, VALIDATE it, and SET NOT NULL"
)
NOT_VALID = (
    "add the constraint NOT VALID, then VALIDATE CONSTRAINT in a later migration (it takes "
    "only SHARE UPDATE EXCLUSIVE)"
)
ADVICE = {
    "require-concurrent-index-creation": CONCURRENTLY,
    "require-concurrent-index-deletion": "drop it with DROP INDEX CONCURRENTLY, outside a "
    "transaction (`-- dbops:no-transaction`)",
    "changing-column-type": REWRITE,
    "adding-field-with-default": NOT_NULL,
    "adding-required-field": NOT_NULL,
    "adding-not-nullable-field": NOT_NULL,
    "adding-foreign-key-constraint": NOT_VALID,
    "constraint-missing-not-valid": NOT_VALID,
}


class Rating(StrEnum):
    GREEN = "green"
    AMBER = "amber"
    RED = "red"


def worst(ratings: list[Rating]) -> Rating:
    order = [Rating.GREEN, Rating.AMBER, Rating.RED]
    return max(ratings, key=order.index, default=Rating.GREEN)


class RehearsalChecks(BaseModel):
    """The production run's checks, run on the copy after the rehearsal."""

    builtin: bool = True
    sql: str | None = Field(None, description="the verify_sql file's text")
    sql_source: str = ""
    command: str | None = None
    workdir: str | None = None
    timeout_seconds: float = 3600


class RehearsedStatement(BaseModel):
    index: int = Field(description="1-based position in its migration")
    line: int
    sql: str = Field(description="the statement's first line")
    ran: bool = Field(description="false: it failed, or an earlier one did")
    seconds: float = 0.0
    rows: int | None = Field(None, description="rows the server reported (DML)")
    observed: str = Field(
        "", description="exact (same session, before COMMIT), sampled (a second session), or ''"
    )
    samples: int | None = Field(
        None, description="sampled: how often pg_locks was read while it ran (every ~10 ms)"
    )
    effects: list[RelationEffect] = Field(default_factory=list)
    lint: list[LintFinding] = Field(default_factory=list)
    rating: Rating = Rating.GREEN
    reasons: list[str] = Field(default_factory=list)
    advice: list[str] = Field(default_factory=list)


class RehearsedMigration(BaseModel):
    id: str
    transactional: bool = True
    seconds: float = 0.0
    rating: Rating = Rating.GREEN
    rehearsed: bool = Field(True, description="false: not applied, an earlier one failed")
    error: str | None = None
    statements: list[RehearsedStatement] = Field(default_factory=list)
    observed_by: str = Field(
        "runner", description="runner: per statement; sampler: an external tool, as a whole"
    )


def rate(statement: RehearsedStatement, max_lock_seconds: float) -> None:
    """Fill rating, reasons and advice from what happened and what squawk said."""
    red, amber, advice = [], [], []
    for effect in statement.effects:
        if effect.lock in BLOCKING and effect.held_seconds > max_lock_seconds:
            red.append(
                f"held {effect.lock} on {effect.relation} for {effect.held_seconds:.3f} s "
                f"(> {max_lock_seconds:g} s), blocking {effect.blocks}"
            )
        if effect.rewritten:
            amber.append(f"rewrote {effect.relation} under {effect.lock}")
            advice.append(REWRITE)
        elif effect.lock == "SHARE" and _builds_index(statement.sql):
            amber.append(
                f"built an index under SHARE on {effect.relation}: writes wait for the build"
            )
            advice.append(CONCURRENTLY)
    for finding in statement.lint:
        amber.append(f"squawk {finding.rule}: {finding.message}")
        advice.append(ADVICE.get(finding.rule) or finding.help or "")
    statement.reasons = red + amber
    statement.advice = list(dict.fromkeys(a for a in advice if a))
    statement.rating = Rating.RED if red else Rating.AMBER if amber else Rating.GREEN
    if statement.ran and statement.observed == "sampled" and not statement.samples:
        statement.reasons.append(
            "finished before the sampling session looked: its locks were not observed "
            "(squawk's lint above stands)"
        )


def _builds_index(sql: str) -> bool:
    words = sql.lower().split()
    return words[:2] == ["create", "index"] or words[:3] == ["create", "unique", "index"]


def _statement(
    index: int, statement: Statement, seen: StatementObservation | None, lint: list[LintFinding]
) -> RehearsedStatement:
    result = RehearsedStatement(
        index=index, line=statement.line, sql=statement.summary, ran=False, lint=lint
    )
    if seen is not None and seen.finished:
        result.ran, result.seconds, result.rows = True, round(seen.seconds, 3), seen.rows
        result.effects = seen.effects
        result.observed = "sampled" if seen.sampled else "exact"
        result.samples = seen.samples if seen.sampled else None
    return result


def rehearse_migration(
    scratch: ConnInfo,
    migration: Migration,
    options: RunOptions,
    max_lock_seconds: float,
    pg_major: int | None,
    log: Callable[[str], None],
    apply: bool = True,
) -> RehearsedMigration:
    """Lint the file, apply it (unless an earlier one failed) with every statement observed,
    and rate each statement."""
    statements = split_statements(read_planned(migration))
    placed = place_findings(lint_migration(migration, pg_major), statements)
    observer = Observer(scratch)
    result = RehearsedMigration(id=migration.id, transactional=migration.transactional)
    if apply:
        started = time.perf_counter()
        try:
            apply_migration(scratch, migration, REHEARSAL_APPLIED_BY, options, log, observer)
        except MigrationFailed as exc:
            result.error = str(exc)
        finally:
            observer.ended(time.perf_counter())
        # The migration's own time: what observing it added is left out.
        result.seconds = round(time.perf_counter() - started - observer.overhead, 3)
    else:
        result.rehearsed = False
    seen = {o.index: o for o in observer.observed}
    result.statements = [
        _statement(i, s, seen.get(i), placed.get(i, []) + (placed.get(0, []) if i == 1 else []))
        for i, s in enumerate(statements, start=1)
    ]
    for statement in result.statements:
        rate(statement, max_lock_seconds)
    ratings = [s.rating for s in result.statements]
    result.rating = Rating.RED if result.error else worst(ratings)
    return result


def rehearse_command(
    settings: Settings,
    command: str,
    workdir: str | None,
    timeout_seconds: float,
    max_lock_seconds: float,
    log: Callable[[str], None],
) -> RehearsedMigration:
    """Another tool's migrations run as a whole, watched by a sampling session: every lock
    any of its sessions held, for about how long, and which tables were rewritten."""
    scratch = settings.connection()
    result = RehearsedMigration(id=command, observed_by="sampler")
    with scratch.connect() as conn:
        before = snapshot(conn, in_transaction=False)
        started = time.perf_counter()
        with LockSampler(scratch, None) as sampler:
            try:
                run_command(command, settings, workdir, timeout_seconds, log)
            except Exception as exc:  # noqa: BLE001 - the rehearsal's outcome, reported
                result.error = str(exc)
        result.seconds = round(time.perf_counter() - started, 3)
        after = snapshot(conn, in_transaction=False)
    effects = effects_between(
        before, after, sampler.seen, lambda oid, mode: sampler.held((oid, mode))
    )
    whole = RehearsedStatement(
        index=1,
        line=1,
        sql=f"external command: {command}",
        ran=result.error is None,
        seconds=result.seconds,
        observed="sampled",
        samples=sampler.samples,
        effects=effects,
    )
    rate(whole, max_lock_seconds)
    result.statements = [whole]
    result.rating = Rating.RED if result.error else whole.rating
    return result


class RehearsalReport(BaseModel):
    """What the rehearsal found, for a person (markdown artifact) and for CD (--json)."""

    database: str = Field(description="the production database the copy is of")
    backup_id: str
    backup_url: str
    scratch: str = Field(description="the scratch database, without password")
    restore_seconds: float = 0.0
    mode: str = "directory"
    max_lock_seconds: float
    migrations: list[RehearsedMigration] = Field(default_factory=list)
    checks: list[CheckResult] = Field(default_factory=list)
    expected_seconds: float = Field(
        0.0, description="the migrations' time on the copy: the expected production duration"
    )
    rating: Rating = Rating.GREEN
    refusals: list[str] = Field(
        default_factory=list, description="why production must not be migrated (red only)"
    )
    notes: list[str] = Field(default_factory=list)
    scratch_dropped: bool = False

    def conclude(self) -> None:
        """Overall rating, expected duration and the reasons to refuse."""
        self.expected_seconds = round(sum(m.seconds for m in self.migrations), 3)
        refusals = []
        for migration in self.migrations:
            if migration.error and migration.rehearsed:
                refusals.append(migration.error)
            for s in migration.statements:
                if s.rating is Rating.RED:
                    refusals += [
                        f"{migration.id} statement {s.index} (line {s.line}: {s.sql}) {reason}"
                        for reason in s.reasons
                        if reason.startswith("held ")
                    ]
        refusals += [f"check failed: {c.name} {c.detail}".strip() for c in self.checks if not c.ok]
        self.refusals = refusals
        ratings = [m.rating for m in self.migrations]
        self.rating = Rating.RED if refusals else worst(ratings)

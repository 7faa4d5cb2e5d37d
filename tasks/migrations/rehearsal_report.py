"""The rehearsal's report: one markdown artifact a person reads at a glance, and one line for
the run's state message (what CD's `prefect deployment run --watch` prints)."""

from __future__ import annotations

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact

from tasks.core.artifacts import artifact_key
from tasks.migrations.rehearsal import Rating, RehearsalReport, RehearsedStatement

MARK = {Rating.GREEN: "🟢 green", Rating.AMBER: "🟠 amber", Rating.RED: "🔴 red"}


def verdict(report: RehearsalReport) -> str:
    """One line: what a production migration would do, or why it must not run."""
    where = f"on a copy of {report.backup_id}"
    if report.refusals:
        more = f" (and {len(report.refusals) - 1} more)" if len(report.refusals) > 1 else ""
        return (
            f"rehearsal of {report.database} {where} refuses the migration: "
            f"{report.refusals[0]}{more}; production was not touched"
        )
    applied = [m.id for m in report.migrations]
    what = ", ".join(applied) if applied else "nothing pending"
    return (
        f"rehearsal of {report.database} {where} passed ({report.rating}): {what}; expected "
        f"production duration {report.expected_seconds:.2f} s"
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _locks(statement: RehearsedStatement) -> str:
    parts = []
    for effect in statement.effects:
        what = [f"{effect.lock} {effect.held_seconds:.3f} s" if effect.lock else ""]
        what += ["rewritten"] if effect.rewritten else []
        what += ["scanned"] if effect.scanned else []
        what += [f"{effect.rows} rows"] if effect.rows else []
        parts.append(f"{effect.relation}: " + ", ".join(w for w in what if w))
    return "<br>".join(_cell(p) for p in parts) or "none on existing tables"


def render(report: RehearsalReport) -> str:
    lines = [
        f"# Migration rehearsal of `{report.database}`: {MARK[report.rating]}",
        "",
        f"**{verdict(report)}**",
        "",
        f"- copy of backup `{report.backup_id}` ({report.backup_url}), restored in "
        f"{report.restore_seconds:.1f} s into `{report.scratch}` "
        f"({'dropped' if report.scratch_dropped else 'NOT dropped'})",
        f"- expected production duration: **{report.expected_seconds:.2f} s** (the migrations' "
        "time on the copy)",
        f"- red: a lock that blocks writes held longer than {report.max_lock_seconds:g} s, or a "
        "failure; amber: a rewrite, an index built without CONCURRENTLY, or a lint finding",
    ]
    lines += [f"- note: {n}" for n in report.notes]
    for migration in report.migrations:
        state = MARK[migration.rating] if migration.rehearsed else "not rehearsed"
        lines += ["", f"## `{migration.id}`: {state}, {migration.seconds:.3f} s"]
        if migration.observed_by == "sampler":
            lines.append(
                "_An external tool's migrations: observed as a whole by a session sampling "
                "pg_locks; locks held under ~10 ms can be missed._"
            )
        if migration.error:
            lines.append(f"**failed: {_cell(migration.error)}**")
        lines += [
            "",
            "| # | line | statement | s | locks (held) / effects | rating | why | safer form |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for s in migration.statements:
            took = f"{s.seconds:.3f}" if s.ran else "not run"
            if s.samples is not None:
                took += f" ({s.samples} samples)"
            lines.append(
                f"| {s.index} | {s.line} | `{_cell(s.sql)}` | {took} | {_locks(s)} | "
                f"{MARK[s.rating]} | {'<br>'.join(_cell(r) for r in s.reasons)} | "
                f"{'<br>'.join(_cell(a) for a in s.advice)} |"
            )
    if report.checks:
        lines += ["", "## Checks on the copy"]
        lines += [
            f"- {'passed' if c.ok else 'FAILED'}: {c.name} {c.detail}".rstrip()
            for c in report.checks
        ]
    return "\n".join(lines)


def publish_rehearsal(report: RehearsalReport) -> None:
    try:
        create_markdown_artifact(
            render(report),
            key=artifact_key(f"migration-rehearsal-{report.database}"),
            description=f"Migration rehearsal of {report.database}",
        )
    except Exception:  # noqa: BLE001 - a report must never hide the real outcome
        get_run_logger().warning("could not publish the rehearsal report artifact")

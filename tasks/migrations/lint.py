"""Static lint of migration files with squawk, each finding placed on the statement it is about.

squawk reads the SQL without a database and knows the lock each statement
needs; the rehearsal shows what really happened on a copy of production. Both
are reported side by side. `require-lock-timeout` and `require-statement-timeout`
are left out: the built-in runner sets both for every migration.
"""

from __future__ import annotations

import json
import subprocess

from pydantic import BaseModel, Field

from tasks.core.client_tools import find_squawk
from tasks.core.errors import DbopsError, first_line
from tasks.migrations.files import Migration
from tasks.migrations.statements import Statement

# The runner sets lock_timeout and statement_timeout itself (RunOptions).
EXCLUDED_RULES = ("require-lock-timeout", "require-statement-timeout")
LINT_TIMEOUT_SECONDS = 60


class LintFinding(BaseModel):
    rule: str = Field(description="squawk's rule name, e.g. require-concurrent-index-creation")
    line: int = Field(description="1-based line in the migration file")
    message: str
    help: str | None = None


def lint_migration(migration: Migration, pg_major: int | None = None) -> list[LintFinding]:
    """squawk's findings for one migration file; a transactional one is linted as it runs, in
    a transaction."""
    argv = [find_squawk(), "--reporter", "json", "--exclude", ",".join(EXCLUDED_RULES)]
    if migration.transactional:
        argv.append("--assume-in-transaction")
    if pg_major:
        argv.append(f"--pg-version={pg_major}.0")
    argv.append(migration.path)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=LINT_TIMEOUT_SECONDS, check=False
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise DbopsError(f"squawk could not lint {migration.path}: {first_line(exc)}") from None
    # squawk exits 1 when it found something; the JSON on stdout is the answer either way.
    try:
        found = json.loads(done.stdout or "[]")
    except ValueError:
        detail = (done.stderr or done.stdout).strip().splitlines()
        raise DbopsError(
            f"squawk could not lint {migration.path}: {detail[-1] if detail else 'no output'}"
        ) from None
    return [
        LintFinding(
            rule=str(item.get("rule_name", "")),
            line=int(item.get("line", 0)) + 1,  # squawk counts lines from 0
            message=str(item.get("message", "")),
            help=item.get("help") or None,
        )
        for item in found
        if item.get("rule_name") not in EXCLUDED_RULES
    ]


def place_findings(
    findings: list[LintFinding], statements: list[Statement]
) -> dict[int, list[LintFinding]]:
    """Findings by the 1-based index of the statement they fall in (the last statement that
    starts at or before the finding's line; 0 for a finding before the first statement)."""
    placed: dict[int, list[LintFinding]] = {}
    for finding in findings:
        index = 0
        for number, statement in enumerate(statements, start=1):
            if statement.line <= finding.line:
                index = number
        placed.setdefault(index, []).append(finding)
    return placed

"""Schema migrations: a built-in runner for directories of SQL files, or another tool's command.

Built-in runner: `NNNN_name.sql` files and Prisma's `<timestamp>_<name>/migration.sql`
folders, applied in numeric order. Each migration runs in its own transaction
together with its row in the history table (`public.dbops_schema_history`: SHA-256,
started/finished times, the Prefect run that applied it), so a migration is either
applied and recorded or neither. A migration whose first line is
`-- dbops:no-transaction` runs statement by statement outside a transaction
(needed for CREATE INDEX CONCURRENTLY). `lock_timeout` bounds every lock wait;
a migration that hits it (SQLSTATE 55P03) or a deadlock is retried with backoff
from its start, after its transaction released every lock it held, so it never
queues traffic behind it for long. An applied migration whose file changed
(checksum drift) or vanished stops the run before anything changes.

Command mode runs `alembic upgrade head`, `npx prisma migrate deploy`, `flyway
migrate`...: DATABASE_URL goes in its environment (never its argv), its output is
streamed line by line into the log, and a non-zero exit is a failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field

from tasks.backup.compression import DecompressingReader
from tasks.backup.manifest import Manifest
from tasks.core.errors import DbopsError, first_line
from tasks.core.postgres import ConnInfo
from tasks.core.streams import CHUNK_SIZE, HashingReader
from tasks.storage.destinations import Destination

NO_TRANSACTION_MARKER = "-- dbops:no-transaction"
HISTORY_SCHEMA = "public"
HISTORY_TABLE = "dbops_schema_history"
_NAME = r"[A-Za-z0-9][A-Za-z0-9_\-]*"
SQL_FILE = re.compile(rf"^(?P<number>\d+)_(?P<name>{_NAME})\.sql$")
PRISMA_DIR = re.compile(rf"^(?P<number>\d+)_(?P<name>{_NAME})$")
PRISMA_FILE = "migration.sql"
PRISMA_HISTORY = "_prisma_migrations"
# Lock timeout and deadlock: both mean "another session was in the way", worth another try.
RETRY_SQLSTATES = {"55P03": "lock timeout", "40P01": "deadlock"}
TRANSACTION_CONTROL = {"begin", "commit", "rollback", "start", "end", "abort"}

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


# ---------------------------------------------------------------------------
# Splitting SQL into statements, the way psql does
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    sql: str
    line: int

    @property
    def summary(self) -> str:
        first = self.sql.strip().splitlines()[0] if self.sql.strip() else ""
        return first if len(first) <= 80 else first[:77] + "..."

    @property
    def first_word(self) -> str:
        found = re.match(r"\s*([A-Za-z_]+)", _strip_leading_comments(self.sql))
        return found.group(1).lower() if found else ""


def _strip_leading_comments(text: str) -> str:
    while True:
        text = text.lstrip()
        if text.startswith("--"):
            text = text.split("\n", 1)[1] if "\n" in text else ""
        elif text.startswith("/*") and "*/" in text:
            text = text.split("*/", 1)[1]
        else:
            return text


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")


def split_statements(text: str) -> list[Statement]:
    """Split on top-level semicolons, skipping strings, quoted identifiers, dollar quotes,
    comments, parentheses and SQL-standard function bodies (BEGIN ATOMIC ... END), with
    psql's rule: BEGIN or CASE after a statement's first word opens a block, END closes it."""
    statements: list[Statement] = []
    i, n = 0, len(text)
    start = None  # offset of the statement's first token
    paren = begin_depth = words = 0

    def finish(end: int) -> None:
        nonlocal start, paren, begin_depth, words
        if start is not None:
            body = text[start:end].strip()
            statements.append(Statement(body, text.count("\n", 0, start) + 1))
        start, paren, begin_depth, words = None, 0, 0, 0

    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            continue
        if c == ";":
            if paren == 0 and begin_depth == 0:
                finish(i)
            i += 1
            continue
        if start is None:
            start = i
        if c == "'":
            i = _skip_quoted(text, i, "'", backslashes=False)
        elif c == '"':
            i = _skip_quoted(text, i, '"', backslashes=False)
        elif c == "$" and (tag := _DOLLAR_TAG.match(text, i)):
            end = text.find(tag.group(0), tag.end())
            i = n if end < 0 else end + len(tag.group(0))
        elif c.isalpha() or c == "_" or ord(c) >= 0x80:
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] in "_$" or ord(text[j]) >= 0x80):
                j += 1
            word = text[i:j].lower()
            if word == "e" and j < n and text[j] == "'":  # E'...' understands backslashes
                i = _skip_quoted(text, j, "'", backslashes=True)
                continue
            words += 1
            if word in ("begin", "case") and words > 1:
                begin_depth += 1
            elif word == "end" and begin_depth > 0:
                begin_depth -= 1
            i = j
        else:
            if c == "(":
                paren += 1
            elif c == ")" and paren > 0:
                paren -= 1
            i += 1
    finish(n)
    return statements


def _skip_quoted(text: str, i: int, quote: str, backslashes: bool) -> int:
    """Offset just past the quoted string starting at text[i]; a doubled quote is literal."""
    i += 1
    n = len(text)
    while i < n:
        c = text[i]
        if backslashes and c == "\\":
            i += 2
            continue
        if c == quote:
            if i + 1 < n and text[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return n


# ---------------------------------------------------------------------------
# Discovery and the plan
# ---------------------------------------------------------------------------


class Migration(BaseModel):
    """One migration on disk; `id` is what the history table records."""

    id: str = Field(description="file stem or Prisma folder name, e.g. 0002_add_posts")
    number: int
    name: str
    path: str
    layout: Literal["file", "prisma"]
    sha256: str
    transactional: bool
    statements: int


class AppliedMigration(BaseModel):
    id: str
    checksum: str
    started_at: str
    finished_at: str | None
    applied_by: str


def checksum(data: bytes) -> str:
    """SHA-256 of the file with CRLF read as LF, so a Windows checkout is not 'drift'."""
    return hashlib.sha256(data.replace(b"\r\n", b"\n")).hexdigest()


def is_transactional(text: str) -> bool:
    first = text.lstrip("\ufeff").split("\n", 1)[0].strip().lower()
    return first.replace(" ", "") != NO_TRANSACTION_MARKER.replace(" ", "")


def read_migration(path: Path, number: int, name: str, mid: str, layout: str) -> Migration:
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise DbopsError(f"migration {path} is not UTF-8 text; save it as UTF-8") from None
    statements = split_statements(text)
    transactional = is_transactional(text)
    if transactional:
        for statement in statements:
            if statement.first_word in TRANSACTION_CONTROL:
                raise DbopsError(
                    f"migration {path} line {statement.line} has {statement.summary!r}: each "
                    "migration already runs in its own transaction; remove the transaction "
                    f"commands, or make '{NO_TRANSACTION_MARKER}' its first line"
                )
    return Migration(
        id=mid,
        number=number,
        name=name,
        path=str(path),
        layout=layout,  # type: ignore[arg-type]
        sha256=checksum(data),
        transactional=transactional,
        statements=len(statements),
    )


def discover_migrations(directory: str | Path) -> list[Migration]:
    """Every migration under directory, ordered by its number."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise DbopsError(
            f"migrations directory {str(root)!r} does not exist; pass the folder that holds "
            "NNNN_name.sql files or Prisma's <timestamp>_<name>/migration.sql folders"
        )
    found: list[Migration] = []
    for entry in sorted(root.iterdir()):
        if entry.is_file() and entry.suffix == ".sql":
            match = SQL_FILE.match(entry.name)
            if not match:
                raise DbopsError(
                    f"{entry} is not named like a migration; name it NNNN_name.sql "
                    "(digits, underscore, then letters, digits, _ or -)"
                )
            found.append(
                read_migration(entry, int(match["number"]), match["name"], entry.stem, "file")
            )
        elif entry.is_dir() and (entry / PRISMA_FILE).is_file():
            match = PRISMA_DIR.match(entry.name)
            if not match:
                raise DbopsError(
                    f"{entry} is not named like a Prisma migration; name it <timestamp>_<name>"
                )
            found.append(
                read_migration(
                    entry / PRISMA_FILE, int(match["number"]), match["name"], entry.name, "prisma"
                )
            )
    found.sort(key=lambda m: (m.number, m.id))
    by_number: dict[int, str] = {}
    for migration in found:
        other = by_number.setdefault(migration.number, migration.id)
        if other != migration.id:
            raise DbopsError(
                f"migrations {other} and {migration.id} share the number {migration.number}; "
                "renumber one of them"
            )
    return found


def history_name() -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(HISTORY_SCHEMA), sql.Identifier(HISTORY_TABLE))


def read_history(conn: psycopg.Connection) -> list[AppliedMigration]:
    """What the history table says; an absent table means nothing was applied yet."""
    exists = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", [f'"{HISTORY_SCHEMA}"."{HISTORY_TABLE}"']
    ).fetchone()[0]  # type: ignore[index]
    if not exists:
        return []
    rows = conn.execute(
        sql.SQL(
            "SELECT id, checksum, started_at::text, finished_at::text, applied_by "
            "FROM {} ORDER BY started_at, id"
        ).format(history_name())
    ).fetchall()
    return [
        AppliedMigration(id=r[0], checksum=r[1], started_at=r[2], finished_at=r[3], applied_by=r[4])
        for r in rows
    ]


class MigrationPlan(BaseModel):
    """What a run would do, computed before anything changes (the --dry-run output)."""

    database: str
    mode: Literal["directory", "command"]
    migrations: str | None = None
    command: str | None = None
    applied: list[str] = Field(default_factory=list)
    applied_by_prisma: list[str] = Field(
        default_factory=list, description="recorded in _prisma_migrations; not run again"
    )
    pending: list[Migration] = Field(default_factory=list)
    out_of_order: list[str] = Field(default_factory=list)
    target_version: str


class DirectoryPlan(NamedTuple):
    pending: list[Migration]
    out_of_order: list[str]
    applied_by_prisma: list[str]


def read_prisma_history(conn: psycopg.Connection, schema: str) -> dict[str, bool]:
    """Prisma's own record (`_prisma_migrations`): name -> finished, for teams moving over
    from `prisma migrate deploy`, whose applied migrations must not run a second time."""
    table = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(PRISMA_HISTORY))
    exists = conn.execute(
        "SELECT to_regclass(%s) IS NOT NULL", [f'"{schema}"."{PRISMA_HISTORY}"']
    ).fetchone()[0]  # type: ignore[index]
    if not exists:
        return {}
    rows = conn.execute(
        sql.SQL(
            "SELECT migration_name, bool_or(finished_at IS NOT NULL) FROM {} "
            "WHERE rolled_back_at IS NULL GROUP BY migration_name"
        ).format(table)
    ).fetchall()
    return {name: bool(finished) for name, finished in rows}


def plan_directory(
    migrations: list[Migration],
    history: list[AppliedMigration],
    where: str,
    prisma: dict[str, bool] | None = None,
) -> DirectoryPlan:
    """Pending migrations and those among them numbered below the newest applied one.

    Refuses when history and files disagree: an applied migration that was edited
    (checksum drift), deleted, or that stopped half way outside a transaction; or a
    migration that Prisma started and neither finished nor rolled back.
    """
    prisma = prisma or {}
    for name, finished in prisma.items():
        if not finished:
            raise DbopsError(
                f"Prisma migration {name} failed and was never resolved (_prisma_migrations); "
                f"run `npx prisma migrate resolve --rolled-back {name}` (or --applied) first"
            )
    on_disk = {m.id: m for m in migrations}
    for row in history:
        if row.finished_at is None:
            raise DbopsError(
                f"migration {row.id} started at {row.started_at} (run {row.applied_by}) but "
                "never finished: it ran outside a transaction and failed half way; repair the "
                f"database by hand, then delete its row from {HISTORY_SCHEMA}.{HISTORY_TABLE}"
            )
        migration = on_disk.get(row.id)
        if migration is None:
            raise DbopsError(
                f"migration {row.id} is applied in {where} but its file is missing from the "
                "migrations directory; restore it from version control (never delete applied "
                "migrations)"
            )
        if migration.sha256 != row.checksum:
            raise DbopsError(
                f"migration {row.id} was edited after it was applied (checksum drift: "
                f"{row.checksum[:12]} applied, {migration.sha256[:12]} on disk in "
                f"{migration.path}); put the applied version back and write a new migration "
                "for the change"
            )
    applied = {row.id for row in history}
    by_prisma = [
        m.id for m in migrations if m.layout == "prisma" and m.id in prisma and m.id not in applied
    ]
    applied |= set(by_prisma)
    pending = [m for m in migrations if m.id not in applied]
    newest = max((on_disk[i].number for i in applied if i in on_disk), default=-1)
    out_of_order = [m.id for m in pending if m.number < newest]
    return DirectoryPlan(pending, out_of_order, by_prisma)


# ---------------------------------------------------------------------------
# Applying migrations
# ---------------------------------------------------------------------------


class RunOptions(BaseModel):
    lock_timeout_seconds: float = Field(5.0, gt=0)
    statement_timeout_seconds: float = Field(1800.0, ge=0, description="0: no limit")
    lock_retries: int = Field(5, ge=0)
    retry_delay_seconds: float = Field(1.0, ge=0)
    max_retry_delay_seconds: float = Field(30.0, ge=0)

    def backoff(self, attempt: int) -> float:
        return min(self.retry_delay_seconds * (2**attempt), self.max_retry_delay_seconds)


class AppliedResult(BaseModel):
    id: str
    seconds: float
    statements: int
    transactional: bool
    lock_retries: int = 0


def ensure_history_table(conn: psycopg.Connection) -> None:
    conn.execute(
        sql.SQL(
            """
            CREATE TABLE IF NOT EXISTS {} (
                id text PRIMARY KEY,
                checksum text NOT NULL,
                started_at timestamptz NOT NULL,
                finished_at timestamptz,
                execution_ms integer,
                applied_by text NOT NULL,
                transactional boolean NOT NULL
            )
            """
        ).format(history_name())
    )


def _milliseconds(seconds: float) -> str:
    return f"{round(seconds * 1000)}ms"


def _set_timeouts(conn: psycopg.Connection, options: RunOptions, local: bool) -> None:
    conn.execute(
        "SELECT set_config('lock_timeout', %s, %s), set_config('statement_timeout', %s, %s)",
        [
            _milliseconds(options.lock_timeout_seconds),
            local,
            _milliseconds(options.statement_timeout_seconds),
            local,
        ],
    )


def _error_text(exc: psycopg.Error) -> str:
    diag = exc.diag
    text = first_line(exc)
    if diag.sqlstate:
        text = f"{diag.sqlstate} {text}"
    if diag.message_hint:
        text += f" (hint: {diag.message_hint})"
    return text


def _failure(migration: Migration, statement: Statement, index: int, exc: psycopg.Error) -> str:
    where = f"statement {index} (line {statement.line}: {statement.summary})"
    message = f"migration {migration.id} failed at {where}: {_error_text(exc)}"
    if exc.sqlstate == "25001":
        message += f"; make '{NO_TRANSACTION_MARKER}' the first line of {migration.path}"
    elif exc.sqlstate == "57014":
        message += "; it ran longer than statement_timeout, raise it for this migration"
    return message


def _read_text(migration: Migration) -> str:
    data = Path(migration.path).read_bytes()
    if checksum(data) != migration.sha256:
        raise DbopsError(
            f"migration {migration.path} changed on disk since the plan was made; run again"
        )
    return data.decode("utf-8")


def apply_migration(
    info: ConnInfo,
    migration: Migration,
    applied_by: str,
    options: RunOptions,
    log: Log = _quiet,
) -> AppliedResult:
    """Apply one migration and record it; retried from its start after a lock timeout."""
    statements = split_statements(_read_text(migration))
    with info.connect(autocommit=True) as conn:
        conn.add_notice_handler(lambda d: log(f"{migration.id}: {d.severity} {d.message_primary}"))
        ensure_history_table(conn)
        if migration.transactional:
            return _apply_in_transaction(conn, migration, statements, applied_by, options, log)
        return _apply_outside_transaction(conn, migration, statements, applied_by, options, log)


def _insert_history(conn: psycopg.Connection, migration: Migration, applied_by: str) -> None:
    conn.execute(
        sql.SQL(
            "INSERT INTO {} (id, checksum, started_at, applied_by, transactional) "
            "VALUES (%s, %s, clock_timestamp(), %s, %s)"
        ).format(history_name()),
        [migration.id, migration.sha256, applied_by, migration.transactional],
    )


def _finish_history(conn: psycopg.Connection, migration: Migration) -> None:
    conn.execute(
        sql.SQL(
            "UPDATE {} SET finished_at = clock_timestamp(), "
            "execution_ms = (extract(epoch FROM clock_timestamp() - started_at) * 1000)::int "
            "WHERE id = %s"
        ).format(history_name()),
        [migration.id],
    )


def _retry_or_raise(
    migration: Migration,
    statement: Statement,
    index: int,
    exc: psycopg.Error,
    attempt: int,
    options: RunOptions,
    log: Log,
) -> None:
    """Sleep before another attempt, or raise the one-line failure."""
    reason = RETRY_SQLSTATES.get(exc.sqlstate or "")
    if reason is None:
        raise DbopsError(_failure(migration, statement, index, exc)) from None
    if attempt >= options.lock_retries:
        raise DbopsError(
            f"migration {migration.id} gave up after {attempt + 1} attempts at statement {index} "
            f"(line {statement.line}: {statement.summary}): {reason} ({_error_text(exc)}); "
            "another session holds a conflicting lock: retry when traffic is lower, or raise "
            "lock_timeout / lock_retries"
        ) from None
    delay = options.backoff(attempt)
    log(
        f"{migration.id}: {reason} at statement {index} (line {statement.line}); attempt "
        f"{attempt + 1} of {options.lock_retries + 1} failed, retrying in {delay:.1f} s"
    )
    time.sleep(delay)


def _apply_in_transaction(
    conn: psycopg.Connection,
    migration: Migration,
    statements: list[Statement],
    applied_by: str,
    options: RunOptions,
    log: Log,
) -> AppliedResult:
    started = time.perf_counter()
    attempt = 0
    while True:
        index, current = 0, Statement("", 0)
        try:
            with conn.transaction():
                _set_timeouts(conn, options, local=True)
                _insert_history(conn, migration, applied_by)
                for number, statement in enumerate(statements, start=1):
                    index, current = number, statement
                    conn.execute(statement.sql.encode())
                _finish_history(conn, migration)
            break
        except psycopg.errors.UniqueViolation as exc:
            if index == 0:
                raise DbopsError(
                    f"migration {migration.id} is already recorded as applied (another "
                    "migrator ran it just now?); run again to see the new plan"
                ) from None
            _retry_or_raise(migration, current, index, exc, attempt, options, log)
        except psycopg.Error as exc:
            if index == 0:
                raise DbopsError(
                    f"cannot record migration {migration.id}: {_error_text(exc)}"
                ) from None
            _retry_or_raise(migration, current, index, exc, attempt, options, log)
        attempt += 1
    return AppliedResult(
        id=migration.id,
        seconds=round(time.perf_counter() - started, 3),
        statements=len(statements),
        transactional=True,
        lock_retries=attempt,
    )


def _apply_outside_transaction(
    conn: psycopg.Connection,
    migration: Migration,
    statements: list[Statement],
    applied_by: str,
    options: RunOptions,
    log: Log,
) -> AppliedResult:
    """Each statement commits on its own; a lock timeout retries that statement only."""
    started = time.perf_counter()
    retries = 0
    try:
        _set_timeouts(conn, options, local=False)
        _insert_history(conn, migration, applied_by)
    except psycopg.Error as exc:
        raise DbopsError(f"cannot record migration {migration.id}: {_error_text(exc)}") from None
    try:
        for index, statement in enumerate(statements, start=1):
            attempt = 0
            while True:
                try:
                    conn.execute(statement.sql.encode())
                    break
                except psycopg.Error as exc:
                    _retry_or_raise(migration, statement, index, exc, attempt, options, log)
                    attempt += 1
                    retries += 1
        _finish_history(conn, migration)
    finally:
        if not conn.closed and not conn.broken:
            with contextlib.suppress(psycopg.Error):  # never hide the migration's own error
                conn.execute("RESET lock_timeout")
                conn.execute("RESET statement_timeout")
    return AppliedResult(
        id=migration.id,
        seconds=round(time.perf_counter() - started, 3),
        statements=len(statements),
        transactional=False,
        lock_retries=retries,
    )


# ---------------------------------------------------------------------------
# The pre-migration backup must be readable before anything changes
# ---------------------------------------------------------------------------

PLAIN_DUMP_END = b"PostgreSQL database dump complete"


def check_backup_readable(destination: Destination, manifest: Manifest) -> int:
    """Read the stored dump back through the restore's reader: size, SHA-256, a full
    decompression, and pg_dump's own end marker (plain) or archive header (custom)."""
    compression = "none" if manifest.format == "custom" else manifest.compression
    where = destination.url_for(manifest.dump.name)
    head, tail, raw_size = b"", b"", 0
    with destination.open_read(manifest.dump.name) as raw:
        hashing = HashingReader(raw)
        reader = DecompressingReader(hashing, compression)
        while chunk := reader.read_chunk(CHUNK_SIZE):
            if len(head) < 5:
                head += chunk[:5]
            tail = (tail + chunk)[-512:]
            raw_size += len(chunk)
    if hashing.size != manifest.dump.size or hashing.hasher.hexdigest() != manifest.dump.sha256:
        raise DbopsError(
            f"the pre-migration backup {where} does not read back as written (size/SHA-256 "
            "mismatch); nothing was migrated: check the backup storage"
        )
    complete = head.startswith(b"PGDMP") if manifest.format == "custom" else PLAIN_DUMP_END in tail
    if not complete:
        raise DbopsError(
            f"the pre-migration backup {where} is not a complete pg_dump output; nothing was "
            "migrated"
        )
    return raw_size


# ---------------------------------------------------------------------------
# External commands (another migration tool, or a verify command)
# ---------------------------------------------------------------------------


class CommandResult(BaseModel):
    command: str
    exit_code: int
    seconds: float
    last_line: str = ""


def command_argv(command: str) -> list[str]:
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        raise DbopsError(f"cannot parse command {command!r} ({exc}); check its quotes") from None
    if not argv:
        raise DbopsError("the command is empty; pass e.g. 'alembic upgrade head'")
    return argv


def command_env(info: ConnInfo, database_url: str) -> dict[str, str]:
    """libpq variables plus DATABASE_URL, as the guide's tools expect (Prisma, Alembic...)."""
    env = info.child_env()
    env["DATABASE_URL"] = database_url
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def run_command(
    command: str,
    info: ConnInfo,
    database_url: str,
    workdir: str | None,
    timeout_seconds: float,
    log: Log,
    what: str = "migration command",
) -> CommandResult:
    """Run command with DATABASE_URL in its environment; its output goes to log line by line."""
    argv = command_argv(command)
    cwd = Path(workdir).expanduser() if workdir else Path.cwd()
    if not cwd.is_dir():
        raise DbopsError(f"working directory {str(cwd)!r} does not exist; pass an existing one")
    secrets = [s for s in (info.password, _url_password(database_url)) if s]
    started = time.perf_counter()
    try:
        process = subprocess.Popen(
            argv,
            cwd=cwd,
            env=command_env(info, database_url),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so a timeout kills npx's children too
        )
    except FileNotFoundError:
        raise DbopsError(
            f"{what} {argv[0]!r} not found; install it or give its full path"
        ) from None
    except PermissionError:
        raise DbopsError(f"{what} {argv[0]!r} is not executable; check its permissions") from None
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)

    timer = threading.Timer(timeout_seconds, kill) if timeout_seconds > 0 else None
    if timer:
        timer.daemon = True
        timer.start()
    last = ""
    try:
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.decode(errors="replace").rstrip()
            for secret in secrets:
                line = line.replace(secret, "***")
            if line.strip():
                last = line.strip()
            log(f"{argv[0].rsplit('/', 1)[-1]}: {line}")
        code = process.wait()
    finally:
        if timer:
            timer.cancel()
        if process.poll() is None:
            kill()
            process.wait()
    seconds = round(time.perf_counter() - started, 3)
    if timed_out.is_set():
        raise DbopsError(f"{what} {command!r} was killed after {timeout_seconds:g} s (timeout)")
    if code != 0:
        status = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        raise DbopsError(f"{what} {command!r} failed ({status}): {last or 'no output'}")
    return CommandResult(command=command, exit_code=code, seconds=seconds, last_line=last)


def _url_password(url: str) -> str | None:
    try:
        return ConnInfo.parse(url).password
    except DbopsError:
        return None

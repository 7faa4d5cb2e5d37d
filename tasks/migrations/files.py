"""Migrations on disk: `NNNN_name.sql` files and Prisma's `<timestamp>_<name>/migration.sql`.

Each is read once, checksummed (CRLF read as LF, so a Windows checkout is not
drift) and refused early when it cannot run as written: not UTF-8, a name that
does not sort, two sharing a number, or transaction commands in a migration
that already runs in its own transaction.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from tasks.core.errors import DbopsError, ParameterError
from tasks.migrations.statements import split_statements

NO_TRANSACTION_MARKER = "-- dbops:no-transaction"
_NAME = r"[A-Za-z0-9][A-Za-z0-9_\-]*"
SQL_FILE = re.compile(rf"^(?P<number>\d+)_(?P<name>{_NAME})\.sql$")
PRISMA_DIR = re.compile(rf"^(?P<number>\d+)_(?P<name>{_NAME})$")
PRISMA_FILE = "migration.sql"
TRANSACTION_CONTROL = {"begin", "commit", "rollback", "start", "end", "abort"}


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


def read_planned(migration: Migration) -> str:
    """The text of a planned migration, refused if the file changed since the plan."""
    data = Path(migration.path).read_bytes()
    if checksum(data) != migration.sha256:
        raise DbopsError(
            f"migration {migration.path} changed on disk since the plan was made; run again"
        )
    return data.decode("utf-8")


def _found(entry: Path) -> Migration | None:
    """The migration at entry (a file or a Prisma folder), None for anything else."""
    if entry.is_file() and entry.suffix == ".sql":
        match = SQL_FILE.match(entry.name)
        if not match:
            raise DbopsError(
                f"{entry} is not named like a migration; name it NNNN_name.sql "
                "(digits, underscore, then letters, digits, _ or -)"
            )
        return read_migration(entry, int(match["number"]), match["name"], entry.stem, "file")
    if entry.is_dir() and (entry / PRISMA_FILE).is_file():
        match = PRISMA_DIR.match(entry.name)
        if not match:
            raise DbopsError(
                f"{entry} is not named like a Prisma migration; name it <timestamp>_<name>"
            )
        return read_migration(
            entry / PRISMA_FILE, int(match["number"]), match["name"], entry.name, "prisma"
        )
    return None


def discover_migrations(directory: str | Path) -> list[Migration]:
    """Every migration under directory, ordered by its number."""
    root = Path(directory).expanduser()
    if not root.is_dir():
        raise ParameterError(
            "migrations",
            f"directory {str(root)!r} does not exist; pass the folder that holds "
            "NNNN_name.sql files or Prisma's <timestamp>_<name>/migration.sql folders",
        )
    found = [m for m in map(_found, sorted(root.iterdir())) if m is not None]
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

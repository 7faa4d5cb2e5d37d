"""Connecting to PostgreSQL: libpq URIs, connection errors that say what to fix, admin sessions.

Child processes never see a password on their command line: connection
parameters go to them as libpq environment variables (PGPASSWORD among them).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import cache
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import pq
from psycopg.conninfo import conninfo_to_dict

from tasks.core.errors import ConfigError, DbopsError, TransientError, first_line

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
        """Parse a libpq URI or key=value string; errors never quote the URL or a piece of it.

        A password may hold any character once percent-encoded; a literal `%`, `@`, `/`,
        `?`, `#` or space would make libpq read a piece of it as a host or a database
        name (which then appears in error messages), so such URLs are refused instead.
        """
        text = url.strip()
        if not text:
            raise ConfigError("the database URL is empty; use postgresql://user@host:5432/dbname")
        app_params: dict[str, str] = {}
        if "://" in text:
            scheme = text.split("://", 1)[0]
            if scheme not in ("postgresql", "postgres"):
                raise ConfigError(
                    f"database URL scheme {scheme[:20]!r} is not supported; "
                    "use postgresql://user@host:5432/dbname"
                )
            _check_userinfo(text.split("://", 1)[1])
            try:
                parts = urlsplit(text)
            except ValueError:
                raise _malformed("its host part cannot be read (an unmatched [ or ])") from None
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
            raise _malformed(_libpq_parse_problem(str(exc))) from None
        for port in filter(None, params.get("port", "").split(",")):
            if not port.isdigit() or not 0 < int(port) < 65536:
                raise _malformed("the port is not a number from 1 to 65535")
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


def url_with_dbname(url: str, dbname: str) -> str:
    """The same connection URL (URI or key=value) naming another database, for a tool that
    reads DATABASE_URL (the rehearsal's scratch copy)."""
    text = url.strip()
    if "://" in text:
        return urlunsplit(urlsplit(text)._replace(path="/" + quote(dbname, safe="")))
    escaped = dbname.replace("\\", "\\\\").replace("'", "\\'")
    return f"{text} dbname='{escaped}'"


# Characters that end or split the user:password part of a URI, so libpq would read a piece
# of the password as the host, the port or the database (and name it in its errors).
_USERINFO_BREAKERS = re.compile(r"[@/?#\[\]\s]|%(?![0-9A-Fa-f]{2})")
ENCODE_HINT = (
    "percent-encode them (% as %25, @ as %40, / as %2F, # as %23, a space as %20), e.g. "
    """python3 -c 'import urllib.parse; print(urllib.parse.quote(input(), safe=""))'"""
)


def _check_userinfo(rest: str) -> None:
    at = rest.rfind("@")
    if at >= 0 and _USERINFO_BREAKERS.search(rest[:at]):
        raise _malformed(
            "the user name or password holds a character that must be percent-encoded, "
            "or an @ follows the host",
            ENCODE_HINT,
        )


def _malformed(
    problem: str, fix: str = "use postgresql://user:password@host:5432/dbname"
) -> ConfigError:
    return ConfigError(
        f"malformed database URL ({problem}; the URL is not shown, it may hold a password); {fix}"
    )


# libpq's parse errors quote the text around the problem, which may be the password: name
# the problem instead.
_LIBPQ_PARSE_PROBLEMS = (
    ("invalid percent-encoded token", "a % that is not followed by two hexadecimal digits"),
    ("forbidden value %00", "an encoded NUL (%00)"),
    ("unexpected spaces found", "a space"),
    ('missing "=" after', "a word without = in a key=value string (quote values: key='a b')"),
    ("unterminated quoted string", "an unterminated quoted value"),
    ("invalid connection option", "an unknown connection option"),
    ("invalid URI query parameter", "an unknown query parameter"),
    ("end of string reached when looking for matching", "an unmatched ["),
    ("unexpected character", "an unexpected character in the host part"),
)


def _libpq_parse_problem(message: str) -> str:
    for fragment, problem in _LIBPQ_PARSE_PROBLEMS:
        if fragment in message:
            return problem
    return "libpq cannot read it"


def explain_connect_error(exc: BaseException, info: ConnInfo) -> DbopsError:
    """Name what is wrong with a failed connection and how to fix it."""
    message = _scrub(str(exc), info)
    where = info.redacted()
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
        reason = _scrub(first_line(exc), info).removeprefix("connection failed: ")
        return TransientError(
            f"cannot connect to {where}: server unreachable ({reason}); "
            "check host and port and that PostgreSQL is running"
        )
    return DbopsError(f"cannot connect to {where}: {_scrub(first_line(exc), info)}")


def _scrub(text: str, info: ConnInfo) -> str:
    """libpq does not print passwords, but a server's or a proxy's message might."""
    for secret in filter(None, (info.password, info.params.get("sslpassword"))):
        text = text.replace(secret, "***").replace(quote(secret, safe=""), "***")
    return text


def server_version(conn: psycopg.Connection) -> tuple[int, str]:
    """(major version, full version string) of the connected server."""
    num = conn.info.server_version
    full = conn.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
    return num // 10000, str(full)


def maintenance_conn(target: ConnInfo) -> psycopg.Connection:
    """A connection to the same server but another database, to create/drop the target."""
    for name in ("postgres", "template1"):
        if name == target.dbname:
            continue
        try:
            return target.with_dbname(name).connect()
        except DbopsError as exc:
            if "does not exist" not in str(exc):
                raise
    raise DbopsError(f"cannot reach a maintenance database on {target.redacted()}")


def database_exists(conn: psycopg.Connection, name: str) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone() is not None
    )


def free_connection_slots(conn: psycopg.Connection) -> int:
    """Connections the server can still accept from ordinary roles (parallel backup/restore
    size their workers by it)."""
    row = conn.execute(
        """
        SELECT current_setting('max_connections')::int
               - current_setting('superuser_reserved_connections')::int
               - (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend')
        """
    ).fetchone()
    return int(row[0]) if row else 0  # type: ignore[index]

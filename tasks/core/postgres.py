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

from tasks.core.errors import DbopsError, TransientError, first_line

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
                f"malformed database URL ({first_line(exc)}); "
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
        reason = first_line(exc).removeprefix("connection failed: ")
        return TransientError(
            f"cannot connect to {where}: server unreachable ({reason}); "
            "check host and port and that PostgreSQL is running"
        )
    return DbopsError(f"cannot connect to {where}: {first_line(exc)}")


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

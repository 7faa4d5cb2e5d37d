"""Roles and their passwords: names PostgreSQL accepts as they are, strong passwords that
reach the server only as SCRAM verifiers, and logging in as a role to prove it works.

Passwords never reach a log, an artifact or pg_stat_statements: the server
receives only a SCRAM verifier computed on the client (what psql's \\password
does), the statement is sent with statement logging and tracking switched off
where the connection may do so, and the password itself goes only to libpq
(as a keyword, to prove it logs in) and to the secret stores.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
from typing import Any, Literal
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql

from tasks.core.artifacts import artifact_key
from tasks.core.errors import ConfigError, DbopsError, ParameterError, first_line
from tasks.core.postgres import ConnInfo

SecretFormat = Literal["url", "password"]


def check_role_name(role: str) -> None:
    """Any name is quoted as an identifier; refuse only what PostgreSQL would mangle or forbid."""
    if not role or not role.strip():
        raise ParameterError("role", "name is empty; give a name such as readonly")
    if "\x00" in role:
        raise ParameterError("role", "name contains a NUL byte; choose another name")
    if len(role.encode()) > 63:
        raise ParameterError(
            "role",
            f"name {role!r} is longer than 63 bytes and PostgreSQL would truncate it; "
            "choose a shorter name",
        )
    if role.lower().startswith("pg_"):
        raise ParameterError("role", f"name {role!r} starts with pg_, which PostgreSQL reserves")


def generate_password() -> str:
    """256 random bits, URL-safe so it fits a DATABASE_URL without escaping."""
    return secrets.token_urlsafe(32)


def quiet_session(conn: psycopg.Connection) -> None:
    """Keep password statements out of server logs and pg_stat_statements, where allowed.

    These settings need superuser rights; without them the statement still
    carries only a SCRAM verifier, never the password.
    """
    for setting, value in (
        ("pg_stat_statements.track_utility", "off"),
        ("log_statement", "none"),
        ("log_min_duration_statement", "-1"),
        ("log_min_error_statement", "panic"),
    ):
        with contextlib.suppress(psycopg.Error):
            conn.execute(
                sql.SQL("SET {} = {}").format(sql.Identifier(*setting.split(".")), sql.SQL(value))
            )


def password_verifier(conn: psycopg.Connection, role: str, password: str) -> str:
    """The SCRAM (or md5, per the server's password_encryption) verifier of the password."""
    return conn.pgconn.encrypt_password(password.encode(), role.encode()).decode()


def set_password_statement(role: str, verifier: str | None) -> sql.Composed:
    return sql.SQL("ALTER ROLE {} WITH PASSWORD {}").format(
        sql.Identifier(role), sql.Literal(verifier)
    )


def default_secret_block(dbname: str, role: str) -> str:
    """A Prefect block name (lowercase, digits, dashes) unique to the exact role name."""
    slug = artifact_key(f"{dbname}-{role}")
    if f"{dbname}-{role}" == slug:
        return f"dbops-{slug}"
    digest = hashlib.sha256(f"{dbname}\x00{role}".encode()).hexdigest()[:8]
    return f"dbops-{slug}-{digest}"


def role_url(info: ConnInfo, role: str, password: str) -> str:
    """The DATABASE_URL for role: same server, database and options (app ones included)."""
    host = info.params.get("host", "")
    port = info.params.get("port", "")
    extra: dict[str, str] = {}
    if host.startswith("/"):
        extra["host"], host = host, ""
    hidden = {"password", "passfile", "host", "port", "user", "dbname"}
    rest = {k: v for k, v in info.params.items() if k not in hidden}
    query = urlencode({**extra, **rest, **info.app_params})
    netloc = f"{quote(role, safe='')}:{quote(password, safe='')}@{host}" + (
        f":{port}" if port else ""
    )
    return f"postgresql://{netloc}/{quote(info.dbname, safe='')}" + (f"?{query}" if query else "")


def login_as(info: ConnInfo, role: str, password: str) -> psycopg.Connection:
    """Connect as role with password given as a libpq keyword (never a URL, never argv)."""
    params = {k: v for k, v in info.params.items() if k != "passfile"}
    params.update(user=role, password=password)
    return ConnInfo(params=params).connect()


def role_attributes(conn: psycopg.Connection, role: str) -> dict[str, Any] | None:
    row = conn.execute(
        """
        SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin
        FROM pg_roles WHERE rolname = %s
        """,
        [role],
    ).fetchone()
    if row is None:
        return None
    keys = ("superuser", "createrole", "createdb", "replication", "bypassrls", "login")
    return dict(zip(keys, row, strict=True))


def run_ddl(conn: psycopg.Connection, statement: sql.Composable, what: str) -> None:
    """Run a role or grant statement; a refusal says what could not be done and why."""
    try:
        conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise ConfigError(
            f"cannot {what}: {first_line(exc)}; connect as a superuser or the objects' owner"
        ) from None
    except psycopg.Error as exc:
        raise DbopsError(f"cannot {what}: {first_line(exc)}") from None

"""The guide's security section done carefully: read-only roles, password rotation, and the
last-resort pg_terminate_backend.

Passwords never reach a log, an artifact or pg_stat_statements: the server
receives only a SCRAM verifier computed on the client (what psql's \\password
does), the statement is sent with statement logging and tracking switched off
where the connection may do so, and the password itself goes only to libpq
(as a keyword, to prove it logs in) and to the secret stores.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import quote, urlencode

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field

from tasks.core.artifacts import artifact_key
from tasks.core.errors import DbopsError, TransientError, first_line
from tasks.core.postgres import ConnInfo
from tasks.core.settings import Settings
from tasks.core.statistics import blocking_pairs, redact_sql

SecretFormat = Literal["url", "password"]
PROBE_PREFIX = "dbops_readonly_probe_"
MAX_TABLES_PROBED = 20


def check_role_name(role: str) -> None:
    """Any name is quoted as an identifier; refuse only what PostgreSQL would mangle or forbid."""
    if not role or not role.strip():
        raise DbopsError("the role name is empty; give a name such as readonly")
    if "\x00" in role:
        raise DbopsError("the role name contains a NUL byte; choose another name")
    if len(role.encode()) > 63:
        raise DbopsError(
            f"role name {role!r} is longer than 63 bytes and PostgreSQL would truncate it; "
            "choose a shorter name"
        )
    if role.lower().startswith("pg_"):
        raise DbopsError(f"role name {role!r} starts with pg_, which PostgreSQL reserves")


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


# ---------------------------------------------------------------------------
# Secret stores
# ---------------------------------------------------------------------------


class AwsSecretTarget(BaseModel):
    """Where rotate-password also stores the credentials in AWS Secrets Manager."""

    secret_id: str = Field(description="name or ARN of the secret (created when missing)")
    region: str | None = Field(None, description="default AWS_DEFAULT_REGION")
    endpoint_url: str | None = Field(
        None, description="default AWS_ENDPOINT_URL_SECRETSMANAGER (LocalStack, moto)"
    )

    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "secretsmanager",
            config=Config(
                connect_timeout=10, read_timeout=30, retries={"mode": "standard", "max_attempts": 3}
            ),
            region_name=self.region or Settings.from_env().aws_region or "us-east-1",
            endpoint_url=self.endpoint_url
            or Settings.from_env().secretsmanager_endpoint_url
            or None,
        )


def _aws_error(exc: Exception) -> str:
    return first_line(exc)


def aws_secret_exists(target: AwsSecretTarget) -> bool:
    """Preflight: credentials and endpoint work; whether the secret must be created."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        target.client().describe_secret(SecretId=target.secret_id)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return False
        raise DbopsError(
            f"cannot use AWS secret {target.secret_id!r}: {_aws_error(exc)}; nothing was changed"
        ) from None
    except BotoCoreError as exc:
        raise TransientError(
            f"cannot reach AWS Secrets Manager: {_aws_error(exc)}; nothing was changed"
        ) from None


def store_aws_secret(target: AwsSecretTarget, value: dict[str, Any], exists: bool) -> str:
    """Write the credentials as a new version (AWSCURRENT); returns the version id."""
    client = target.client()
    payload = json.dumps(value)
    if exists:
        answer = client.put_secret_value(SecretId=target.secret_id, SecretString=payload)
    else:
        answer = client.create_secret(
            Name=target.secret_id,
            SecretString=payload,
            Description="PostgreSQL credentials, rotated by dbops",
        )
    return str(answer.get("VersionId", ""))


def prefect_secret_reachable(block: str) -> None:
    """Preflight: the Prefect API answers, so the new password will have a home."""
    from prefect.blocks.system import Secret

    try:
        Secret.load(block)
    except ValueError:
        return  # not created yet: saved later
    except Exception as exc:  # noqa: BLE001 - any API failure means: do not rotate now
        raise TransientError(
            f"cannot reach the Prefect API to store the password ({first_line(exc)}); "
            "nothing was changed"
        ) from None


def store_prefect_secret(block: str, value: str) -> None:
    from prefect.blocks.system import Secret

    Secret(value=value).save(block, overwrite=True)


def load_prefect_secret(block: str) -> str | None:
    from prefect.blocks.system import Secret

    try:
        return str(Secret.load(block).get())
    except ValueError:
        return None


def password_from_secret(value: str | None) -> str | None:
    if not value:
        return None
    if value.startswith(("postgresql://", "postgres://")):
        return ConnInfo.parse(value).password
    return value


# ---------------------------------------------------------------------------
# Read-only role
# ---------------------------------------------------------------------------


@dataclass
class ReadonlyResult:
    role: str
    database: str
    schemas: list[str]
    created: bool
    owners: list[str]
    secret_block: str | None
    checked_by: str = ""
    checks: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c["result"].startswith("ok") for c in self.checks)


def _existing_schemas(conn: psycopg.Connection, schemas: list[str]) -> None:
    for schema in schemas:
        if not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone():
            raise DbopsError(f"schema {schema!r} does not exist in this database; check the name")


def object_owners(conn: psycopg.Connection, schemas: list[str]) -> list[str]:
    """Roles whose future tables must be readable: owners of the schemas and their relations,
    and the connecting user (who runs the migrations in the guide's setup)."""
    rows = conn.execute(
        """
        SELECT DISTINCT r.rolname FROM (
            SELECT c.relowner AS owner FROM pg_class c
            JOIN pg_namespace n ON n.oid = c.relnamespace
            WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
            UNION SELECT nspowner FROM pg_namespace WHERE nspname = ANY(%s)
            UNION SELECT oid FROM pg_roles WHERE rolname = current_user
        ) o JOIN pg_roles r ON r.oid = o.owner
        ORDER BY 1
        """,
        [schemas, schemas],
    ).fetchall()
    return [r[0] for r in rows]


def _refuse_unsafe_existing(
    conn: psycopg.Connection, role: str, attrs: dict[str, Any], schemas: list[str]
) -> None:
    powers = [k for k in ("superuser", "createrole", "replication", "bypassrls") if attrs[k]]
    if powers:
        raise DbopsError(
            f"role {role!r} exists with {', '.join(p.upper() for p in powers)} and cannot be made "
            "read-only; choose another name"
        )
    owned = conn.execute(
        """
        SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_roles r ON r.oid = c.relowner
        WHERE r.rolname = %s AND n.nspname = ANY(%s)
        """,
        [role, schemas],
    ).fetchone()[0]  # type: ignore[index]
    if owned:
        raise DbopsError(
            f"role {role!r} owns {owned} table(s) in {schemas} and can write to them; "
            "choose another name for the read-only role"
        )


def _run(conn: psycopg.Connection, statement: sql.Composable, what: str) -> None:
    try:
        conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise DbopsError(
            f"cannot {what}: {first_line(exc)}; connect as a superuser or the objects' owner"
        ) from None
    except psycopg.Error as exc:
        raise DbopsError(f"cannot {what}: {first_line(exc)}") from None


def grant_readonly(
    conn: psycopg.Connection, role: str, schemas: list[str], owners: list[str], dbname: str
) -> None:
    r = sql.Identifier(role)
    _run(
        conn,
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(dbname), r),
        f"grant CONNECT on database {dbname!r}",
    )
    for schema in schemas:
        s = sql.Identifier(schema)
        _run(conn, sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r), "grant USAGE")
        for kind in ("TABLES", "SEQUENCES"):
            _run(
                conn,
                sql.SQL("GRANT SELECT ON ALL {} IN SCHEMA {} TO {}").format(sql.SQL(kind), s, r),
                f"grant SELECT on all {kind.lower()} in schema {schema!r}",
            )
        for owner in owners:
            for kind in ("TABLES", "SEQUENCES"):
                _run(
                    conn,
                    sql.SQL(
                        "ALTER DEFAULT PRIVILEGES FOR ROLE {} IN SCHEMA {} GRANT SELECT ON {} TO {}"
                    ).format(sql.Identifier(owner), s, sql.SQL(kind), r),
                    f"set default privileges for role {owner!r} in schema {schema!r}",
                )


def create_readonly_role(
    info: ConnInfo,
    role: str,
    schemas: list[str],
    owners: list[str] | None = None,
    secret_block: str | None = None,
    secret_format: SecretFormat = "url",
    read_only_default: bool = True,
) -> ReadonlyResult:
    """Create (or bring up to date) a role that can read every table, now and later.

    Idempotent: an existing role keeps its password and gets any missing grant.
    A new role's password goes to a Prefect Secret block in the same
    transaction that creates the role, so neither exists without the other.
    """
    check_role_name(role)
    if not schemas:
        raise DbopsError("no schema given; pass at least one schema, e.g. public")
    block = secret_block or default_secret_block(info.dbname, role)
    with info.connect() as conn:
        quiet_session(conn)
        _existing_schemas(conn, schemas)
        attrs = role_attributes(conn, role)
        if attrs:
            _refuse_unsafe_existing(conn, role, attrs, schemas)
        chosen = [o for o in (owners or object_owners(conn, schemas)) if o != role]
        for owner in chosen:
            if role_attributes(conn, owner) is None:
                raise DbopsError(f"owner role {owner!r} does not exist; check the owners list")
        password = None
        with conn.transaction():
            if attrs is None:
                password = generate_password()
                _run(
                    conn,
                    sql.SQL(
                        "CREATE ROLE {} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                        "NOREPLICATION NOBYPASSRLS PASSWORD {}"
                    ).format(
                        sql.Identifier(role), sql.Literal(password_verifier(conn, role, password))
                    ),
                    f"create role {role!r}",
                )
            elif not attrs["login"]:
                _run(
                    conn,
                    sql.SQL("ALTER ROLE {} WITH LOGIN").format(sql.Identifier(role)),
                    f"allow role {role!r} to log in",
                )
            grant_readonly(conn, role, schemas, chosen, info.dbname)
            if read_only_default:
                _run(
                    conn,
                    sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(
                        sql.Identifier(role)
                    ),
                    "make read-only transactions the role's default",
                )
            if password is not None:
                store_prefect_secret(
                    block, role_url(info, role, password) if secret_format == "url" else password
                )
        if password is None:
            password = password_from_secret(load_prefect_secret(block))
        result = ReadonlyResult(
            role=role,
            database=info.dbname,
            schemas=schemas,
            created=attrs is None,
            owners=chosen,
            secret_block=block if password else None,
        )
        owner = _probe_owner(conn, chosen)
        result.checked_by, result.checks = verify_readonly(
            conn, info, role, password, schemas[0], owner
        )
    return result


def _probe_owner(conn: psycopg.Connection, owners: list[str]) -> str:
    """Create the probe table as the main table owner (whose default privileges we set)."""
    me = conn.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
    return me if me in owners or not owners else owners[0]


def verify_readonly(
    admin: psycopg.Connection,
    info: ConnInfo,
    role: str,
    password: str | None,
    schema: str,
    owner: str,
) -> tuple[str, list[dict[str, str]]]:
    """Prove it: as the role, read a table created after the grants; fail to write or create."""
    probe = PROBE_PREFIX + secrets.token_hex(4)
    table = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(probe))
    checks: list[dict[str, str]] = []
    try:
        with admin.transaction():
            admin.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
            admin.execute(sql.SQL("CREATE TABLE {} (id int)").format(table))
            admin.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(table))
    except psycopg.Error as exc:
        raise DbopsError(
            f"cannot create the probe table {schema}.{probe} as {owner!r} to check the new "
            f"role: {first_line(exc)}; connect as a superuser or a member of {owner!r}"
        ) from None
    session: psycopg.Connection | None = None
    try:
        if password:
            try:
                session = login_as(info, role, password)
            except DbopsError as exc:
                checks.append({"check": f"log in as {role}", "result": f"failed: {exc}"})
                return "login", checks
            how = "login"
            checks.append({"check": f"log in as {role}", "result": "ok"})
        else:
            _run(admin, sql.SQL("SET ROLE {}").format(sql.Identifier(role)), f"SET ROLE {role!r}")
            session = admin
            how = "SET ROLE (password unknown to dbops)"
        session.execute("SET lock_timeout = '2s'")
        # Writes must be refused by privileges, not merely by the read-only default.
        session.execute("SET default_transaction_read_only = off")
        checks += _probe_session(session, table, probe, schema)
    finally:
        if session is admin:
            admin.execute("RESET ROLE")
        elif session is not None:
            session.close()
        admin.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(table))
    return how, checks


def _expect_denied(session: psycopg.Connection, statement: sql.Composable, what: str) -> str:
    try:
        with session.transaction(force_rollback=True):
            session.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        return "ok: permission denied"
    except psycopg.Error as exc:
        return f"failed: {what} raised {first_line(exc)} instead of permission denied"
    return f"failed: {what} was allowed"


def _probe_session(
    session: psycopg.Connection, table: sql.Composable, probe: str, schema: str
) -> list[dict[str, str]]:
    checks = []
    try:
        rows = session.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]  # type: ignore[index]
        read = "ok" if rows == 1 else f"failed: read {rows} rows, expected 1"
    except psycopg.Error as exc:
        read = f"failed: {first_line(exc)}"
    checks.append({"check": f"read {schema}.{probe} created after the grants", "result": read})
    checks.append(
        {
            "check": f"INSERT into {schema}.{probe}",
            "result": _expect_denied(
                session, sql.SQL("INSERT INTO {} VALUES (2)").format(table), "INSERT"
            ),
        }
    )
    existing = session.execute(
        """
        SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relkind IN ('r', 'p') AND c.relname <> %s
        ORDER BY 1 LIMIT %s
        """,
        [schema, probe, MAX_TABLES_PROBED],
    ).fetchall()
    for (name,) in existing:
        target = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
        checks.append(
            {
                "check": f"DELETE from {schema}.{name}",
                "result": _expect_denied(
                    session, sql.SQL("DELETE FROM {} WHERE false").format(target), "DELETE"
                ),
            }
        )
    created = _expect_denied(
        session,
        sql.SQL("CREATE TABLE {}.{} (id int)").format(
            sql.Identifier(schema), sql.Identifier(probe + "_new")
        ),
        "CREATE TABLE",
    )
    if created.endswith("was allowed"):
        created += (
            f" (PUBLIC has CREATE on schema {schema}: REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC)"
        )
    checks.append({"check": f"CREATE TABLE in {schema}", "result": created})
    return checks


# ---------------------------------------------------------------------------
# Password rotation
# ---------------------------------------------------------------------------


@dataclass
class RotationResult:
    role: str
    database: str
    rotated_at: str
    login_verified: bool
    secret_block: str
    secret_format: str
    aws_secret_id: str | None = None
    aws_version_id: str | None = None


def _old_verifier(conn: psycopg.Connection, role: str) -> tuple[bool, str | None]:
    """(readable, verifier): only superusers can read pg_authid to undo a failed rotation."""
    try:
        row = conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role]
        ).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return False, None
    return True, (row[0] if row else None)


def rotate_role_password(
    info: ConnInfo,
    role: str,
    secret_block: str | None = None,
    secret_format: SecretFormat = "url",
    aws: AwsSecretTarget | None = None,
) -> RotationResult:
    """New strong password -> ALTER ROLE -> prove it logs in -> Prefect Secret (-> AWS).

    Both stores are checked before anything changes. If the new password does
    not log in or cannot be stored, the old verifier is put back when this
    connection may read it (superuser); otherwise the error says what state
    the role is in.
    """
    check_role_name(role)
    block = secret_block or default_secret_block(info.dbname, role)
    with info.connect() as conn:
        attrs = role_attributes(conn, role)
        if attrs is None:
            raise DbopsError(f"role {role!r} does not exist; check the name (roles: \\du in psql)")
        if not attrs["login"]:
            raise DbopsError(
                f"role {role!r} cannot log in (NOLOGIN), so a password is of no use to it"
            )
        prefect_secret_reachable(block)
        aws_exists = aws_secret_exists(aws) if aws else False
        restorable, old = _old_verifier(conn, role)
        quiet_session(conn)

        def undo(reason: str) -> DbopsError:
            if restorable:
                conn.execute(set_password_statement(role, old))
                return DbopsError(f"{reason}; the old password was restored, nothing changed")
            return DbopsError(
                f"{reason}; the role's password WAS changed and this connection cannot read "
                "the old one: rotate again once the cause is fixed"
            )

        password = generate_password()
        _run(
            conn,
            set_password_statement(role, password_verifier(conn, role, password)),
            f"set the password of role {role!r}",
        )
        try:
            with login_as(info, role, password) as check:
                who = check.execute("SELECT current_user").fetchone()[0]  # type: ignore[index]
            if who != role:
                raise DbopsError(f"logged in as {who!r} instead of {role!r}")
        except DbopsError as exc:
            raise undo(f"the new password of {role!r} did not log in ({exc})") from None
        value = role_url(info, role, password) if secret_format == "url" else password
        try:
            store_prefect_secret(block, value)
        except Exception as exc:  # noqa: BLE001
            raise undo(
                f"cannot store the password in Prefect Secret {block!r}: {first_line(exc)}"
            ) from None
        result = RotationResult(
            role=role,
            database=info.dbname,
            rotated_at=datetime.now(UTC).isoformat(timespec="seconds"),
            login_verified=True,
            secret_block=block,
            secret_format=secret_format,
        )
        if aws:
            credentials = {
                "engine": "postgres",
                "host": info.params.get("host", ""),
                "port": int(info.params.get("port") or 5432),
                "username": role,
                "password": password,
                "dbname": info.dbname,
                "url": role_url(info, role, password),
            }
            try:
                result.aws_version_id = store_aws_secret(aws, credentials, aws_exists)
            except Exception as exc:  # noqa: BLE001
                raise DbopsError(
                    f"password of {role!r} rotated and stored in Prefect Secret {block!r}, but "
                    f"AWS Secrets Manager {aws.secret_id!r} was not updated: {_aws_error(exc)}"
                ) from None
            result.aws_secret_id = aws.secret_id
    return result


# ---------------------------------------------------------------------------
# Terminate blocking sessions (last resort)
# ---------------------------------------------------------------------------


@dataclass
class BlockingSession:
    pid: int
    user: str | None
    application: str | None
    state: str | None
    transaction_seconds: float
    query: str
    blocked_pids: list[int]
    longest_wait_seconds: float
    backend_start: Any = None
    action: str = "planned"

    def row(self) -> dict[str, Any]:
        return {
            "pid": self.pid,
            "user": self.user,
            "application": self.application,
            "state": self.state,
            "transaction_seconds": self.transaction_seconds,
            "query": self.query,
            "blocked_pids": self.blocked_pids,
            "longest_wait_seconds": self.longest_wait_seconds,
            "action": self.action,
        }


def blocking_heads(conn: psycopg.Connection, min_blocked_seconds: float) -> list[BlockingSession]:
    """Sessions at the head of a lock chain that has kept others waiting long enough."""
    pairs = blocking_pairs(conn, conn.info.server_version // 10000)
    heads: dict[int, BlockingSession] = {}
    for pair in pairs:
        if not pair["blocking_is_head"] or pair["waiting_seconds"] < min_blocked_seconds:
            continue
        head = heads.get(pair["blocking_pid"])
        if head is None:
            head = heads[pair["blocking_pid"]] = BlockingSession(
                pid=pair["blocking_pid"],
                user=pair["blocking_user"],
                application=pair["blocking_application"],
                state=pair["blocking_state"],
                transaction_seconds=pair["blocking_transaction_seconds"],
                query=redact_sql(pair["blocking_query"]),
                blocked_pids=[],
                longest_wait_seconds=0.0,
                backend_start=pair["blocking_backend_start"],
            )
            if pair["blocking_backend_type"] != "client backend":
                head.action = f"left alone: {pair['blocking_backend_type']} is not a client session"
        head.blocked_pids.append(pair["blocked_pid"])
        head.longest_wait_seconds = max(head.longest_wait_seconds, pair["waiting_seconds"])
    return sorted(heads.values(), key=lambda h: -h.longest_wait_seconds)


def terminate_blocking_sessions(
    info: ConnInfo, min_blocked_seconds: float, confirm: bool
) -> list[BlockingSession]:
    """pg_terminate_backend on each chain head, only when confirmed, re-checking it first."""
    with info.connect() as conn:
        conn.execute("SET application_name = 'dbops-terminate-blocking'")
        heads = blocking_heads(conn, min_blocked_seconds)
        with_timeout = conn.info.server_version >= 140000
        for head in heads:
            if head.action != "planned":
                continue
            if not confirm:
                head.action = "would terminate (confirmation not given)"
                continue
            terminate = sql.SQL(
                "pg_terminate_backend(%s, 5000)" if with_timeout else "pg_terminate_backend(%s)"
            )
            query = sql.SQL(
                """
                SELECT {} FROM pg_stat_activity a
                WHERE a.pid = %s AND a.backend_start = %s
                  AND EXISTS (SELECT 1 FROM pg_stat_activity w
                              WHERE a.pid = ANY(pg_blocking_pids(w.pid)))
                """
            ).format(terminate)
            try:
                row = conn.execute(query, [head.pid, head.pid, head.backend_start]).fetchone()
            except psycopg.Error as exc:
                head.action = f"failed: {first_line(exc)}"
                continue
            if row is None:
                head.action = "not terminated: it no longer blocks anyone"
            else:
                head.action = (
                    "terminated" if row[0] else "failed: pg_terminate_backend returned false"
                )
    return heads

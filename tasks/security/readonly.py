"""A read-only role that can read every table of some schemas, now and later, proven by
logging in as it: it reads a table created after the grants and fails to write or create."""

from __future__ import annotations

import secrets

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field, computed_field

from tasks.core.errors import ConfigError, DbopsError, NotFoundError, ParameterError, first_line
from tasks.core.postgres import ConnInfo
from tasks.security.roles import (
    SecretFormat,
    check_role_name,
    default_secret_block,
    generate_password,
    login_as,
    password_verifier,
    quiet_session,
    role_attributes,
    role_url,
    run_ddl,
)
from tasks.security.secret_stores import (
    load_prefect_secret,
    password_from_secret,
    store_prefect_secret,
)

PROBE_PREFIX = "dbops_readonly_probe_"
MAX_TABLES_PROBED = 20


class ProbeCheck(BaseModel):
    """One thing the new role was made to try, and whether it behaved as a read-only role."""

    check: str
    result: str
    passed: bool = Field(exclude=True)

    @classmethod
    def judged(cls, check: str, problem: str | None, ok: str = "ok") -> ProbeCheck:
        """Passed when there is no problem; the result says 'ok' or 'failed: <problem>'."""
        if problem is None:
            return cls(check=check, result=ok, passed=True)
        return cls(check=check, result=f"failed: {problem}", passed=False)


class ReadonlyResult(BaseModel):
    """The result of create-readonly-user: what exists now, and how it was proven."""

    role: str
    database: str
    schemas: list[str]
    created: bool
    owners: list[str]
    secret_block: str | None
    checked_by: str = ""
    checks: list[ProbeCheck] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[str]:
        return [f"{c.check}: {c.result}" for c in self.checks if not c.passed]


def _existing_schemas(conn: psycopg.Connection, schemas: list[str]) -> None:
    for schema in schemas:
        if not conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", [schema]).fetchone():
            raise NotFoundError(
                f"schema {schema!r} does not exist in this database; check the name"
            )


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
    conn: psycopg.Connection, role: str, attrs: dict[str, bool], schemas: list[str]
) -> None:
    powers = [k for k in ("superuser", "createrole", "replication", "bypassrls") if attrs[k]]
    if powers:
        raise ConfigError(
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
        raise ConfigError(
            f"role {role!r} owns {owned} table(s) in {schemas} and can write to them; "
            "choose another name for the read-only role"
        )


def grant_readonly(
    conn: psycopg.Connection, role: str, schemas: list[str], owners: list[str], dbname: str
) -> None:
    r = sql.Identifier(role)
    run_ddl(
        conn,
        sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(dbname), r),
        f"grant CONNECT on database {dbname!r}",
    )
    for schema in schemas:
        s = sql.Identifier(schema)
        run_ddl(conn, sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(s, r), "grant USAGE")
        for kind in ("TABLES", "SEQUENCES"):
            run_ddl(
                conn,
                sql.SQL("GRANT SELECT ON ALL {} IN SCHEMA {} TO {}").format(sql.SQL(kind), s, r),
                f"grant SELECT on all {kind.lower()} in schema {schema!r}",
            )
        for owner in owners:
            for kind in ("TABLES", "SEQUENCES"):
                run_ddl(
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
        raise ParameterError("schemas", "is empty; pass at least one schema, e.g. public")
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
                raise NotFoundError(f"owner role {owner!r} does not exist; check the owners list")
        password = None
        with conn.transaction():
            if attrs is None:
                password = generate_password()
                run_ddl(
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
                run_ddl(
                    conn,
                    sql.SQL("ALTER ROLE {} WITH LOGIN").format(sql.Identifier(role)),
                    f"allow role {role!r} to log in",
                )
            grant_readonly(conn, role, schemas, chosen, info.dbname)
            if read_only_default:
                run_ddl(
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
) -> tuple[str, list[ProbeCheck]]:
    """Prove it: as the role, read a table created after the grants; fail to write or create."""
    probe = PROBE_PREFIX + secrets.token_hex(4)
    table = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(probe))
    checks: list[ProbeCheck] = []
    try:
        with admin.transaction():
            admin.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
            admin.execute(sql.SQL("CREATE TABLE {} (id int)").format(table))
            admin.execute(sql.SQL("INSERT INTO {} VALUES (1)").format(table))
    except psycopg.Error as exc:
        raise ConfigError(
            f"cannot create the probe table {schema}.{probe} as {owner!r} to check the new "
            f"role: {first_line(exc)}; connect as a superuser or a member of {owner!r}"
        ) from None
    session: psycopg.Connection | None = None
    try:
        if password:
            try:
                session = login_as(info, role, password)
            except DbopsError as exc:
                checks.append(ProbeCheck.judged(f"log in as {role}", str(exc)))
                return "login", checks
            how = "login"
            checks.append(ProbeCheck.judged(f"log in as {role}", None))
        else:
            run_ddl(
                admin, sql.SQL("SET ROLE {}").format(sql.Identifier(role)), f"SET ROLE {role!r}"
            )
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


def _attempt(session: psycopg.Connection, statement: sql.Composable) -> psycopg.Error | None:
    """Try a statement and roll it back; the error it raised, None when it was allowed."""
    try:
        with session.transaction(force_rollback=True):
            session.execute(statement)
    except psycopg.Error as exc:
        return exc
    return None


def _denied(check: str, what: str, error: psycopg.Error | None) -> ProbeCheck:
    if isinstance(error, psycopg.errors.InsufficientPrivilege):
        problem = None
    elif error is None:
        problem = f"{what} was allowed"
    else:
        problem = f"{what} raised {first_line(error)} instead of permission denied"
    return ProbeCheck.judged(check, problem, ok="ok: permission denied")


def _read_problem(session: psycopg.Connection, table: sql.Composable) -> str | None:
    try:
        rows = session.execute(sql.SQL("SELECT count(*) FROM {}").format(table)).fetchone()[0]  # type: ignore[index]
    except psycopg.Error as exc:
        return first_line(exc)
    return None if rows == 1 else f"read {rows} rows, expected 1"


def _probe_session(
    session: psycopg.Connection, table: sql.Composable, probe: str, schema: str
) -> list[ProbeCheck]:
    checks = [
        ProbeCheck.judged(
            f"read {schema}.{probe} created after the grants", _read_problem(session, table)
        ),
        _denied(
            f"INSERT into {schema}.{probe}",
            "INSERT",
            _attempt(session, sql.SQL("INSERT INTO {} VALUES (2)").format(table)),
        ),
    ]
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
        delete = sql.SQL("DELETE FROM {} WHERE false").format(target)
        checks.append(_denied(f"DELETE from {schema}.{name}", "DELETE", _attempt(session, delete)))
    create = sql.SQL("CREATE TABLE {}.{} (id int)").format(
        sql.Identifier(schema), sql.Identifier(probe + "_new")
    )
    error = _attempt(session, create)
    created = _denied(f"CREATE TABLE in {schema}", "CREATE TABLE", error)
    if error is None:
        created.result += (
            f" (PUBLIC has CREATE on schema {schema}: REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC)"
        )
    checks.append(created)
    return checks

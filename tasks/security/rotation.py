"""Password rotation: new strong password -> ALTER ROLE -> prove it logs in -> Prefect Secret
(-> AWS Secrets Manager), undone when it cannot finish and the old verifier is readable."""

from __future__ import annotations

from datetime import UTC, datetime

import psycopg
from pydantic import BaseModel

from tasks.core.errors import ConfigError, DbopsError, NotFoundError, first_line
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
    set_password_statement,
)
from tasks.security.secret_stores import (
    AwsSecretTarget,
    aws_secret_exists,
    prefect_secret_reachable,
    store_aws_secret,
    store_prefect_secret,
)


class RotationResult(BaseModel):
    """The result of rotate-password: where the new password is; never the password."""

    role: str
    database: str
    rotated_at: str
    login_verified: bool
    secret_block: str
    secret_format: str
    aws_secret_id: str | None = None
    aws_version_id: str | None = None
    app_restart_seconds: float | None = None  # how long the application's restart took


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
            raise NotFoundError(
                f"role {role!r} does not exist; check the name (roles: \\du in psql)"
            )
        if not attrs["login"]:
            raise ConfigError(
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
        run_ddl(
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
                    f"AWS Secrets Manager {aws.secret_id!r} was not updated: {first_line(exc)}"
                ) from None
            result.aws_secret_id = aws.secret_id
    return result

"""create-readonly-user, rotate-password and terminate-blocking: the guide's security section.

No password is ever a parameter, a log line, an artifact or a return value:
passwords are generated inside tasks and leave them only for the secret stores.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed, Failed
from pydantic import Field

from tasks.core.artifacts import publish_table
from tasks.core.errors import DbopsError, retry_transient
from tasks.core.notify import FAILURE_HOOKS
from tasks.core.parameters import DatabaseUrl, documented
from tasks.core.postgres import ConnInfo
from tasks.core.settings import Settings, reject_inline_password
from tasks.security.roles import (
    AwsSecretTarget,
    BlockingSession,
    ReadonlyResult,
    RotationResult,
    SecretFormat,
    create_readonly_role,
    rotate_role_password,
    terminate_blocking_sessions,
)

SecretBlock = Annotated[
    str | None,
    Field(description="Prefect Secret block for the credentials; default dbops-<db>-<role>"),
]
StoredAs = Annotated[
    SecretFormat,
    Field(description="store a full DATABASE_URL (usable as secret://BLOCK) or the password"),
]


def _info(database_url: str | None) -> ConnInfo:
    return Settings.load(database_url).connection()


@task(name="create-readonly-role", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def readonly_role(
    database_url: str | None,
    role: str,
    schemas: list[str],
    owners: list[str] | None,
    secret_block: str | None,
    secret_format: SecretFormat,
    read_only_default: bool,
) -> ReadonlyResult:
    info = _info(database_url)
    get_run_logger().info("Setting up read-only role %r in %s", role, info.redacted())
    return create_readonly_role(
        info, role, schemas, owners, secret_block, secret_format, read_only_default
    )


@flow(name="create-readonly-user", **FAILURE_HOOKS)
@documented
def create_readonly_user(
    role: Annotated[str, Field(description="name of the read-only role (any characters)")],
    database_url: DatabaseUrl = None,
    schemas: Annotated[
        list[str] | None, Field(description="schemas to read; default public")
    ] = None,
    owners: Annotated[
        list[str] | None,
        Field(
            description="roles that create tables (default privileges FOR ROLE); default: "
            "owners of the schemas and their tables, and the connecting user"
        ),
    ] = None,
    secret_block: SecretBlock = None,
    secret_format: StoredAs = "url",
    read_only_default: Annotated[
        bool, Field(description="also ALTER ROLE ... SET default_transaction_read_only = on")
    ] = True,
) -> Any:
    """CONNECT, USAGE, SELECT on all tables and sequences, default privileges for future ones;
    then log in as the role, read a new table and fail to write."""
    reject_inline_password(database_url, "database_url")
    result = readonly_role(
        database_url,
        role,
        schemas or ["public"],
        owners,
        secret_block,
        secret_format,
        read_only_default,
    )
    publish_table(
        [{"check": "checked by", "result": result.checked_by}, *result.checks],
        key=f"readonly-{result.database}-{role}",
        description=f"Read-only role {role!r} in {result.database} "
        f"({'created' if result.created else 'already existed; grants refreshed'})",
    )
    report = {**asdict(result), "ok": result.ok}
    if not result.ok:
        failed = [
            f"{c['check']}: {c['result']}"
            for c in result.checks
            if not c["result"].startswith("ok")
        ]
        return Failed(
            message=f"role {role!r} is not read-only as expected: {'; '.join(failed)}", data=report
        )
    return Completed(message=f"role {role!r} is read-only", data=report)


@task(name="rotate-role-password", cache_policy=NO_CACHE)
def rotate(
    database_url: str | None,
    role: str,
    secret_block: str | None,
    secret_format: SecretFormat,
    aws: AwsSecretTarget | None,
) -> RotationResult:
    info = _info(database_url)
    get_run_logger().info("Rotating the password of role %r on %s", role, info.redacted())
    return rotate_role_password(info, role, secret_block, secret_format, aws)


@flow(name="rotate-password", **FAILURE_HOOKS)
@documented
def rotate_password(
    role: Annotated[str, Field(description="role whose password to rotate")],
    database_url: DatabaseUrl = None,
    secret_block: SecretBlock = None,
    secret_format: StoredAs = "url",
    aws_secret_id: Annotated[
        str | None, Field(description="also store in this AWS Secrets Manager secret")
    ] = None,
    aws_region: Annotated[str | None, Field(description="default AWS_DEFAULT_REGION")] = None,
    aws_endpoint_url: Annotated[
        str | None, Field(description="default AWS_ENDPOINT_URL_SECRETSMANAGER")
    ] = None,
) -> dict:
    """New strong password, proven to log in, stored in a Prefect Secret (and AWS).

    Restarting the application so it picks the new password up (the guide's
    rolling restart) is not part of this flow.
    """
    reject_inline_password(database_url, "database_url")
    aws = (
        AwsSecretTarget(secret_id=aws_secret_id, region=aws_region, endpoint_url=aws_endpoint_url)
        if aws_secret_id
        else None
    )
    result = rotate(database_url, role, secret_block, secret_format, aws)
    publish_table(
        [{"item": k, "value": str(v)} for k, v in asdict(result).items()],
        key=f"rotate-password-{result.database}-{role}",
        description=f"Password of {role!r} rotated; restart the app to pick it up",
    )
    get_run_logger().info(
        "Password of %r rotated, login verified, stored in Prefect Secret %r%s",
        role,
        result.secret_block,
        f" and AWS secret {result.aws_secret_id!r}" if result.aws_secret_id else "",
    )
    return asdict(result)


@task(name="terminate-blocking-sessions", cache_policy=NO_CACHE)
def terminate(
    database_url: str | None, min_blocked_seconds: float, confirm: bool
) -> list[BlockingSession]:
    logger = get_run_logger()
    heads = terminate_blocking_sessions(_info(database_url), min_blocked_seconds, confirm)
    for head in heads:
        logger.warning(
            "pid %d (%s) blocks %s for %.0f s: %s",
            head.pid,
            head.user,
            head.blocked_pids,
            head.longest_wait_seconds,
            head.action,
        )
    return heads


@flow(name="terminate-blocking", **FAILURE_HOOKS)
@documented
def terminate_blocking(
    database_url: DatabaseUrl = None,
    min_blocked_seconds: Annotated[
        float, Field(ge=0, description="only sessions keeping others waiting longer than this")
    ] = 60.0,
    confirm: Annotated[
        bool, Field(description="really terminate; without it the run only reports")
    ] = False,
) -> dict:
    """Last resort: pg_terminate_backend on the sessions at the head of lock chains."""
    reject_inline_password(database_url, "database_url")
    if min_blocked_seconds < 0:
        raise DbopsError("min_blocked_seconds must be >= 0")
    heads = terminate(database_url, min_blocked_seconds, confirm)
    rows = [h.row() for h in heads]
    publish_table(
        rows or [{"pid": "-", "action": "no session blocks others that long"}],
        key="terminate-blocking",
        description=f"Sessions blocking others for more than {min_blocked_seconds:g} s",
    )
    return {
        "confirmed": confirm,
        "min_blocked_seconds": min_blocked_seconds,
        "terminated": [r for r in rows if r["action"] == "terminated"],
        "sessions": rows,
    }

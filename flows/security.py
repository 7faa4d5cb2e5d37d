"""create-readonly-user, rotate-password and terminate-blocking: the guide's security section.

No password is ever a parameter, a log line, an artifact or a return value:
passwords are generated inside tasks and leave them only for the secret stores.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow, get_run_logger
from prefect.states import Completed, Failed, State
from pydantic import Field

from tasks.application.commands import ApplicationHooks
from tasks.application.hooks import APPLICATION_HOOKS, merged
from tasks.application.tasks import restart_application
from tasks.core.errors import ParameterError
from tasks.core.parameters import DatabaseUrl, documented
from tasks.core.settings import reject_inline_password
from tasks.operations.outcomes import outcome_hooks
from tasks.security.blocking import TerminationReport
from tasks.security.report import publish_readonly, publish_rotation, publish_termination
from tasks.security.roles import SecretFormat
from tasks.security.rotation import RotationResult
from tasks.security.secret_stores import AwsSecretTarget
from tasks.security.tasks import readonly_role, rotate, terminate

SecretBlock = Annotated[
    str | None,
    Field(description="Prefect Secret block for the credentials; default dbops-<db>-<role>"),
]
StoredAs = Annotated[
    SecretFormat,
    Field(description="store a full DATABASE_URL (usable as secret://BLOCK) or the password"),
]


@flow(name="create-readonly-user", **outcome_hooks("readonly-user"))
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
) -> State:
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
    publish_readonly(result)
    if not result.ok:
        return Failed(
            message=f"role {role!r} is not read-only as expected: {'; '.join(result.failures)}",
            data=result,
        )
    return Completed(message=f"role {role!r} is read-only", data=result)


@flow(name="rotate-password", **merged(APPLICATION_HOOKS, outcome_hooks("password-rotation")))
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
    application: Annotated[
        ApplicationHooks | None,
        Field(
            description="restart the application once the new password is stored: restart_app "
            '(e.g. ["kubectl", "rollout", "restart", "deployment/web"]), or stop_app and '
            "start_app"
        ),
    ] = None,
) -> RotationResult:
    """New strong password, proven to log in, stored in a Prefect Secret (and AWS); then the
    application's restart (the guide's rolling restart) when `application` says how."""
    reject_inline_password(database_url, "database_url")
    if application is not None:
        application.check_restart()
    aws = (
        AwsSecretTarget(secret_id=aws_secret_id, region=aws_region, endpoint_url=aws_endpoint_url)
        if aws_secret_id
        else None
    )
    result = rotate(database_url, role, secret_block, secret_format, aws)
    publish_rotation(result)
    get_run_logger().info(
        "Password of %r rotated, login verified, stored in Prefect Secret %r%s",
        role,
        result.secret_block,
        f" and AWS secret {result.aws_secret_id!r}" if result.aws_secret_id else "",
    )
    if application is not None:
        done = f"the password of {role!r} was rotated and stored in {result.secret_block!r}"
        result.app_restart_seconds = restart_application(application, database_url, done)
    return result


@flow(name="terminate-blocking", **outcome_hooks("terminate-blocking"))
@documented
def terminate_blocking(
    database_url: DatabaseUrl = None,
    min_blocked_seconds: Annotated[
        float, Field(ge=0, description="only sessions keeping others waiting longer than this")
    ] = 60.0,
    confirm: Annotated[
        bool, Field(description="really terminate; without it the run only reports")
    ] = False,
) -> TerminationReport:
    """Last resort: pg_terminate_backend on the sessions at the head of lock chains."""
    reject_inline_password(database_url, "database_url")
    if min_blocked_seconds < 0:
        raise ParameterError("min_blocked_seconds", "must be 0 or more seconds")
    heads = terminate(database_url, min_blocked_seconds, confirm)
    report = TerminationReport.of(confirm, min_blocked_seconds, heads)
    publish_termination(report)
    return report

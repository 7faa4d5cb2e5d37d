"""The security flows' Prefect tasks. Passwords are generated inside them and leave them only
for the secret stores; nothing is cached, and only the read-only setup is retried."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.core.errors import retry_transient
from tasks.core.postgres import ConnInfo
from tasks.core.settings import Settings
from tasks.security.blocking import BlockingSession, terminate_blocking_sessions
from tasks.security.readonly import ReadonlyResult, create_readonly_role
from tasks.security.roles import SecretFormat
from tasks.security.rotation import RotationResult, rotate_role_password
from tasks.security.secret_stores import AwsSecretTarget


def _info(database_url: str | None) -> ConnInfo:
    # Resolved inside tasks only, so the password never passes through Prefect.
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

"""Where passwords live: Prefect Secret blocks (always) and AWS Secrets Manager (optionally).

Both are checked before a password changes, so a rotation never leaves a
password that has no home.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from tasks.core.errors import ConfigError, TransientError, first_line
from tasks.core.postgres import ConnInfo
from tasks.core.settings import Settings


class AwsSecretTarget(BaseModel):
    """Where rotate-password also stores the credentials in AWS Secrets Manager."""

    secret_id: str = Field(description="name or ARN of the secret (created when missing)")
    region: str | None = Field(None, description="default AWS_DEFAULT_REGION")
    endpoint_url: str | None = Field(
        None, description="default AWS_ENDPOINT_URL_SECRETSMANAGER (LocalStack, moto)"
    )

    def client(self, settings: Settings | None = None) -> Any:
        """A Secrets Manager client; what is not given here comes from the settings."""
        import boto3
        from botocore.config import Config

        settings = settings or Settings.from_env()
        return boto3.client(
            "secretsmanager",
            config=Config(
                connect_timeout=10, read_timeout=30, retries={"mode": "standard", "max_attempts": 3}
            ),
            region_name=self.region or settings.aws_region or "us-east-1",
            endpoint_url=self.endpoint_url or settings.secretsmanager_endpoint_url,
        )


def aws_secret_exists(target: AwsSecretTarget) -> bool:
    """Preflight: credentials and endpoint work; whether the secret must be created."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        target.client().describe_secret(SecretId=target.secret_id)
        return True
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return False
        raise ConfigError(
            f"cannot use AWS secret {target.secret_id!r}: {first_line(exc)}; nothing was changed"
        ) from None
    except BotoCoreError as exc:
        raise TransientError(
            f"cannot reach AWS Secrets Manager: {first_line(exc)}; nothing was changed"
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

"""One settings object: environment first, command-line flags and flow parameters override it."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, Field

from tasks.core.errors import DbopsError

SECRET_PREFIX = "secret://"


class S3Options(BaseModel):
    """What pgBackRest/WAL-G users expect to set for an S3 or S3-compatible store."""

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, R2, ...)")
    sse: Literal["AES256", "aws:kms"] | None = Field(None, description="Server-side encryption")
    sse_kms_key_id: str | None = Field(None, description="KMS key id when sse is aws:kms")
    storage_class: str | None = Field(None, description="e.g. STANDARD_IA, GLACIER_IR")
    tags: dict[str, str] = Field(default_factory=dict, description="Object tags")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> S3Options:
        env = os.environ if env is None else env
        sse = env.get("DBOPS_S3_SSE") or None
        if sse not in (None, "AES256", "aws:kms"):
            raise DbopsError(f"DBOPS_S3_SSE={sse!r} is not valid; use AES256 or aws:kms")
        return cls(
            endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
            sse=sse,
            sse_kms_key_id=env.get("DBOPS_S3_KMS_KEY_ID") or None,
            storage_class=env.get("DBOPS_S3_STORAGE_CLASS") or None,
            tags=parse_tags(env.get("DBOPS_S3_TAGS", "")),
        )

    def merged(self, **overrides: object) -> S3Options:
        """Flags override the environment; None means 'not given'."""
        given = {k: v for k, v in overrides.items() if v not in (None, {}, "")}
        return self.model_copy(update=given)


def parse_tags(text: str) -> dict[str, str]:
    """Parse 'k=v,k2=v2' into a dict, refusing malformed pairs."""
    tags: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise DbopsError(f"tag {pair!r} is not KEY=VALUE; write tags as k=v,k2=v2")
        tags[key.strip()] = value.strip()
    return tags


class Settings(BaseModel):
    """Where the database is and where backups go."""

    database_url: str | None = None
    backup_url: str = "./backups"
    s3: S3Options = Field(default_factory=S3Options)

    @classmethod
    def load(
        cls,
        database_url: str | None = None,
        backup_url: str | None = None,
        s3: S3Options | None = None,
    ) -> Settings:
        """Environment (DATABASE_URL, BACKUP_URL, AWS_*, DBOPS_S3_*) overridden by arguments."""
        return cls(
            database_url=resolve_secret(database_url or os.environ.get("DATABASE_URL") or None),
            backup_url=resolve_secret(backup_url or os.environ.get("BACKUP_URL") or "./backups"),
            s3=s3 or S3Options.from_env(),
        )

    def require_database_url(self) -> str:
        if not self.database_url:
            raise DbopsError(
                "no database given; set DATABASE_URL or pass --database-url "
                "postgresql://user@host:5432/dbname"
            )
        return self.database_url


def resolve_secret(value: str | None) -> str | None:
    """'secret://NAME' stands for the value of the Prefect Secret block NAME.

    Deployments reference URLs with passwords this way so the password is never
    stored in a parameter or a job variable.
    """
    if value is None or not value.startswith(SECRET_PREFIX):
        return value
    name = value[len(SECRET_PREFIX) :]
    from prefect.blocks.system import Secret

    try:
        return str(Secret.load(name).get())
    except ValueError as exc:
        raise DbopsError(
            f"Prefect Secret block {name!r} not found; create it with "
            f"Secret(value=...).save({name!r}) or in the UI under Blocks"
        ) from exc


def reject_inline_password(url: str | None, parameter: str) -> None:
    """Flow parameters are stored by the Prefect server and shown in its UI: no passwords there."""
    if not url or url.startswith(SECRET_PREFIX):
        return
    from tasks.core.postgres import ConnInfo

    if ConnInfo.parse(url).password:
        raise DbopsError(
            f"the {parameter} parameter contains a password, which Prefect would store with the "
            "run; put the URL in DATABASE_URL or a Secret block and pass secret://BLOCK_NAME"
        )

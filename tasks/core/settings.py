"""The one settings object: every environment variable dbops reads, and what they give access to.

Environment first; command-line flags and flow parameters override it (None
means "not given"). Tasks load settings themselves, so a password in
DATABASE_URL or a Secret block never passes through Prefect parameters.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from tasks.core.errors import ConfigError, NotFoundError, ParameterError
from tasks.storage.aws_blocks import resolve_s3_bucket
from tasks.storage.destinations import Destination, S3Options

if TYPE_CHECKING:
    from tasks.core.postgres import ConnInfo

SECRET_PREFIX = "secret://"
DEFAULT_BACKUP_URL = "./backups"


class Settings(BaseModel):
    """Where the database is, where backups go, and the knobs around them."""

    database_url: str | None = Field(None, description="DATABASE_URL: the libpq URI")
    backup_url: str = Field(DEFAULT_BACKUP_URL, description="BACKUP_URL: s3://... or a directory")
    verify_database_url: str | None = Field(
        None, description="VERIFY_DATABASE_URL: server for scratch databases"
    )
    s3: S3Options = Field(default_factory=S3Options, description="AWS_ENDPOINT_URL_S3, DBOPS_S3_*")
    pg_bin_dir: str | None = Field(None, description="PG_BIN_DIR: client tools to prefer")
    environment: str | None = Field(None, description="DBOPS_ENVIRONMENT: development, production")
    webhook_url: str | None = Field(None, description="DBOPS_WEBHOOK_URL: failure notifications")
    notify_flows: str | None = Field(None, description="DBOPS_NOTIFY_FLOWS: flows to notify about")
    notify_on: str | None = Field(None, description="DBOPS_NOTIFY_ON: failure (default), success")
    ping_url: str | None = Field(None, description="DBOPS_PING_URL: heartbeat pings, or secret://")
    ui_url: str | None = Field(None, description="PREFECT_UI_URL: links in notifications")
    aws_region: str | None = Field(None, description="AWS_DEFAULT_REGION")
    secretsmanager_endpoint_url: str | None = Field(
        None, description="AWS_ENDPOINT_URL_SECRETSMANAGER"
    )
    age_recipients: str | None = Field(
        None, description="DBOPS_AGE_RECIPIENTS: age public keys or files of them, comma-separated"
    )
    age_identity: str | None = Field(
        None, description="DBOPS_AGE_IDENTITY: an age identity file, or secret://BLOCK"
    )
    cache_dir: str | None = Field(
        None,
        description="DBOPS_CACHE_DIR: the metadata cache (default $XDG_CACHE_HOME/dbops or "
        "~/.cache/dbops); None: off (DBOPS_CACHE_DIR=off or empty)",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Exactly what the environment says, secrets unresolved."""
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            return env.get(name) or None

        return cls(
            database_url=get("DATABASE_URL"),
            backup_url=get("BACKUP_URL") or DEFAULT_BACKUP_URL,
            verify_database_url=get("VERIFY_DATABASE_URL"),
            s3=s3_options_from_env(env),
            pg_bin_dir=get("PG_BIN_DIR"),
            environment=get("DBOPS_ENVIRONMENT"),
            webhook_url=get("DBOPS_WEBHOOK_URL"),
            notify_flows=get("DBOPS_NOTIFY_FLOWS"),
            notify_on=get("DBOPS_NOTIFY_ON"),
            ping_url=get("DBOPS_PING_URL"),
            ui_url=get("PREFECT_UI_URL"),
            aws_region=get("AWS_DEFAULT_REGION"),
            secretsmanager_endpoint_url=get("AWS_ENDPOINT_URL_SECRETSMANAGER"),
            age_recipients=get("DBOPS_AGE_RECIPIENTS"),
            age_identity=get("DBOPS_AGE_IDENTITY"),
            cache_dir=str(cache_dir) if (cache_dir := metadata_cache_dir(env)) else None,
        )

    @classmethod
    def load(
        cls,
        database_url: str | None = None,
        backup_url: str | None = None,
        s3: S3Options | None = None,
        verify_database_url: str | None = None,
    ) -> Settings:
        """The environment overridden by arguments, with `secret://BLOCK` URLs resolved."""
        env = cls.from_env()
        return env.model_copy(
            update={
                "database_url": resolve_secret(database_url or env.database_url),
                "backup_url": resolve_secret(backup_url or env.backup_url) or DEFAULT_BACKUP_URL,
                "verify_database_url": resolve_secret(
                    verify_database_url or env.verify_database_url
                ),
                "s3": s3 or env.s3,
            }
        )

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigError(
                "no database given; set DATABASE_URL or pass --database-url "
                "postgresql://user@host:5432/dbname"
            )
        return self.database_url

    def connection(self) -> ConnInfo:
        """The target database, parsed; its password stays inside."""
        from tasks.core.postgres import ConnInfo

        return ConnInfo.parse(self.require_database_url())

    def destination(self) -> Destination:
        """Where backups are: S3 (an `s3-bucket://BLOCK` names a prefect-aws S3Bucket) or a
        local directory."""
        return Destination.from_url(*resolve_s3_bucket(self.backup_url, self.s3))

    def scratch_server(self) -> ConnInfo:
        """VERIFY_DATABASE_URL (a separate server) or else the DATABASE_URL server."""
        from tasks.core.postgres import ConnInfo

        url = self.verify_database_url or self.database_url
        if not url:
            raise ConfigError(
                "no server for the scratch database; set VERIFY_DATABASE_URL (or DATABASE_URL) "
                "to a server where dbops may CREATE and DROP a database"
            )
        return ConnInfo.parse(url)


def metadata_cache_dir(env: Mapping[str, str] | None = None) -> Path | None:
    """Where the cache of manifests and records lives (`storage/metadata_cache.py`); None:
    off. DBOPS_CACHE_DIR, else $XDG_CACHE_HOME/dbops, else ~/.cache/dbops."""
    env = os.environ if env is None else env
    value = env.get("DBOPS_CACHE_DIR")
    if value is not None:
        return None if value.strip().lower() in ("", "off") else Path(value).expanduser()
    if env.get("XDG_CACHE_HOME", "").startswith("/"):  # the spec ignores a relative one
        return Path(env["XDG_CACHE_HOME"]) / "dbops"
    try:
        return Path.home() / ".cache" / "dbops"
    except RuntimeError:  # no home directory: no cache
        return None


def s3_options_from_env(env: Mapping[str, str] | None = None) -> S3Options:
    env = os.environ if env is None else env
    sse = env.get("DBOPS_S3_SSE") or None
    if sse not in (None, "AES256", "aws:kms"):
        raise ConfigError(f"DBOPS_S3_SSE={sse!r} is not valid; use AES256 or aws:kms")
    return S3Options(
        endpoint_url=env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None,
        sse=sse,  # type: ignore[arg-type]
        sse_kms_key_id=env.get("DBOPS_S3_KMS_KEY_ID") or None,
        storage_class=env.get("DBOPS_S3_STORAGE_CLASS") or None,
        tags=parse_tags(env.get("DBOPS_S3_TAGS", "")),
        credentials_block=env.get("DBOPS_AWS_CREDENTIALS_BLOCK") or None,
        **object_lock_from_env(env),
    )


def s3_with_lock(s3: S3Options | None, mode: str | None, days: int | None) -> S3Options | None:
    """The S3 options with a run's lock parameters merged in (they override the environment)."""
    from tasks.storage.object_lock import check_lock_request

    check_lock_request(mode, days)
    if not mode:
        return s3
    base = s3 or s3_options_from_env()
    return base.model_copy(update={"object_lock": mode, "object_lock_days": days})


def object_lock_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """DBOPS_S3_OBJECT_LOCK (governance|compliance) and DBOPS_S3_OBJECT_LOCK_DAYS."""
    mode = env.get("DBOPS_S3_OBJECT_LOCK") or None
    days_text = env.get("DBOPS_S3_OBJECT_LOCK_DAYS") or None
    if mode not in (None, "governance", "compliance"):
        raise ConfigError(
            f"DBOPS_S3_OBJECT_LOCK={mode!r} is not valid; use governance or compliance"
        )
    try:
        days = int(days_text) if days_text else None
    except ValueError:
        days = 0
    if (days is not None and days < 1) or bool(mode) != bool(days):
        raise ConfigError(
            "DBOPS_S3_OBJECT_LOCK and DBOPS_S3_OBJECT_LOCK_DAYS go together: a mode "
            "(governance or compliance) and a whole number of days, 1 or more"
        )
    return {"object_lock": mode, "object_lock_days": days} if mode else {}


def parse_tags(text: str) -> dict[str, str]:
    """Parse 'k=v,k2=v2' into a dict, refusing malformed pairs."""
    tags: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"tag {pair!r} is not KEY=VALUE; write tags as k=v,k2=v2")
        tags[key.strip()] = value.strip()
    return tags


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
        raise NotFoundError(
            f"Prefect Secret block {name!r} not found; create it with "
            f"Secret(value=...).save({name!r}) or in the UI under Blocks"
        ) from exc


def reject_inline_key(identity: str | None, parameter: str = "identity") -> None:
    """An age identity parameter names a file or a Secret block; the key itself is refused."""
    if identity and identity.strip().startswith("AGE-SECRET-KEY-"):
        raise ParameterError(
            parameter,
            "must be a file path or secret://BLOCK, never the key itself (Prefect would store "
            "it with the run); write the key to a file readable only by you",
        )


def reject_inline_password(url: str | None, parameter: str) -> None:
    """Flow parameters are stored by the Prefect server and shown in its UI: no passwords there."""
    if not url or url.startswith(SECRET_PREFIX):
        return
    from tasks.core.postgres import ConnInfo

    if ConnInfo.parse(url).password:
        raise ParameterError(
            parameter,
            "contains a password, which Prefect would store with the run; put the URL in "
            "DATABASE_URL or a Secret block and pass secret://BLOCK_NAME",
        )

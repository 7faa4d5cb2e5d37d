"""Bad input refused at once: checks that run before a command imports Prefect or its flow.

Also where a command's progress bar is switched on (a terminal, not `--json`).

Importing Prefect takes seconds and a bare `dbops backup` may start a temporary Prefect
server; a missing or malformed database URL, an unsupported backup location or a missing
file must not wait for that. `install(app)` wraps every command so these checks see its
parsed options first; the flows check everything again (runs from the UI skip the CLI).
Nothing here imports Prefect.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tasks.core.errors import ConfigError

SECRET_PREFIX = "secret://"
# Commands that work on DATABASE_URL's database and cannot start without one.
NEEDS_DATABASE = frozenset(
    {
        "backup",
        "restore",
        "health",
        "vacuum",
        "analyze",
        "reindex",
        "migrate",
        "reset",
        "create_readonly_user_cmd",
        "rotate_password_cmd",
        "terminate_blocking_cmd",
        "cleanup",
    }
)
# Commands whose flows report bytes moved: a bar on a terminal (cli/progress.py).
SHOWS_PROGRESS = frozenset({"backup", "restore", "verify"})
# Options naming a backup location, by parameter name, with their flag.
LOCATIONS = {"to": "--to", "backups": "--from"}
# Options naming a file or directory that must exist.
EXISTING_PATHS = {
    "migrations": "--migrations",
    "verify_sql": "--verify-sql",
    "workdir": "--workdir",
}


def check_database_url(url: str | None, flag: str = "--database-url") -> None:
    """A libpq URI that parses (a `secret://BLOCK` is read later, in the run)."""
    if url is None or url.startswith(SECRET_PREFIX):
        return
    from tasks.core.postgres import ConnInfo

    try:
        ConnInfo.parse(url)
    except ConfigError as exc:
        raise ConfigError(f"{flag}: {exc}") from None


def require_database_url(flag_value: str | None) -> None:
    url = flag_value or os.environ.get("DATABASE_URL") or None
    if not url:
        raise ConfigError(
            "no database given; set DATABASE_URL or pass --database-url "
            "postgresql://user@host:5432/dbname"
        )
    check_database_url(url, "--database-url" if flag_value else "DATABASE_URL")


def check_location(url: str | None, flag: str) -> None:
    if not url or url.startswith((SECRET_PREFIX, "s3://", "s3-bucket://", "file://")):
        return
    if "://" not in url:
        return
    scheme = url.split("://", 1)[0]
    raise ConfigError(
        f"{flag}: backup location scheme {scheme[:20]!r} is not supported; "
        "use s3://bucket/prefix or a local directory"
    )


def check_source(source: str | None) -> None:
    """A SOURCE written as a path must exist (`latest`, ids and s3:// URLs are looked up)."""
    if not source or "://" in source or os.sep not in source:
        return
    if not Path(source).is_file():
        raise ConfigError(f"SOURCE {source}: no such file; give `latest`, a backup id or a path")


def check_encryption(command: str, options: dict[str, Any]) -> None:
    """Recipients parse (a backup encrypts to them); an identity file is readable and holds
    a key. The key itself is read here only to check it, never printed."""
    from tasks.backup.encryption import load_identity, parse_recipients, recipients_from_env

    if command in ("backup", "migrate"):
        given = options.get("encrypt_to")
        if given:
            parse_recipients(given)
        else:
            from_env = recipients_from_env(os.environ.get("DBOPS_AGE_RECIPIENTS"))
            parse_recipients(from_env, "DBOPS_AGE_RECIPIENTS")
    identity = options.get("identity")
    if identity and not identity.startswith(SECRET_PREFIX):
        load_identity(identity)
    if command == "migrate" and not any(options.get(o) for o in ("dry_run", "repair", "rehearse")):
        check_rollback_key(options.get("encrypt_to"), identity)


def check_rollback_key(encrypt_to: list[str] | None, identity: str | None) -> None:
    """A migration whose pre-migration backup is encrypted needs the identity that opens it
    (its rollback decrypts it); a Secret block is only read by the flow."""
    from tasks.migrations.rollback_key import pre_migration_encryption

    identity = identity or os.environ.get("DBOPS_AGE_IDENTITY")
    if identity and identity.startswith(SECRET_PREFIX):
        return  # the flow's first task reads the block and checks it
    pre_migration_encryption(encrypt_to, identity, os.environ.get("DBOPS_AGE_RECIPIENTS"), None)


def check(command: str, options: dict[str, Any]) -> None:
    """Every check that needs nothing but the options and the environment."""
    if command in NEEDS_DATABASE:
        require_database_url(options.get("database_url"))
    else:
        check_database_url(options.get("database_url"))
    if command == "verify":
        check_database_url(options.get("verify_database_url"), "--verify-database-url")
        if not any(
            (
                options.get("database_url"),
                options.get("verify_database_url"),
                os.environ.get("DATABASE_URL"),
                os.environ.get("VERIFY_DATABASE_URL"),
            )
        ):
            raise ConfigError(
                "no server for the scratch database; set VERIFY_DATABASE_URL or DATABASE_URL "
                "(or pass --verify-database-url)"
            )
    for name, flag in LOCATIONS.items():
        check_location(options.get(name), flag)
    for name, flag in EXISTING_PATHS.items():
        value = options.get(name)
        if value and not Path(value).exists():
            raise ConfigError(f"{flag} {value}: no such file or directory")
    if command in ("restore", "verify"):
        check_source(options.get("source"))
    check_encryption(command, options)
    ping_url = options.get("ping_url")
    if ping_url and not ping_url.startswith(("http://", "https://", SECRET_PREFIX)):
        raise ConfigError("--ping-url must be an http(s) URL or secret://BLOCK")


def checked(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        from cli.app import fail

        try:
            check(callback.__name__, kwargs)
        except ConfigError as exc:
            from cli.app import error_line

            fail(error_line(exc))
        if callback.__name__ in SHOWS_PROGRESS:
            from cli.progress import show_progress

            show_progress(bool(kwargs.get("as_json")))
        return callback(*args, **kwargs)

    return run


def install(app: Any) -> None:
    """Wrap every registered command of the Typer app (call once, after they are registered)."""
    for command in app.registered_commands:
        if command.callback is not None and not getattr(command.callback, "__wrapped__", None):
            command.callback = checked(command.callback)

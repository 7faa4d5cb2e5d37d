"""The guide's `db:reset` is DEV ONLY: drop and recreate a database only where that is safe.

A target counts as non-production when DBOPS_ENVIRONMENT says so (development,
dev, test, testing, local, ci), or, when DBOPS_ENVIRONMENT is not set, when its
name ends in _dev, _test or _local. Any other DBOPS_ENVIRONMENT value (production,
staging...) refuses whatever the name. The caller must also confirm by giving the
database's name.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import sql
from pydantic import BaseModel, Field

from tasks.core.errors import DbopsError, ParameterError, first_line
from tasks.core.postgres import ConnInfo, database_exists, maintenance_conn
from tasks.core.settings import Settings

NON_PRODUCTION_ENVIRONMENTS = {"development", "dev", "test", "testing", "local", "ci"}
NON_PRODUCTION_NAME = re.compile(r".+_(dev|test|local)$", re.IGNORECASE)
SYSTEM_DATABASES = {"postgres", "template0", "template1"}


class ResetResult(BaseModel):
    """What the reset did, for the CLI and the run's result."""

    database: str
    target: str = Field(description="the database's URL without its password")
    owner: str
    non_production: str = Field(description="why the database counts as non-production")
    applied: list[str] = Field(default_factory=list, description="migrations applied after")


def non_production_reason(dbname: str, environment: str | None = None) -> str:
    """Why this database may be reset, or DbopsError saying why not and how to mark it."""
    env = (Settings.from_env().environment or "") if environment is None else environment
    env = env.strip().lower()
    if dbname in SYSTEM_DATABASES:
        raise DbopsError(f"refusing to reset the system database {dbname!r}")
    if env:
        if env in NON_PRODUCTION_ENVIRONMENTS:
            return f"DBOPS_ENVIRONMENT={env}"
        raise DbopsError(
            f"refusing to reset {dbname!r}: DBOPS_ENVIRONMENT={env} is not a development "
            "environment (reset is DEV ONLY); use development, test or local"
        )
    if NON_PRODUCTION_NAME.match(dbname):
        return f"its name ends in _{dbname.rsplit('_', 1)[-1].lower()}"
    raise DbopsError(
        f"refusing to reset {dbname!r}: it is not marked non-production (reset is DEV ONLY); "
        "set DBOPS_ENVIRONMENT=development where dbops runs, or use a database named "
        "*_dev, *_test or *_local"
    )


def check_confirmation(dbname: str, confirm: str | None) -> None:
    if confirm != dbname:
        raise ParameterError(
            "confirm",
            f"must be the database's name {dbname!r}: reset of {dbname!r} not confirmed, and "
            "it deletes every object and row in it",
        )


def reset_database(target: ConnInfo) -> str:
    """DROP DATABASE ... WITH (FORCE) and CREATE DATABASE with the same owner; returns it."""
    try:
        return _drop_and_create(target)
    except psycopg.Error as exc:
        detail = first_line(exc)
        raise DbopsError(
            f"cannot reset {target.dbname!r}: {detail}; the role needs to own the database "
            "and have CREATEDB"
        ) from None


def _drop_and_create(target: ConnInfo) -> str:
    with maintenance_conn(target) as admin:
        name = sql.Identifier(target.dbname)
        owner = None
        if database_exists(admin, target.dbname):
            row = admin.execute(
                "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
                [target.dbname],
            ).fetchone()
            owner = row[0] if row else None
            admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(name))
        if owner:
            admin.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(name, sql.Identifier(owner))
            )
        else:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(name))
    return owner or ""

"""Whose backup is it: the server a dump came from, and when a backup's date cannot be trusted.

Backups are grouped by (server, database), never by database name alone: two
servers with a database `app` under one prefix are two histories. A server is
named by PostgreSQL's `system_identifier`, which initdb chooses and which a
physical standby shares with its primary (same data, same history); host and
port say how it was reached, for people. Manifests written before identities
existed belong to the "unknown server".
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import TypeVar

import psycopg
from pydantic import BaseModel, Field

from tasks.core.postgres import ConnInfo, maintenance_conn

T = TypeVar("T")
UNKNOWN_SERVER = "unknown"
# A backup dated further ahead than this was stamped by a host whose clock is wrong.
CLOCK_TOLERANCE = timedelta(hours=1)


class ServerIdentity(BaseModel):
    """The server a backup came from; never a password."""

    system_identifier: str | None = Field(
        None, description="pg_control_system().system_identifier; None if not readable"
    )
    host: str = Field("", description="the host (or socket directory) it was reached by")
    port: str = ""

    @property
    def key(self) -> str:
        """What backups are grouped by: the system identifier, else host:port."""
        if self.system_identifier:
            return self.system_identifier
        if self.host:
            return f"{self.host}:{self.port or 5432}"
        return UNKNOWN_SERVER

    @property
    def label(self) -> str:
        where = f"{self.host}:{self.port or 5432}" if self.host else "local socket"
        return f"{self.key} ({where})" if self.system_identifier else self.key


def server_key(identity: ServerIdentity | None) -> str:
    return identity.key if identity is not None else UNKNOWN_SERVER


def read_server_identity(conn: psycopg.Connection, info: ConnInfo) -> ServerIdentity:
    """The connected server's identity; without the right to read it, host and port only."""
    system_identifier = None
    try:
        with conn.transaction():
            row = conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()
        system_identifier = str(row[0]) if row else None
    except psycopg.errors.InsufficientPrivilege:
        pass
    host = info.params.get("host", "") or info.params.get("hostaddr", "")
    return ServerIdentity(
        system_identifier=system_identifier, host=host, port=info.params.get("port", "")
    )


def identify_server(info: ConnInfo) -> ServerIdentity:
    """Connect (to a maintenance database if needed) and read the server's identity."""
    with maintenance_conn(info) as conn:
        return read_server_identity(conn, info)


def in_the_future(started_at: datetime, now: datetime) -> bool:
    """Dated beyond the clock tolerance: never newest, never fresh, never `latest`."""
    return started_at - now > CLOCK_TOLERANCE


def group_by_server(
    items: Iterable[T], server_of: Callable[[T], str], database_of: Callable[[T], str]
) -> dict[tuple[str, str], list[T]]:
    """(server, database) -> items, in the given order.

    Backups of the unknown server (manifests written before identities) join their
    database's one identified server when there is exactly one, so upgrading dbops
    splits no history; with several, they stay a group of their own.
    """
    items = list(items)
    identified: dict[str, set[str]] = {}
    for item in items:
        if server_of(item) != UNKNOWN_SERVER:
            identified.setdefault(database_of(item), set()).add(server_of(item))
    groups: dict[tuple[str, str], list[T]] = {}
    for item in items:
        server, database = server_of(item), database_of(item)
        if server == UNKNOWN_SERVER and len(identified.get(database, ())) == 1:
            server = next(iter(identified[database]))
        groups.setdefault((server, database), []).append(item)
    return groups


def legacy_group(key: tuple[str, str], groups: Iterable[tuple[str, str]]) -> bool:
    """The unknown server's group beside identified ones: no new backups will join it."""
    server, database = key
    return server == UNKNOWN_SERVER and any(s != server and d == database for s, d in groups)

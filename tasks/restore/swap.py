"""Replace a database by swap: restore into a scratch database, then rename it into place.

The two renames (target aside, scratch in) run in ONE transaction, so at no moment is the
target name missing: a failure or a kill before the commit leaves the target as it was, after
it the target is the restored copy. The old copy is dropped last. Other sessions on the scratch
database are shut out (ALLOW_CONNECTIONS false) and terminated; sessions on the target are
terminated, as `DROP DATABASE ... WITH (FORCE)` would. What pg_dump without --create does not
carry (owner, ACL, ALTER DATABASE SET, comment, connection limit, encoding and locale) is copied
from the target onto the scratch database before the swap.

Scratch and set-aside databases carry recognisable names (`<db>__dbops_restore_<token>`,
`<db>__dbops_old_<token>`, `<db>__dbops_verify_<token>`), within PostgreSQL's 63 bytes, so
leftovers of killed runs can be listed and dropped (`dbops cleanup`).
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from tasks.core.errors import ConfigError, SurroundingsError, TransientError, first_line

SYSTEM_DATABASES = ("postgres", "template0", "template1")
LEFTOVER = re.compile(
    r"^(?P<base>.*)__dbops_(?P<kind>restore|old|verify|rehearse)_(?P<token>[0-9a-z]+)$"
)
NAME_BYTES = 63
# GUCs whose value is a list: ALTER DATABASE SET takes their items as separate literals.
LIST_SETTINGS = {
    "search_path",
    "temp_tablespaces",
    "session_preload_libraries",
    "local_preload_libraries",
    "shared_preload_libraries",
    "unix_socket_directories",
    "log_destination",
}
SWAP_ATTEMPTS = 5


def refuse_system_database(name: str) -> None:
    if name in SYSTEM_DATABASES:
        raise ConfigError(
            f"refusing to replace {name!r}: it is a system database (postgres, template0, "
            "template1); restore into an application database"
        )


def helper_name(database: str, kind: str) -> str:
    """`<db>__dbops_<kind>_<token>`, the database part cut to fit 63 bytes on a character."""
    suffix = f"__dbops_{kind}_{secrets.token_hex(4)}"
    base = database.encode()[: NAME_BYTES - len(suffix)].decode(errors="ignore")
    return base + suffix


@dataclass(frozen=True)
class DatabaseState:
    """What belongs to the database object itself rather than to its contents."""

    owner: str
    encoding: str
    collate: str
    ctype: str
    allow_connections: bool
    connection_limit: int
    comment: str | None
    acl: list[tuple[str, str, bool]]  # (grantee, privilege, grantable); grantee '' = PUBLIC
    settings: list[tuple[str | None, str, str]]  # (role or None, name, value)
    acl_is_default: bool


def read_state(admin: psycopg.Connection, name: str) -> DatabaseState:
    with admin.cursor(row_factory=dict_row) as cur:
        row = cur.execute(
            """
            SELECT d.oid, pg_get_userbyid(d.datdba) AS owner,
                   pg_encoding_to_char(d.encoding) AS encoding, d.datcollate, d.datctype,
                   d.datallowconn, d.datconnlimit, d.datacl IS NULL AS acl_is_default,
                   shobj_description(d.oid, 'pg_database') AS comment
            FROM pg_database d WHERE d.datname = %s
            """,
            [name],
        ).fetchone()
        if row is None:
            raise SurroundingsError(f"database {name!r} disappeared during the restore")
        acl = cur.execute(
            """
            SELECT coalesce(pg_get_userbyid(NULLIF(a.grantee, 0)), '') AS grantee,
                   a.privilege_type, a.is_grantable
            FROM pg_database d, aclexplode(d.datacl) a
            WHERE d.oid = %s ORDER BY 1, 2
            """,
            [row["oid"]],
        ).fetchall()
        settings = cur.execute(
            """
            SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_get_userbyid(s.setrole) END AS role,
                   split_part(c, '=', 1) AS name, substr(c, strpos(c, '=') + 1) AS value
            FROM pg_db_role_setting s, unnest(s.setconfig) c
            WHERE s.setdatabase = %s ORDER BY 1 NULLS FIRST, 2
            """,
            [row["oid"]],
        ).fetchall()
    return DatabaseState(
        owner=row["owner"],
        encoding=row["encoding"],
        collate=row["datcollate"],
        ctype=row["datctype"],
        allow_connections=row["datallowconn"],
        connection_limit=row["datconnlimit"],
        comment=row["comment"],
        acl=[(a["grantee"], a["privilege_type"], a["is_grantable"]) for a in acl],
        settings=[(s["role"], s["name"], s["value"]) for s in settings],
        acl_is_default=row["acl_is_default"],
    )


def create_scratch(admin: psycopg.Connection, name: str, like: DatabaseState | None) -> None:
    """An empty database from template0, with the target's encoding and locale when known."""
    query = sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name))
    if like is not None:
        query += sql.SQL(" ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            sql.Literal(like.encoding), sql.Literal(like.collate), sql.Literal(like.ctype)
        )
    try:
        admin.execute(query)
    except psycopg.Error as exc:
        raise SurroundingsError(
            f"cannot create the scratch database {name!r} ({first_line(exc)}); the connecting "
            "role needs CREATEDB"
        ) from None


def _setting_value(name: str, value: str) -> sql.Composable:
    if name in LIST_SETTINGS:
        return sql.SQL(", ").join(sql.Literal(item.strip()) for item in value.split(","))
    return sql.Literal(value)


def apply_state(admin: psycopg.Connection, name: str, state: DatabaseState) -> None:
    """Give the scratch database the target's owner, ACL, settings, comment and limits."""
    db = sql.Identifier(name)
    statements = [
        sql.SQL("ALTER DATABASE {} OWNER TO {}").format(db, sql.Identifier(state.owner)),
        sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(
            db, sql.Literal(state.connection_limit)
        ),
        sql.SQL("COMMENT ON DATABASE {} IS {}").format(db, sql.Literal(state.comment)),
    ]
    if not state.acl_is_default:
        statements.append(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(db))
        statements.append(
            sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(db, sql.Identifier(state.owner))
        )
        for grantee, privilege, grantable in state.acl:
            statements.append(
                sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(privilege),
                    db,
                    sql.Identifier(grantee) if grantee else sql.SQL("PUBLIC"),
                    sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL(""),
                )
            )
    for role, setting, value in state.settings:
        target = sql.SQL("ALTER DATABASE {}").format(db)
        if role is not None:
            target = sql.SQL("ALTER ROLE {} IN DATABASE {}").format(sql.Identifier(role), db)
        statements.append(
            target
            + sql.SQL(" SET {} TO {}").format(
                sql.Identifier(setting), _setting_value(setting, value)
            )
        )
    try:
        with admin.transaction():
            for statement in statements:
                admin.execute(statement)
    except psycopg.Error as exc:
        raise SurroundingsError(
            f"cannot give the restored database the settings of {name!r} ({first_line(exc)}); "
            "connect as a superuser or the database owner"
        ) from None


def _terminate(admin: psycopg.Connection, name: str) -> None:
    admin.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()",
        [name],
    )


def _wait_gone(admin: psycopg.Connection, names: list[str], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        row = admin.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = ANY(%s) "
            "AND pid <> pg_backend_pid()",
            [names],
        ).fetchone()
        if not row or not row[0]:
            return
        time.sleep(0.05)


def shut_out(admin: psycopg.Connection, name: str) -> None:
    """Nobody else may use the scratch database: refuse new sessions, end the ones there."""
    admin.execute(sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)))
    _terminate(admin, name)
    _wait_gone(admin, [name])


def swap_in(
    admin: psycopg.Connection,
    scratch: str,
    target: str,
    aside: str | None,
    allow: bool,
    drop_aside: bool = True,
) -> None:
    """One transaction: target -> aside (when it exists), scratch -> target. Then drop aside,
    unless the caller drops it later (after the application is started again)."""
    rename = sql.SQL("ALTER DATABASE {} RENAME TO {}")
    for attempt in range(1, SWAP_ATTEMPTS + 1):
        if aside is not None:
            _terminate(admin, target)  # sessions of the old database end, as with FORCE
            _wait_gone(admin, [target, scratch])
        try:
            with admin.transaction():
                if aside is not None:
                    admin.execute(rename.format(sql.Identifier(target), sql.Identifier(aside)))
                    admin.execute(
                        sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
                            sql.Identifier(aside)
                        )
                    )
                admin.execute(rename.format(sql.Identifier(scratch), sql.Identifier(target)))
                admin.execute(
                    sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format(
                        sql.Identifier(target), sql.SQL("true" if allow else "false")
                    )
                )
            break
        except psycopg.errors.ObjectInUse as exc:  # a session came back between the two steps
            if attempt == SWAP_ATTEMPTS:
                raise TransientError(
                    f"could not swap {scratch!r} in for {target!r}: {first_line(exc)}; "
                    f"{target!r} is unchanged, try again"
                ) from None
            time.sleep(0.2 * attempt)
    if aside is not None and drop_aside:
        drop(admin, aside)


def drop(admin: psycopg.Connection, name: str) -> None:
    admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def leftovers(admin: psycopg.Connection) -> list[str]:
    """Scratch and set-aside databases that a killed dbops run left behind."""
    rows = admin.execute("SELECT datname FROM pg_database ORDER BY 1").fetchall()
    return [name for (name,) in rows if LEFTOVER.match(name)]

"""Connection settings and client-tool discovery."""

from __future__ import annotations

import os

import pytest

from tasks.core.client_tools import available_tools, find_client_tool
from tasks.core.errors import DbopsError
from tasks.core.postgres import ConnInfo


def test_guide_prisma_url_is_accepted_and_its_app_params_kept_aside():
    info = ConnInfo.parse(
        "postgresql://user:s3cr%40t@db.example.com:5432/ai_saas?schema=public&connection_limit=10"
        "&pool_timeout=20&connect_timeout=10&sslmode=require"
    )
    assert info.params["password"] == "s3cr@t"
    assert info.params["sslmode"] == "require" and info.params["connect_timeout"] == "10"
    assert info.app_params == {"schema": "public", "connection_limit": "10", "pool_timeout": "20"}
    assert info.dbname == "ai_saas"


def test_redacted_url_and_child_env_hide_the_password_from_argv():
    info = ConnInfo.parse("postgresql://app:hunter2@db:6432/ai_saas?sslmode=verify-full")
    shown = info.redacted()
    assert "hunter2" not in shown
    assert shown.startswith("postgresql://app@db:6432/ai_saas") and "sslmode=verify-full" in shown
    env = info.child_env({})
    assert env["PGPASSWORD"] == "hunter2" and env["PGHOST"] == "db" and env["PGPORT"] == "6432"
    assert env["PGDATABASE"] == "ai_saas" and env["PGSSLMODE"] == "verify-full"


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("postgresql://u@h:notaport/db", "malformed database URL"),
        ("postgresql://u@h:99999/db", "malformed database URL"),
        ("mysql://root@localhost/db", "not supported"),
        ("", "empty"),
        ("host=h port=5432 dbname", "malformed database URL"),
    ],
)
def test_malformed_urls_get_one_line_errors(url, fragment):
    with pytest.raises(DbopsError) as error:
        ConnInfo.parse(url)
    assert fragment in str(error.value)
    assert "\n" not in str(error.value)


def test_client_tool_major_version_at_least_the_servers():
    found = available_tools("pg_dump")
    majors = {tool.major for tool in found}
    assert {15, 18} <= majors  # Debian's 15 on PATH, the embedded wheel's 18
    assert find_client_tool("pg_dump", 15).major >= 15
    assert find_client_tool("pg_dump", 16).major == 18


def test_pg_bin_dir_is_preferred(monkeypatch):
    monkeypatch.setenv("PG_BIN_DIR", "/usr/lib/postgresql/15/bin")
    assert find_client_tool("pg_dump", 12).path == "/usr/lib/postgresql/15/bin/pg_dump"


def test_no_suitable_tool_names_versions_found_and_needed():
    with pytest.raises(DbopsError) as error:
        find_client_tool("pg_dump", 99)
    message = str(error.value)
    assert "major version >= 99" in message
    assert "15." in message and "18." in message
    assert "PG_BIN_DIR" in message


def test_url_without_password_uses_passfile(pg):
    url = pg.url("postgres", password="")
    assert os.environ["PGPASSFILE"]
    with ConnInfo.parse(url).connect() as conn:
        assert conn.execute("select 1").fetchone() == (1,)

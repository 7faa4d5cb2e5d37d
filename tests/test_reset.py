"""reset-database: the guide's "reset is DEV ONLY", enforced both ways, and confirmed."""

from __future__ import annotations

import uuid

import pytest
from psycopg import sql

from flows.reset import reset_database_flow
from tasks.core.errors import DbopsError
from tasks.core.postgres import ConnInfo
from tasks.migrations.reset import non_production_reason
from tests.conftest import content_checksums
from tests.test_migrate import run_dbops, write_migrations


def named_database(pg, name: str) -> str:
    """A database with one table of 5 rows, under an exact name (the name rule matters)."""
    name = f"{name.split('_')[0]}{uuid.uuid4().hex[:6]}_{name.split('_', 1)[1]}"
    with ConnInfo.parse(pg.url("postgres", password="")).connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = pg.url(name, password="")
    with ConnInfo.parse(url).connect() as conn:
        conn.execute("CREATE TABLE keep (id int); INSERT INTO keep SELECT generate_series(1, 5)")
    return url


@pytest.fixture(autouse=True)
def no_environment(monkeypatch):
    monkeypatch.delenv("DBOPS_ENVIRONMENT", raising=False)


def test_name_and_setting_rules():
    assert non_production_reason("shop_dev", "") == "its name ends in _dev"
    assert non_production_reason("shop_TEST", "") == "its name ends in _test"
    assert non_production_reason("shop", "development") == "DBOPS_ENVIRONMENT=development"
    for name, env in [("shop", ""), ("shop_prod", ""), ("dev", ""), ("shop_dev", "production")]:
        with pytest.raises(DbopsError, match="refusing to reset"):
            non_production_reason(name, env)
    with pytest.raises(DbopsError, match="system database"):
        non_production_reason("postgres", "development")


def test_refuses_production_and_unconfirmed_targets(prefect, pg, monkeypatch):
    prod = named_database(pg, "shop_prod")
    state = reset_database_flow(
        database_url=prod, confirm=prod.rsplit("/", 1)[-1], return_state=True
    )
    assert state.is_failed() and "not marked non-production" in state.message
    assert content_checksums(prod)["public.keep"][0] == 5

    dev = named_database(pg, "shop_dev")
    monkeypatch.setenv("DBOPS_ENVIRONMENT", "production")  # the setting beats the name
    state = reset_database_flow(database_url=dev, confirm=dev.rsplit("/", 1)[-1], return_state=True)
    assert state.is_failed() and "DBOPS_ENVIRONMENT=production" in state.message
    monkeypatch.delenv("DBOPS_ENVIRONMENT")
    state = reset_database_flow(database_url=dev, confirm="yes", return_state=True)
    assert state.is_failed() and "not confirmed" in state.message
    assert content_checksums(dev)["public.keep"][0] == 5


def test_resets_a_dev_database_and_reapplies_migrations(prefect, pg, monkeypatch, tmp_path):
    plain = named_database(pg, "shop_main")
    monkeypatch.setenv("DBOPS_ENVIRONMENT", "development")
    root = write_migrations(tmp_path / "m", {"0001_a.sql": "CREATE TABLE a (id int);"})
    name = plain.rsplit("/", 1)[-1]
    state = reset_database_flow(
        database_url=plain, confirm=name, migrations=str(root), return_state=True
    )
    assert state.is_completed(), state.message
    assert state.result().applied == ["0001_a"]
    assert set(content_checksums(plain)) == {"public.a", "public.dbops_schema_history"}


def test_cli_asks_before_resetting(prefect, pg):
    dev = named_database(pg, "shop_dev")
    env = {"DATABASE_URL": dev}
    cancelled = run_dbops("reset", api_url=prefect, env=env, input="n\n")
    assert cancelled.returncode == 1
    assert "cancelled; nothing was changed" in cancelled.stderr
    assert content_checksums(dev)["public.keep"][0] == 5

    done = run_dbops("reset", "--json", api_url=prefect, env=env, input="y\n")
    assert done.returncode == 0, done.stderr[-2000:]
    assert '"non_production": "its name ends in _dev"' in done.stdout
    assert content_checksums(dev) == {}


def test_reset_waits_for_another_job_on_the_database(prefect, pg):
    from tests.test_migrate_safety import slot_held_elsewhere

    dev = named_database(pg, "shop_dev")
    with slot_held_elsewhere(dev):
        state = reset_database_flow(
            database_url=dev, confirm=dev.rsplit("/", 1)[-1], slot_wait_seconds=1, return_state=True
        )
    assert state.is_failed() and "another dbops job held" in state.message
    assert content_checksums(dev)["public.keep"][0] == 5

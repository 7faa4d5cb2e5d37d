"""Hostile passwords (literal %, @, :, /, #, spaces, quotes, non-ASCII) never surface: not in the
CLI's output, not in the Prefect records of the runs a command started, not in stored files."""

from __future__ import annotations

import gzip
import re
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote

import pytest
from psycopg import sql

from tasks.core.errors import ConfigError
from tasks.core.postgres import ConnInfo
from tasks.demo.sample_data import create_sample_database
from tests.backup_helpers import invoke_dbops
from tests.conftest import run_cli
from tests.prefect_records import flow_run_ids, records_text

# The case of the issue: a literal % not followed by two hex digits.
PERCENT = "Zq50%oXvK"
# Everything that splits a URL, and what only quoting or encoding can carry.
EVERYTHING = "Kpq@Lmz:Nqx/Rsw#Tuv Wyq'Jkx\"Vbz%Ümlaut€"


def pieces(password: str) -> list[str]:
    """The password, its encoded form, and every run of 3+ letters/digits in it."""
    runs = [run for run in re.split(r"[^\w]+", password) if len(run) >= 3]
    return [password, quote(password, safe=""), *runs]


def assert_hidden(password: str, *texts: str) -> None:
    for text in texts:
        for piece in pieces(password):
            assert piece not in text, f"{piece!r} of the password appears in:\n{text[-3000:]}"


@pytest.mark.parametrize(
    "password",
    [
        PERCENT,
        EVERYTHING,
        "Kpq@Lmz",
        "Kpq/Lmz@",
        "Kpq#Lmz",
        "Kpq Lmz",
        "%zzKpq",
        "Kpq%2",
        "Kpq?Lmz",
    ],
)
def test_unencoded_passwords_are_refused_without_echo(password):
    url = f"postgresql://app:{password}@db.example.com:5432/app?sslmode=require"
    with pytest.raises(ConfigError) as error:
        ConnInfo.parse(url)
    message = str(error.value)
    assert "percent-encode" in message and "\n" not in message
    assert "db.example.com" not in message
    assert_hidden(password, message)


@pytest.mark.parametrize(
    "text",
    ["host=h password=Kpq Lmz", "host=h password='Kpq", "host=h Kpq=Lmz", "host=h port=Kpq"],
)
def test_libpq_parse_errors_name_the_problem_not_the_text(text):
    with pytest.raises(ConfigError) as error:
        ConnInfo.parse(text)
    assert "malformed database URL" in str(error.value)
    assert "Kpq" not in str(error.value) and "Lmz" not in str(error.value)


def test_encoded_hostile_password_is_read_back_exactly():
    info = ConnInfo.parse(f"postgresql://app:{quote(EVERYTHING, safe='')}@h:5432/app")
    assert info.password == EVERYTHING
    assert_hidden(EVERYTHING, info.redacted(), repr(info.with_dbname("x").redacted()))


@pytest.fixture
def hostile_role(pg):
    """A role whose password holds every hostile character, owning a small database."""
    role = f"hostile_{uuid.uuid4().hex[:8]}"
    database = f"{role}_app"
    with ConnInfo.parse(pg.url("postgres", password="")).connect() as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(EVERYTHING)
            )
        )
        conn.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(database), sql.Identifier(role)
            )
        )

    def url(password: str, dbname: str = database) -> str:
        return f"postgresql://{role}:{password}@127.0.0.1:{pg.port}/{dbname}"

    create_sample_database(ConnInfo.parse(url(quote(EVERYTHING, safe=""))), size_mb=0.3)
    return database, url


def commands(database: str, backups: Path, migrations: Path) -> dict[str, list[str]]:
    where = ["--to", str(backups)]
    return {
        "backup": ["backup", *where],
        "list": ["list", *where],
        "verify": ["verify", "latest", "--from", str(backups), "--database", database],
        "health": ["health", "--check", "connections"],
        "migrate": ["migrate", "--dry-run", "--migrations", str(migrations), *where],
        "restore": [
            "restore",
            "latest",
            "--from",
            str(backups),
            "--from-database",
            database,
        ],
    }


def run_all(
    prefect, database, url, tmp_path, password_in_url, in_process: bool = False
) -> dict[str, object]:
    """Every command once; as separate processes, or in this process (a CliRunner) where only
    the refusal is checked, which needs no process start per command."""
    backups, migrations = tmp_path / "backups", tmp_path / "migrations"
    migrations.mkdir(exist_ok=True)
    (migrations / "0001_add_table.sql").write_text("CREATE TABLE hostile_check (id int);\n")
    results = {}
    for name, args in commands(database, backups, migrations).items():
        target = url(password_in_url, f"{database}_restored") if name == "restore" else None
        env = {"DATABASE_URL": target or url(password_in_url), "PGPASSFILE": "/nonexistent"}
        if in_process:
            outcome = invoke_dbops(*args, env=env)
            results[name] = SimpleNamespace(
                returncode=outcome.exit_code, stdout=outcome.stdout, stderr=outcome.stderr
            )
        else:
            results[name] = run_cli(*args, env=env, api_url=prefect)
    return results


def test_encoded_hostile_password_works_and_surfaces_nowhere(prefect, hostile_role, tmp_path):
    database, url = hostile_role
    before = flow_run_ids()
    results = run_all(prefect, database, url, tmp_path, quote(EVERYTHING, safe=""))
    for name, result in results.items():
        assert result.returncode == 0, (name, result.stderr[-3000:])
        assert_hidden(EVERYTHING, result.stdout, result.stderr)
    new_runs = flow_run_ids() - before
    assert len(new_runs) >= 5  # backup, verify, health, migrate, restore ran as flows
    text = records_text(new_runs)
    assert "backup" in text and "restore" in text.lower()
    assert_hidden(EVERYTHING, text)
    for stored in (tmp_path / "backups").iterdir():
        raw = stored.read_bytes()
        # Read what a compressed object holds: compressed bytes hold any 3-byte piece by chance.
        raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        assert_hidden(EVERYTHING, raw.decode("utf-8", "replace"))


@pytest.mark.parametrize("password", [PERCENT, EVERYTHING])
def test_unencoded_hostile_password_fails_every_command_without_echo(
    prefect, hostile_role, tmp_path, password
):
    database, url = hostile_role
    before = flow_run_ids()
    results = run_all(prefect, database, url, tmp_path, password, in_process=True)
    for name, result in results.items():
        assert_hidden(password, result.stdout, result.stderr)
        if name != "list":  # list reads only the backup location
            assert result.returncode == 1, (name, result.stderr[-3000:])
            assert "percent-encode" in result.stderr, (name, result.stderr[-3000:])
    assert_hidden(password, records_text(flow_run_ids() - before))
    assert not (tmp_path / "backups").exists() or not any((tmp_path / "backups").iterdir())

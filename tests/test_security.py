"""create-readonly-user, rotate-password and terminate-blocking against real PostgreSQL, a real
Prefect API and moto's Secrets Manager over HTTP; hostile names; passwords never leak."""

from __future__ import annotations

import json
import time
import uuid

import boto3
import psycopg
import pytest
from prefect.blocks.system import Secret
from psycopg import sql
from typer.testing import CliRunner

from flows.security import create_readonly_user, rotate_password, terminate_blocking
from tasks.core.errors import DbopsError
from tasks.core.postgres import ConnInfo
from tasks.demo.sample_data import create_sample_database
from tasks.security.readonly import create_readonly_role
from tasks.security.roles import default_secret_block, login_as
from tasks.security.rotation import rotate_role_password
from tasks.security.secret_stores import AwsSecretTarget, password_from_secret
from tests.backup_helpers import cli_app
from tests.conftest import new_database
from tests.test_health import (
    blocked_session,
    connect,
    flow_run_artifacts,
    flow_run_logs,
    make_accounts,
    wait_for,
)


def unique(prefix: str) -> str:
    return f"{prefix} {uuid.uuid4().hex[:8]}"


def secret_value(block: str) -> str:
    return str(Secret.load(block).get())


def assert_never_leaked(password: str, url: str, state) -> None:
    """Not in the run's logs, artifacts or result, nor in pg_stat_statements."""
    run_id = state.state_details.flow_run_id
    logs = flow_run_logs(run_id)
    assert "Finished in state" in logs  # the logs were really read
    assert password not in logs
    artifacts = flow_run_artifacts(run_id)
    assert artifacts
    for artifact in artifacts:
        assert password not in json.dumps(artifact.data) + str(artifact.description)
    assert password not in state.result(raise_on_failure=False).model_dump_json()
    with connect(url) as conn:
        leaks = conn.execute(
            "SELECT count(*) FROM pg_stat_statements WHERE strpos(query, %s) > 0", [password]
        ).fetchone()[0]
    assert leaks == 0


@pytest.fixture
def app_db(pg) -> str:
    """The guide's schema, tiny, with pg_stat_statements to look for leaks in."""
    url = new_database(pg, "ai_saas")
    create_sample_database(ConnInfo.parse(url), size_mb=0.02)
    with connect(url) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
    return url


def test_readonly_role_reads_todays_and_tomorrows_tables_and_cannot_write(pg, prefect, app_db):
    role = unique('ro"; DROP ROLE postgres; --')
    owner = unique("app owner")
    with connect(app_db) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(owner)))
        conn.execute(sql.SQL("GRANT CREATE ON SCHEMA public TO {}").format(sql.Identifier(owner)))
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
        conn.execute("CREATE TABLE app_settings (k text PRIMARY KEY, v text)")
        conn.execute("RESET ROLE")

    state = create_readonly_user(role=role, database_url=app_db, return_state=True)
    assert state.is_completed(), state.message
    result = state.result()
    assert result.created and result.checked_by == "login" and result.ok
    assert {"postgres", owner} <= set(result.owners)
    assert [c.result for c in result.checks] == ["ok", "ok"] + ["ok: permission denied"] * (
        len(result.checks) - 2
    )
    assert any(c.check.startswith("DELETE from public.Message") for c in result.checks)
    block = result.secret_block
    assert block == default_secret_block(ConnInfo.parse(app_db).dbname, role)
    stored = secret_value(block)
    password = password_from_secret(stored)
    assert ConnInfo.parse(stored).params["user"] == role and len(password) >= 40
    assert_never_leaked(password, app_db, state)

    # A table the other owner creates afterwards is readable too; nothing is writable.
    with connect(app_db) as conn:
        conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(owner)))
        conn.execute("CREATE TABLE later (id serial PRIMARY KEY, note text)")
        conn.execute("INSERT INTO later (note) VALUES ('hello')")
        conn.execute("RESET ROLE")
    info = ConnInfo.parse(app_db)
    with login_as(info, role, password) as ro:
        assert ro.execute("SELECT note FROM later").fetchone()[0] == "hello"
        assert ro.execute('SELECT count(*) FROM "Message"').fetchone()[0] > 0
        assert ro.execute("SELECT last_value FROM later_id_seq").fetchone()[0] == 1
        ro.execute("SET default_transaction_read_only = off")
        for statement in (
            "INSERT INTO later (note) VALUES ('no')",
            "UPDATE app_settings SET v = 'x'",
            "SELECT nextval('later_id_seq')",
            'DELETE FROM "User"',
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                ro.execute(statement)
    with connect(app_db) as conn:  # the hostile name did nothing but name the role
        assert (
            conn.execute(
                "SELECT count(*) FROM pg_roles WHERE rolname IN (%s, 'postgres')", [role]
            ).fetchone()[0]
            == 2
        )

    # Idempotent: a second run keeps the password and refreshes the grants.
    again = create_readonly_user(role=role, database_url=app_db, return_state=True)
    assert again.is_completed(), again.message
    assert again.result().created is False and again.result().ok
    assert secret_value(block) == stored


def test_readonly_refuses_powerful_roles_and_bad_input(pg, prefect, app_db):
    info = ConnInfo.parse(app_db)
    for role, schemas, expected in (
        ("postgres", ["public"], "exists with SUPERUSER"),
        ("x" * 64, ["public"], "longer than 63 bytes"),
        ("ro", ["nope"], "schema 'nope' does not exist"),
        ("", ["public"], "role name is empty"),
    ):
        with pytest.raises(DbopsError, match=expected):
            create_readonly_role(info, role, schemas)
    # A role that can write somewhere is caught by the post-check, not reported read-only.
    leaky = unique("leaky")
    assert create_readonly_role(info, leaky, ["public"]).ok
    with connect(app_db) as conn:
        conn.execute(sql.SQL('GRANT DELETE ON "User" TO {}').format(sql.Identifier(leaky)))
    result = create_readonly_role(info, leaky, ["public"])
    assert not result.ok
    assert {c.check: c.result for c in result.checks}[
        "DELETE from public.User"
    ] == "failed: DELETE was allowed"
    state = create_readonly_user(
        role="ro", database_url="postgresql://u:pw@h/db", return_state=True
    )
    assert state.is_failed() and "contains a password" in state.message


def make_login_role(url: str, role: str, password: str, *extra: str) -> None:
    with connect(url) as conn:
        verifier = conn.pgconn.encrypt_password(password.encode(), role.encode()).decode()
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} " + " ".join(extra)).format(
                sql.Identifier(role), sql.Literal(verifier)
            )
        )


def rolpassword(url: str, role: str) -> str:
    with connect(url) as conn:
        return conn.execute(
            "SELECT rolpassword FROM pg_authid WHERE rolname = %s", [role]
        ).fetchone()[0]


def test_rotate_password_proves_login_and_stores_it_in_prefect_and_aws(
    pg, prefect, app_db, s3_server
):
    role = unique('app "user"')
    initial = "initial-" + uuid.uuid4().hex
    make_login_role(app_db, role, initial)
    secret_id = f"dbops/{uuid.uuid4().hex[:8]}"
    aws = boto3.client("secretsmanager", endpoint_url=s3_server, region_name="us-east-1")
    info = ConnInfo.parse(app_db)

    state = rotate_password(
        role=role,
        database_url=app_db,
        aws_secret_id=secret_id,
        aws_endpoint_url=s3_server,
        return_state=True,
    )
    assert state.is_completed(), state.message
    result = state.result()
    assert result.login_verified and result.aws_secret_id == secret_id
    new = password_from_secret(secret_value(result.secret_block))
    assert new != initial and len(new) >= 40
    with login_as(info, role, new) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == role
    with pytest.raises(DbopsError, match="password authentication failed"):
        login_as(info, role, initial)
    stored = json.loads(aws.get_secret_value(SecretId=secret_id)["SecretString"])
    assert (stored["username"], stored["password"], stored["dbname"]) == (role, new, info.dbname)
    assert stored["port"] == int(info.params["port"])
    assert_never_leaked(new, app_db, state)

    # Rotating again writes a new AWS version and keeps the previous one as AWSPREVIOUS.
    second = rotate_password(
        role=role,
        database_url=app_db,
        aws_secret_id=secret_id,
        aws_endpoint_url=s3_server,
        secret_format="password",
        return_state=True,
    )
    assert second.is_completed(), second.message
    newer = secret_value(second.result().secret_block)
    assert newer not in (new, initial)
    previous = aws.get_secret_value(SecretId=secret_id, VersionStage="AWSPREVIOUS")
    assert json.loads(previous["SecretString"])["password"] == new
    assert json.loads(aws.get_secret_value(SecretId=secret_id)["SecretString"])["password"] == newer
    assert_never_leaked(newer, app_db, second)


def test_rotate_password_changes_nothing_when_it_cannot_finish(pg, prefect, app_db):
    info = ConnInfo.parse(app_db)
    expired = unique("expired")
    make_login_role(app_db, expired, "old-" + uuid.uuid4().hex, "VALID UNTIL '2000-01-01'")
    before = rolpassword(app_db, expired)
    with pytest.raises(DbopsError, match="did not log in .* old password was restored"):
        rotate_role_password(info, expired)
    assert rolpassword(app_db, expired) == before
    with pytest.raises(ValueError):
        Secret.load(default_secret_block(info.dbname, expired))

    unreachable = unique("unreachable")
    make_login_role(app_db, unreachable, "old-" + uuid.uuid4().hex)
    before = rolpassword(app_db, unreachable)
    aws = AwsSecretTarget(secret_id="x", endpoint_url="http://127.0.0.1:9")
    with pytest.raises(DbopsError, match="nothing was changed"):
        rotate_role_password(info, unreachable, aws=aws)
    assert rolpassword(app_db, unreachable) == before

    for role, expected in (("nobody-here", "does not exist"), ("pg_monitor", "reserves")):
        with pytest.raises(DbopsError, match=expected):
            rotate_role_password(info, role)
    group = unique("group role")
    with connect(app_db) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(group)))
    with pytest.raises(DbopsError, match="NOLOGIN"):
        rotate_role_password(info, group)


def test_terminate_blocking_reports_first_and_ends_only_the_chain_head(pg, prefect, empty_db):
    with connect(empty_db) as conn:
        make_accounts(conn)
    with blocked_session(empty_db) as (holder, waiter):
        time.sleep(0.6)
        state = terminate_blocking(
            database_url=empty_db, min_blocked_seconds=0.5, return_state=True
        )
        assert state.is_completed(), state.message
        report = state.result()
        assert report.terminated == []
        assert [(s.pid, s.blocked_pids, s.action) for s in report.sessions] == [
            (holder, [waiter], "would terminate (confirmation not given)")
        ]
        assert "balance + 1" in report.sessions[0].query

        patient = terminate_blocking(
            database_url=empty_db, min_blocked_seconds=3600, confirm=True, return_state=True
        )
        assert patient.result().sessions == []

        done = terminate_blocking(
            database_url=empty_db, min_blocked_seconds=0.5, confirm=True, return_state=True
        )
        assert [s.pid for s in done.result().terminated] == [holder]
        with connect(empty_db) as conn:
            alive = {r[0] for r in conn.execute("SELECT pid FROM pg_stat_activity").fetchall()}
            assert holder not in alive
            wait_for(
                lambda: (
                    conn.execute("SELECT balance FROM accounts WHERE id = 1").fetchone()[0] == 99
                )
            )


def test_cli_security_commands(pg, prefect, app_db, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", app_db)
    runner = CliRunner()
    app = cli_app()
    role = unique("reporting")
    done = runner.invoke(app, ["create-readonly-user", role, "--json"])
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert result["role"] == role and result["ok"]
    done = runner.invoke(app, ["rotate-password", role])
    assert done.exit_code == 0, done.output
    assert "login verified" in done.stderr and "restart the application" in done.stderr
    password = password_from_secret(secret_value(result["secret_block"]))
    assert password not in done.output
    done = runner.invoke(app, ["terminate-blocking", "--min-blocked-seconds", "1"])
    assert done.exit_code == 0 and "no session blocks others" in done.stderr

"""CD end to end: a real `prefect server`, a process worker, `prefect deploy` of
migrate-database/cd, and `prefect deployment run ... --watch` as a CD job runs it: exit code 0
for a good migration, 1 for a bad one (nothing applied, so nothing restored), 1 when the
rehearsal it requires refuses (production not touched), no password anywhere in Prefect."""

from __future__ import annotations

import pytest

from tests.conftest import content_checksums, new_database, schema_dump
from tests.prefect_server import PrefectServer, prefect_server  # noqa: F401
from tests.test_migrate import BASE_SCHEMA, execute, write_migrations
from tests.test_rehearse import back_up_and_verify, rehearsal_copies

# One real Prefect server per test worker: every module that uses it runs on the same one.
pytestmark = pytest.mark.xdist_group("prefect_server")

DEPLOYMENT = "migrate-database/cd"


def test_cd_run_exit_codes_and_rollback(prefect_server: PrefectServer, pg, tmp_path):  # noqa: F811
    from prefect.blocks.system import Secret

    url = new_database(pg, "cd")
    execute(url, BASE_SCHEMA)
    dbname = url.rsplit("/", 1)[-1]
    with prefect_server.client_settings():  # the password lives in the Secret block only
        Secret(value=pg.url(dbname)).save("dbops-database-url", overwrite=True)
    prefect_server.deploy(DEPLOYMENT)
    deployment = prefect_server.request("GET", "/deployments/name/migrate-database/cd")
    assert deployment["global_concurrency_limit"]["limit"] == 1
    assert deployment["concurrency_options"]["collision_strategy"] == "ENQUEUE"
    assert deployment["enforce_parameter_schema"] and not deployment["schedules"]
    schema = deployment["parameter_openapi_schema"]["properties"]
    assert "Prisma" in schema["migrations"]["description"]
    assert schema["require_rehearsal"]["default"] is False

    root = write_migrations(
        tmp_path / "m",
        {"0001_email.sql": 'ALTER TABLE "User" ADD COLUMN email text;\n'},
    )
    backups = tmp_path / "backups"
    run = [
        "deployment", "run", DEPLOYMENT,
        "--param", f"migrations={root}",
        "--param", f"backup_url={backups}",
        "--param", "lock_timeout_seconds=2",
        "--watch", "--watch-interval", "1", "--watch-timeout", "240",
    ]  # fmt: skip
    good = prefect_server.cli(*run)
    assert good.returncode == 0, good.stdout[-3000:] + prefect_server.log_tail("worker")
    assert "email" in schema_dump(url)

    (root / "0002_broken.sql").write_text(
        'CREATE TABLE "Audit" (id int);\nDELETE FROM "Message";\nSELECT 1/0;\n'
    )
    before = (schema_dump(url), content_checksums(url))
    bad = prefect_server.cli(*run)
    assert bad.returncode == 1, bad.stdout[-3000:]
    assert (schema_dump(url), content_checksums(url)) == before

    failed, completed = prefect_server.flow_runs(DEPLOYMENT)[:2]
    assert completed["state"]["type"] == "COMPLETED"
    assert failed["state"]["type"] == "FAILED"
    # The first pending migration failed in its transaction: nothing to restore, no write lost.
    assert "nothing was applied; the database was not restored" in failed["state"]["message"]
    assert "division by zero" in failed["state"]["message"]
    password = pg.password
    for flow_run in (failed, completed):
        assert flow_run["parameters"]["database_url"] == "secret://dbops-database-url"
        assert password not in str(flow_run["parameters"])
        logs = prefect_server.logs(flow_run["id"])
        assert any("Pre-migration backup" in line for line in logs)
        assert not any(password in line for line in logs)

    # Gating: the rehearsal on a copy of the newest verified backup finds the plain CREATE
    # INDEX holding SHARE longer than the limit, so the production migration never starts.
    (root / "0002_broken.sql").unlink()
    (root / "0002_index.sql").write_text('CREATE INDEX message_user ON "Message" (user_id);\n')
    back_up_and_verify(pg.url(dbname, password=""), backups)
    before = (schema_dump(url), content_checksums(url))
    gated = prefect_server.cli(
        *run[:-5], "--param", "require_rehearsal=true", "--param", "max_lock_seconds=0",
        *run[-5:],
    )  # fmt: skip
    assert gated.returncode == 1, gated.stdout[-3000:] + prefect_server.log_tail("worker")
    assert (schema_dump(url), content_checksums(url)) == before
    refused = prefect_server.flow_runs(DEPLOYMENT)[0]
    assert refused["state"]["type"] == "FAILED"
    message = refused["state"]["message"]
    assert "not migrated: rehearsal of" in message and "refuses the migration" in message
    assert 'held SHARE on public."Message"' in message and "0002_index" in message
    assert not any("Pre-migration backup" in line for line in prefect_server.logs(refused["id"]))
    assert rehearsal_copies(pg) == []

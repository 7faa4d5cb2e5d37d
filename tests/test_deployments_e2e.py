"""Deployments end to end: `prefect deploy --all` of this repo's prefect.yaml on a real Prefect
server, runs picked up by a real process worker, triggered through the REST API, by a schedule,
twice at once (the second is cancelled), and from the Prefect UI in headless Chromium."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from deployments.specs import load_specs
from tasks.core.postgres import ConnInfo
from tasks.demo.sample_data import create_sample_database
from tests.conftest import REPO, in_ci, new_database, skip_unless_ci
from tests.prefect_server import PrefectServer, prefect_server  # noqa: F401

# One real Prefect server per test worker: every module that uses it runs on the same one.
pytestmark = pytest.mark.xdist_group("prefect_server")

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
# The README's screenshots are refreshed only when asked (DBOPS_SCREENSHOTS=1): a test run
# leaves the work tree as it found it.
SCREENSHOT_DIR = (
    REPO / "docs" if os.environ.get("DBOPS_SCREENSHOTS") else Path(tempfile.gettempdir())
)
SCREENSHOT = SCREENSHOT_DIR / "ui-backup-run.png"


@pytest.fixture(scope="module")
def deployed(s3_server, prefect_server: PrefectServer, pg):  # noqa: F811
    """Every deployment of prefect.yaml, with the database URL in a Secret block."""
    from prefect.blocks.system import Secret

    url = new_database(pg, "e2e")
    create_sample_database(ConnInfo.parse(url), size_mb=8)
    with prefect_server.client_settings():  # the password lives in the Secret block only
        Secret(value=pg.url(url.rsplit("/", 1)[-1])).save("dbops-database-url", overwrite=True)
    result = prefect_server.cli("--no-prompt", "deploy", "--all")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    enable_automations(prefect_server, False)  # each test enables what it exercises
    return prefect_server


def enable_automations(server: PrefectServer, enabled: bool, names: set[str] | None = None):
    """prefect.yaml's triggers are automations; every backup would otherwise start a verify."""
    found = server.request("POST", "/automations/filter", json={})
    for automation in found:
        if names is None or automation["name"] in names:
            server.request("PATCH", f"/automations/{automation['id']}", json={"enabled": enabled})
    return {a["name"]: a for a in found}


def deployment(server: PrefectServer, full_name: str) -> dict:
    flow_name, name = full_name.split("/", 1)
    return server.request("GET", f"/deployments/name/{flow_name}/{name}")


def create_run(server: PrefectServer, full_name: str, **parameters) -> dict:
    found = deployment(server, full_name)
    return server.request(
        "POST", f"/deployments/{found['id']}/create_flow_run", json={"parameters": parameters}
    )


def wait_for(server: PrefectServer, run_id: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = server.request("GET", f"/flow_runs/{run_id}")
        if run["state"]["type"] in TERMINAL:
            return run
        time.sleep(0.5)
    raise AssertionError(
        f"run {run_id} not finished in {timeout} s: {run['state']}\n" + server.log_tail("worker")
    )


def keys(s3_client, bucket: str, prefix: str) -> list[str]:
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def test_every_deployment_of_prefect_yaml_is_registered(deployed):
    specs = load_specs()
    assert {s.full_name for s in specs} >= {"backup-database/nightly", "restore-database/manual"}
    for spec in specs:
        found = deployment(deployed, spec.full_name)
        assert found["enforce_parameter_schema"] is True
        assert "password" not in str(found["parameters"]).lower()
        assert [s["schedule"].get("cron") for s in found["schedules"]] == [
            s.get("cron") for s in spec.schedules
        ]
    nightly = deployment(deployed, "backup-database/nightly")
    assert nightly["schedules"][0]["schedule"] == {
        "cron": "0 2 * * *",
        "timezone": "UTC",
        "day_or": True,
    }
    assert nightly["global_concurrency_limit"]["limit"] == 1
    assert nightly["concurrency_options"]["collision_strategy"] == "CANCEL_NEW"
    schema = nightly["parameter_openapi_schema"]["properties"]
    assert "description" in schema["compression"] and schema["compression"]["enum"] == [
        "gzip",
        "zstd",
        "none",
    ]


def test_rest_api_run_of_the_nightly_backup_lands_in_s3(deployed, bucket, s3_client):
    run = create_run(
        deployed, "backup-database/nightly", backup_url=f"s3://{bucket}/rest", retries=0
    )
    finished = wait_for(deployed, run["id"])
    assert finished["state"]["type"] == "COMPLETED", deployed.log_tail("worker")
    names = keys(s3_client, bucket, "rest/")
    # A backup is its claim of the id, the dump, and the manifest written last.
    assert len(names) == 3 and [n.rsplit(".", 2)[-2:] for n in names] == [
        ["manifest", "json"],
        ["sql", "gz"],
        ["started", "json"],
    ]


def test_bad_parameters_are_rejected_by_the_schema(deployed):
    found = deployment(deployed, "backup-database/nightly")
    import httpx

    response = httpx.post(
        f"{deployed.api_url}/deployments/{found['id']}/create_flow_run",
        json={"parameters": {"compression": "rar"}},
        timeout=30,
    )
    assert response.status_code == 409 and "rar" in response.text


def test_the_same_backup_twice_at_once_cancels_the_second(deployed, bucket, s3_client):
    first = create_run(
        deployed, "backup-database/nightly", backup_url=f"s3://{bucket}/twice", retries=0
    )
    second = create_run(
        deployed, "backup-database/nightly", backup_url=f"s3://{bucket}/twice", retries=0
    )
    states = sorted(wait_for(deployed, r["id"])["state"]["type"] for r in (first, second))
    assert states == ["CANCELLED", "COMPLETED"]
    assert len(keys(s3_client, bucket, "twice/")) == 3  # one backup: claim, dump, manifest


def test_a_schedule_fires_by_itself(deployed, bucket, s3_client, tmp_path):
    """A test-only copy of the nightly deployment that fires every few seconds."""
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    nightly = next(d for d in config["deployments"] if d["name"] == "nightly")
    nightly = {
        **nightly,
        "name": "every-few-seconds",
        "schedules": [{"interval": 5, "active": True}],
        "parameters": {**nightly["parameters"], "backup_url": f"s3://{bucket}/sched", "retries": 0},
    }
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump({**config, "deployments": [nightly]}, sort_keys=False))
    deployed.deploy("backup-database/every-few-seconds", path)
    try:
        deadline = time.monotonic() + 120

        def completed() -> bool:
            runs = deployed.flow_runs("backup-database/every-few-seconds")
            return any(r["state"]["type"] == "COMPLETED" for r in runs)

        # The dump object lands before the run ends: wait for a completed run, not for keys.
        while time.monotonic() < deadline and not completed():
            time.sleep(1)
        runs = deployed.flow_runs("backup-database/every-few-seconds")
        assert keys(s3_client, bucket, "sched/"), deployed.log_tail("worker")
        assert any(r["state"]["type"] == "COMPLETED" for r in runs)
        assert all(r["auto_scheduled"] for r in runs)
    finally:
        found = deployment(deployed, "backup-database/every-few-seconds")
        deployed.request("DELETE", f"/deployments/{found['id']}")


@pytest.mark.skipif(
    shutil.which("chromium") is None and not in_ci(), reason="apt-get install chromium"
)
def test_a_run_started_from_the_prefect_ui(deployed, bucket, s3_client):
    """A person opens the deployment in the Prefect UI, fills the run form, and sees it complete."""
    if shutil.which("chromium") is None:
        skip_unless_ci("chromium is not installed (apt-get install chromium)")  # fails in CI
    from playwright.sync_api import expect, sync_playwright

    found = deployment(deployed, "backup-database/nightly")
    base = deployed.api_url.removesuffix("/api")
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{base}/deployments/deployment/{found['id']}", wait_until="networkidle")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("Custom run", exact=True).click()
        expect(page.get_by_text("s3://bucket/prefix or a directory")).to_be_visible(timeout=30_000)
        # The form explains each field (the descriptions come from the flow's parameters);
        # backup_url is the second optional text field: switch it from None to str and fill it.
        page.get_by_role("button", name="str", exact=True).nth(1).click()
        expect(page.locator("textarea")).to_have_count(2, timeout=30_000)
        page.locator("textarea").nth(1).fill(f"s3://{bucket}/ui")
        before = {r["id"] for r in deployed.flow_runs("backup-database/nightly")}
        page.get_by_role("button", name="Submit", exact=True).click()
        deadline = time.monotonic() + 150
        runs: list[dict] = []
        while time.monotonic() < deadline:
            runs = [
                r
                for r in deployed.flow_runs("backup-database/nightly")
                if r["id"] not in before and not r["auto_scheduled"]
            ]
            if runs and runs[0]["state"]["type"] in TERMINAL:
                break
            time.sleep(1)
        if not runs:
            page.screenshot(path="/tmp/ui-no-run.png", full_page=True)
        assert runs, "the form created no run: " + page.locator("body").inner_text()[:1500]
        assert runs[0]["parameters"].get("backup_url") == f"s3://{bucket}/ui"
        assert runs[0]["state"]["type"] == "COMPLETED", deployed.log_tail("worker")
        page.goto(f"{base}/runs/flow-run/{runs[0]['id']}", wait_until="networkidle")
        expect(page.get_by_text("Completed").first).to_be_visible(timeout=30_000)
        page.get_by_text("Artifacts", exact=True).first.click()
        expect(page.get_by_text("backup-").first).to_be_visible(timeout=30_000)
        page.wait_for_load_state("networkidle")
        SCREENSHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(SCREENSHOT), full_page=True)
        page.get_by_text(re.compile(r"^backup-e2e-")).last.click()  # the backup report itself
        expect(page.get_by_text("sha256").first).to_be_visible(timeout=30_000)
        page.screenshot(path=str(SCREENSHOT.with_name("ui-backup-report.png")), full_page=True)
        browser.close()
    assert len(keys(s3_client, bucket, "ui/")) == 3


def test_fleet_spreads_backups_over_two_workers(deployed, pg, bucket, s3_client):
    """backup-fleet/manual turns three databases into on-demand runs that two workers share."""
    urls = [new_database(pg, "fleet") for _ in range(3)]
    for url in urls:
        create_sample_database(ConnInfo.parse(url), size_mb=4)
    # Two workers that take at most two runs each: the fleet's own run holds a slot of one,
    # so its three backups cannot all land on one worker.
    deployed.stop_workers()
    deployed.start_worker(limit=2)
    deployed.start_worker(limit=2)
    run = create_run(
        deployed,
        "backup-fleet/manual",
        databases=urls,
        databases_variable=None,
        backup_url=f"s3://{bucket}/fleet",
        max_parallel=3,
    )
    finished = wait_for(deployed, run["id"], timeout=240)
    assert finished["state"]["type"] == "COMPLETED", deployed.log_tail("worker")
    names = keys(s3_client, bucket, "fleet/")
    assert len([n for n in names if n.endswith(".manifest.json")]) == 3
    members = [
        r
        for r in deployed.flow_runs("backup-database/on-demand")
        if r["parameters"].get("backup_url") == f"s3://{bucket}/fleet"
    ]
    assert len(members) == 3 and all(r["state"]["type"] == "COMPLETED" for r in members)
    workers = {
        line.split("'")[1]
        for r in members
        for line in deployed.logs(r["id"])
        if line.startswith("Worker '")
    }
    assert len(workers) == 2, workers


def test_dbops_serve_registers_the_deployments_with_their_schedules(deployed):
    """`dbops serve` serves prefect.yaml's deployments from one process, without a work pool."""
    import subprocess
    import sys

    dbops = str(Path(sys.executable).parent / "dbops")
    existing = deployment(deployed, "health-report/hourly")  # from deploy --all: a pool's
    deployed.request("DELETE", f"/deployments/{existing['id']}")
    process = subprocess.Popen(
        [dbops, "serve", "--only", "health-report/hourly"],
        cwd=REPO,
        env=deployed.env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 90
        served = []
        while time.monotonic() < deadline and not served:
            found = deployed.request(
                "POST", "/deployments/filter", json={"deployments": {"name": {"any_": ["hourly"]}}}
            )
            served = [d for d in found if d["work_pool_name"] is None and d["last_polled"]]
            time.sleep(1)
        assert served, "dbops serve registered nothing"
        assert served[0]["schedules"][0]["schedule"]["cron"] == "0 * * * *"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_automations_verify_each_new_backup_and_report_silence(
    deployed, bucket, s3_client, tmp_path
):
    """prefect.yaml's triggers, as `prefect deploy` created them: a completed backup starts
    `verify-backup/after-backup` with its id and location, and (a test copy of the absence
    trigger with an 8 s window instead of 26 h) silence afterwards runs `backup-missing`."""
    automations = enable_automations(deployed, True, {"dbops-verify-each-new-backup"})
    absence = automations["dbops-backup-missing"]
    assert absence["trigger"]["posture"] == "Proactive"
    assert absence["trigger"]["within"] == 26 * 3600
    assert absence["trigger"]["expect"] == ["dbops.backup.completed"]
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    spec = next(d for d in config["deployments"] if d["name"] == "absence")
    trigger = {**spec["triggers"][0], "name": "dbops-backup-missing-fast", "within": 10}
    fast = {**spec, "name": "absence-fast", "triggers": [trigger]}
    path = tmp_path / "prefect.yaml"
    path.write_text(yaml.safe_dump({**config, "deployments": [fast]}, sort_keys=False))
    deployed.deploy("backup-missing/absence-fast", path)
    try:
        run = create_run(
            deployed, "backup-database/nightly", backup_url=f"s3://{bucket}/auto", retries=0
        )
        backup = wait_for(deployed, run["id"])
        assert backup["state"]["type"] == "COMPLETED", deployed.log_tail("worker")
        (manifest,) = [k for k in keys(s3_client, bucket, "auto/") if k.endswith(".manifest.json")]
        backup_id = manifest.removeprefix("auto/").removesuffix(".manifest.json")

        deadline = time.monotonic() + 90
        while not deployed.flow_runs("verify-backup/after-backup"):
            assert time.monotonic() < deadline, "no verify run:\n" + deployed.log_tail("server")
            time.sleep(1)
        verify = wait_for(deployed, deployed.flow_runs("verify-backup/after-backup")[0]["id"])
        assert verify["parameters"]["source"] == backup_id
        assert verify["parameters"]["backup_url"] == f"s3://{bucket}/auto"
        assert verify["state"]["type"] == "COMPLETED", deployed.log_tail("worker")
        assert f"auto/{backup_id}.verified.json" in keys(s3_client, bucket, "auto/")

        while not deployed.flow_runs("backup-missing/absence-fast"):
            assert time.monotonic() < deadline, "no alert run:\n" + deployed.log_tail("server")
            time.sleep(1)
        # What the alert run does is tested in-process (tests/test_pings.py): here, that the
        # automation started it, for this database, after the window and not before.
        (alert,) = deployed.flow_runs("backup-missing/absence-fast")
        assert alert["parameters"]["last_backup_id"] == backup_id
        assert alert["parameters"]["database"] == deployed_database(deployed)
        assert alert["created"] >= backup["end_time"]
    finally:
        enable_automations(deployed, False)
        found = deployment(deployed, "backup-missing/absence-fast")
        deployed.request("DELETE", f"/deployments/{found['id']}")


def deployed_database(server: PrefectServer) -> str:
    """The database behind the Secret block dbops-database-url, read over REST: loading a block
    in this process would bind its events client to this server for the rest of the session."""
    document = server.request(
        "GET",
        "/block_types/slug/secret/block_documents/name/dbops-database-url",
        params={"include_secrets": "true"},
    )
    return ConnInfo.parse(document["data"]["value"]).dbname

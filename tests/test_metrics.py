"""`dbops metrics`: Prometheus text computed from a real catalog (two backups, one restore test),
parsed by prometheus_client's own parser, printed and served on a port."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from flows.verify import verify_backup
from tasks.backup.manifest import VERIFIED_SUFFIX
from tasks.backup.pipeline import BackupRequest, run_backup
from tasks.core.postgres import ConnInfo
from tasks.demo.embedded import free_port
from tasks.restore.restore_test import VerificationRecord
from tasks.storage.destinations import Destination
from tests.conftest import REPO, run_cli


def samples(text: str) -> dict[tuple[str, str, str], float]:
    """(metric, database, server) -> value; the parser refuses malformed exposition text."""
    found = {}
    for family in text_string_to_metric_families(text):
        assert family.type == "gauge" and family.documentation
        for sample in family.samples:
            assert set(sample.labels) == {"database", "server"}, sample
            key = (sample.name, sample.labels["database"], sample.labels["server"])
            found[key] = sample.value
    return found


@pytest.fixture(scope="module")
def catalog(pg, tmp_path_factory):
    """Two backups of one database (the older one restore-tested), one of another."""
    from tests.conftest import new_database

    location = tmp_path_factory.mktemp("catalog")
    destination = Destination.from_url(str(location))
    manifests = []
    for _ in range(2):
        url = new_database(pg, "metrics")
        with ConnInfo.parse(url).connect() as conn:
            conn.execute("CREATE TABLE t AS SELECT g FROM generate_series(1, 500) g")
        manifests.append(
            run_backup(BackupRequest(conn=ConnInfo.parse(url), destination=destination))
        )
        time.sleep(1.1)  # distinct ids and start times
    newer = run_backup(BackupRequest(conn=ConnInfo.parse(url), destination=destination))
    return location, destination, manifests[0], manifests[1], newer


def test_metrics_are_the_catalog_in_prometheus_text(prefect, pg, catalog):
    location, destination, other, older, newer = catalog
    url = pg.url(older.database, password="")
    verify_backup(source=older.backup_id, backup_url=str(location), database_url=url)
    record = VerificationRecord.model_validate_json(
        destination.read_bytes(older.backup_id + VERIFIED_SUFFIX)
    )
    before = datetime.now(UTC).timestamp()
    done = run_cli("metrics", "--to", str(location))
    after = datetime.now(UTC).timestamp()
    assert done.returncode == 0, done.stderr
    found = samples(done.stdout)
    server = newer.server_key
    db = newer.database
    assert found[("dbops_backups", db, server)] == 2
    assert found[("dbops_backups", other.database, server)] == 1
    assert found[("dbops_last_backup_size_bytes", db, server)] == newer.dump.size
    assert found[("dbops_last_backup_timestamp_seconds", db, server)] == pytest.approx(
        newer.started_at.timestamp()
    )
    age = found[("dbops_last_backup_age_seconds", db, server)]
    assert before - newer.started_at.timestamp() - 1 <= age <= after - newer.started_at.timestamp()
    assert found[("dbops_last_backup_duration_seconds", db, server)] == newer.duration_seconds
    assert found[("dbops_verified_backups", db, server)] == 1
    assert found[("dbops_last_verify_success", db, server)] == 1
    assert found[("dbops_restore_duration_seconds", db, server)] == record.restore_seconds > 0
    assert ("dbops_last_verify_success", other.database, server) not in found  # never tested

    only = samples(run_cli("metrics", "--to", str(location), "--database", other.database).stdout)
    assert {key[1] for key in only} == {other.database}


def test_metrics_served_for_a_scraper(catalog):
    location, _, _, _, newer = catalog
    port = free_port()
    dbops = shutil.which("dbops", path=str(Path(sys.executable).parent))
    process = subprocess.Popen(
        [dbops, "metrics", "--to", str(location), "--port", str(port)],
        cwd=REPO,
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                break
            except httpx.HTTPError:
                assert process.poll() is None, process.stderr.read().decode()
                assert time.monotonic() < deadline
                time.sleep(0.2)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
        found = samples(response.text)
        assert found[("dbops_backups", newer.database, newer.server_key)] == 2
        assert httpx.get(f"http://127.0.0.1:{port}/other", timeout=5).status_code == 404
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)

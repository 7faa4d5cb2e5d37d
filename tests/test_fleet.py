"""backup-fleet: many databases, bounded parallelism, one failure does not stop the others."""

from __future__ import annotations

from prefect.variables import Variable

from flows.fleet import backup_fleet
from tasks.backup.manifest import list_manifests
from tasks.core.postgres import ConnInfo
from tasks.demo.embedded import free_port
from tasks.demo.sample_data import create_sample_database
from tasks.storage.destinations import Destination
from tests.conftest import new_database


def test_fleet_backs_up_every_database_and_reports_the_failed_one(prefect, pg, tmp_path):
    urls = [new_database(pg, "fleet") for _ in range(3)]
    for url in urls:
        create_sample_database(ConnInfo.parse(url), size_mb=0.2)
    broken = f"postgresql://postgres@127.0.0.1:{free_port()}/gone"
    Variable.set("dbops-fleet-test", urls[2:], overwrite=True)
    state = backup_fleet(
        databases=[urls[0], broken, urls[1]],
        databases_variable="dbops-fleet-test",
        backup_url=str(tmp_path),
        max_parallel=2,
        retries=0,
        return_state=True,
    )
    assert state.is_failed()
    assert "1 of 4 backups failed" in state.message and "gone" in state.message
    backed_up = {m.database for m in list_manifests(Destination.from_url(str(tmp_path)))}
    assert backed_up == {url.rsplit("/", 1)[-1] for url in urls}

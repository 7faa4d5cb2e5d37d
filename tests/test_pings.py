"""Heartbeat pings (healthchecks.io style) and success notifications, received by a real HTTP
server on loopback: `<url>/start` then `<url>` or `<url>/fail`; a monitor that is down never
fails a backup."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flows.backup import backup_database
from tasks.core.pings import Ping, ping_address
from tasks.demo.embedded import free_port
from tests.prefect_records import records_text


class Monitor:
    """What a healthchecks.io-like monitor received: (path, body) per request."""

    def __init__(self) -> None:
        self.received: list[tuple[str, str]] = []
        monitor = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                monitor.received.append((self.path, body.decode()))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"OK")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [path for path, _ in self.received]


@pytest.fixture
def monitor() -> Iterator[Monitor]:
    server = Monitor()
    yield server
    server.server.shutdown()


def test_ping_addresses():
    assert ping_address("https://hc-ping.com/abc", Ping.START) == "https://hc-ping.com/abc/start"
    assert ping_address("https://hc-ping.com/abc/", Ping.SUCCESS) == "https://hc-ping.com/abc"
    assert ping_address("https://x/p?create=1", Ping.FAIL) == "https://x/p/fail?create=1"


def test_a_backup_pings_start_and_success_and_notifies_when_asked(
    prefect, sample_db, tmp_path, monitor, monkeypatch
):
    from prefect.blocks.system import Secret

    Secret(value=f"{monitor.url}/check-1").save("dbops-test-ping", overwrite=True)
    monkeypatch.setenv("DBOPS_WEBHOOK_URL", f"{monitor.url}/hook")
    monkeypatch.setenv("DBOPS_NOTIFY_ON", "failure,success")
    manifest = backup_database(
        database_url=sample_db, backup_url=str(tmp_path), ping_url="secret://dbops-test-ping"
    )
    assert monitor.paths() == ["/check-1/start", "/check-1", "/hook"]
    assert manifest.backup_id not in monitor.received[0][1]  # the start knows no id yet
    hook = json.loads(monitor.received[2][1])
    assert "backup-database" in hook["text"] and "completed" in hook["text"]


def test_a_failed_backup_pings_fail_from_the_environment(
    prefect, pg, tmp_path, monitor, monkeypatch
):
    monkeypatch.setenv("DBOPS_PING_URL", f"{monitor.url}/check-2")
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/x"
    state = backup_database(
        database_url=url, backup_url=str(tmp_path), retries=0, return_state=True
    )
    assert state.is_failed()
    assert monitor.paths() == ["/check-2/start", "/check-2/fail"]
    assert "server unreachable" in monitor.received[1][1]


def test_an_unreachable_monitor_never_fails_the_backup(prefect, sample_db, tmp_path):
    """A ping URL where nobody listens: the backup completes, the run's logs (on the server)
    say the ping could not be sent, and the URL is not in them."""
    dead = f"http://127.0.0.1:{free_port()}/private-check-key"
    state = backup_database(
        database_url=sample_db, backup_url=str(tmp_path), ping_url=dead, return_state=True
    )
    assert state.is_completed()
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()  # the run's logs are sent in batches
    records = records_text({state.state_details.flow_run_id})
    assert "could not send the start ping" in records
    assert "could not send the success ping" in records
    assert "private-check-key" not in records.replace(dead, "")  # only the parameter has it


def test_the_absence_alert_says_which_database_went_silent(prefect, monitor, monkeypatch):
    """What the `backup-missing` automation runs: a webhook line and a `dbops.backup.missing`
    event about the silent database."""
    from flows.alert import backup_missing_alert
    from tasks.core.events import resource_id
    from tests.prefect_records import events_about

    monkeypatch.setenv("DBOPS_WEBHOOK_URL", f"{monitor.url}/hook")
    watched = resource_id("42", "shop")
    text = backup_missing_alert(
        resource_id=watched, database="shop", server="42", last_backup_id="shop_1", hours=26
    )
    assert "'shop'" in text and "26 h" in text and "shop_1" in text
    assert monitor.paths() == ["/hook"] and "'shop'" in json.loads(monitor.received[0][1])["text"]
    (event,) = events_about(watched, {"dbops.backup.missing"})
    assert event.payload["last_backup_id"] == "shop_1" and event.payload["hours"] == 26

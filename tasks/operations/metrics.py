"""Prometheus metrics computed from the backup catalog: what a scraper alerts on.

Every series is labelled `database` and `server` (the server's key, as in `dbops list`), one
per (server, database) with complete backups under the location. Read-only: it lists
manifests and reads the newest verification record of each database, nothing else.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tasks.backup.manifest import VERIFIED_SUFFIX, Manifest, list_manifests
from tasks.restore.restore_test import VerificationRecord
from tasks.storage.destinations import Destination

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# name -> (type, help)
METRICS: dict[str, tuple[str, str]] = {
    "dbops_backups": ("gauge", "Complete backups (with manifest) under the location."),
    "dbops_last_backup_timestamp_seconds": (
        "gauge",
        "Start of the newest backup, Unix time.",
    ),
    "dbops_last_backup_age_seconds": ("gauge", "Age of the newest backup when scraped."),
    "dbops_last_backup_size_bytes": ("gauge", "Stored size of the newest backup's dump."),
    "dbops_last_backup_duration_seconds": ("gauge", "How long the newest backup took."),
    "dbops_verified_backups": ("gauge", "Backups whose restore test passed."),
    "dbops_last_verify_success": (
        "gauge",
        "1 when the most recent restore test passed, 0 when it failed.",
    ),
    "dbops_last_verify_timestamp_seconds": ("gauge", "When the most recent restore test ran."),
    "dbops_restore_duration_seconds": (
        "gauge",
        "Restore time measured by the most recent restore test.",
    ),
}


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass
class Catalog:
    """The samples of one scrape, in METRICS order."""

    samples: list[Sample] = field(default_factory=list)

    def add(self, name: str, labels: dict[str, str], value: float) -> None:
        self.samples.append(Sample(name, labels, float(value)))


def _newest_verification(
    destination: Destination, manifests: list[Manifest]
) -> tuple[Manifest, VerificationRecord | None] | None:
    tested = [m for m in manifests if m.verification is not None]
    if not tested:
        return None
    newest = max(tested, key=lambda m: m.verification.verified_at)  # type: ignore[union-attr]
    try:
        raw = destination.read_bytes(newest.backup_id + VERIFIED_SUFFIX)
        return newest, VerificationRecord.model_validate_json(raw)
    except Exception:  # noqa: BLE001 - the verdict is known from the listing; not its time
        return newest, None


def collect(destination: Destination, now: datetime, database: str | None = None) -> Catalog:
    """The samples for every (server, database) under `destination`."""
    groups: dict[tuple[str, str], list[Manifest]] = {}
    for manifest in list_manifests(destination, database):
        groups.setdefault((manifest.server_key, manifest.database), []).append(manifest)
    catalog = Catalog()
    for (server, name), manifests in sorted(groups.items()):
        labels = {"database": name, "server": server}
        newest = manifests[0]  # list_manifests: newest first
        started = newest.started_at.timestamp()
        catalog.add("dbops_backups", labels, len(manifests))
        catalog.add("dbops_last_backup_timestamp_seconds", labels, started)
        catalog.add("dbops_last_backup_age_seconds", labels, max(0.0, now.timestamp() - started))
        catalog.add("dbops_last_backup_size_bytes", labels, newest.stored_size)
        catalog.add("dbops_last_backup_duration_seconds", labels, newest.duration_seconds)
        verified = sum(1 for m in manifests if m.verification and m.verification.ok)
        catalog.add("dbops_verified_backups", labels, verified)
        found = _newest_verification(destination, manifests)
        if found is None:
            continue
        tested, record = found
        assert tested.verification is not None
        catalog.add("dbops_last_verify_success", labels, 1 if tested.verification.ok else 0)
        when = tested.verification.verified_at.timestamp()
        catalog.add("dbops_last_verify_timestamp_seconds", labels, when)
        if record is not None and record.ok and record.restore_seconds:
            catalog.add("dbops_restore_duration_seconds", labels, record.restore_seconds)
    return catalog


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(catalog: Catalog) -> str:
    """Prometheus text exposition format 0.0.4: HELP and TYPE, then the samples of each."""
    lines: list[str] = []
    for name, (kind, text) in METRICS.items():
        samples = [s for s in catalog.samples if s.name == name]
        if not samples:
            continue
        lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
        for sample in samples:
            labels = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(sample.labels.items()))
            lines.append(f"{name}{{{labels}}} {sample.value!r}")
    return "\n".join(lines) + "\n"


def serve(port: int, scrape: Callable[[], str], host: str = "127.0.0.1") -> ThreadingHTTPServer:
    """Serve `GET /metrics` (each request computes a fresh scrape) until shut down."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                self.send_error(404, "only /metrics")
                return
            try:
                body, status = scrape().encode(), 200
            except Exception as exc:  # noqa: BLE001 - a scrape error is the scraper's 500
                body, status = f"# dbops metrics failed: {exc}\n".encode(), 500
            self.send_response(status)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server

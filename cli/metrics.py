"""`dbops metrics`: Prometheus text computed from the backup catalog, printed or served."""

from __future__ import annotations

import sys
import time
from datetime import UTC, datetime
from typing import Annotated

import typer

from cli.app import BackupUrl, app, fail, s3_options, say
from tasks.core.errors import DbopsError


@app.command()
def metrics(
    to: BackupUrl = None,
    database: Annotated[str | None, typer.Option(help="only this database's series")] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
    port: Annotated[
        int | None,
        typer.Option(min=1, max=65535, help="serve GET /metrics on this port instead of printing"),
    ] = None,
    host: Annotated[str, typer.Option(help="address to serve on")] = "127.0.0.1",
) -> None:
    """Print dbops_* metrics (last backup age and size, last restore test, restore time) in
    Prometheus text format; with --port, serve them for a scraper (reads only; runs no flow)."""
    from tasks.core.settings import Settings
    from tasks.operations.metrics import collect, render, serve

    try:
        settings = Settings.load(None, to, s3_options(endpoint_url, None, None, None, None))
        destination = settings.destination()

        def scrape() -> str:
            return render(collect(destination, datetime.now(UTC), database))

        text = scrape()
    except DbopsError as exc:
        fail(str(exc))
    if port is None:
        sys.stdout.write(text)
        return
    try:
        server = serve(port, scrape, host)
    except OSError as exc:
        fail(f"cannot serve on {host}:{port} ({exc.strerror}); choose another --port")
    say(f"serving http://{host}:{port}/metrics for {settings.destination().url}; Ctrl-C stops")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()

"""`dbops serve`: every deployment of prefect.yaml from one process."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.app import (
    app,
    fail,
)
from tasks.core.errors import DbopsError


@app.command()
def serve(
    only: Annotated[
        list[str] | None, typer.Option(help="only this deployment, e.g. backup-database/nightly")
    ] = None,
) -> None:
    """Serve every deployment of prefect.yaml, schedules included, from this process
    (one machine, no work pool). Needs PREFECT_API_URL or a local `prefect server start`."""
    from deployments.serve import serve_all

    try:
        serve_all(only)
    except DbopsError as exc:
        fail(str(exc))

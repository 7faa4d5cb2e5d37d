"""Options of `dbops` itself: `--version`, and how much of Prefect's logging the terminal shows.

A run's logs always reach the Prefect server (its API handler is untouched); on the terminal
dbops shows only its own lines (a failure is one `error:` line, not Prefect's tracebacks), and
Prefect's log lines too with `--verbose`.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from cli.app import app

# Prefect reads any logging.yml key from PREFECT_LOGGING_<PATH>; only the console handler.
CONSOLE_LEVEL = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"


def version_text() -> str:
    from tasks import __version__

    return f"dbops {__version__}"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(version_text())
        raise typer.Exit()


@app.callback()
def options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="show Prefect's log lines on the terminal")
    ] = False,
) -> None:
    """PostgreSQL backups, restores, migrations and maintenance as Prefect flows."""
    if verbose:
        os.environ[CONSOLE_LEVEL] = "NOTSET"
    else:
        os.environ.setdefault(CONSOLE_LEVEL, "CRITICAL")  # dbops prints its own one-line error

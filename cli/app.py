"""What every `dbops` command shares: the Typer app, common options, running a flow, output.

Human output and progress go to stderr; `--json` prints one JSON document on
stdout. The exit code is 0 only when the flow run Completed.
"""

from __future__ import annotations

import json
import os
import re
import sys
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from tasks.core import parameters
from tasks.core.errors import DbopsError, ParameterError
from tasks.core.parameters import describe

# Without PREFECT_API_URL, Prefect starts a temporary server in this process; its first
# start migrates a fresh database, which can take longer than Prefect's default wait.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

app = typer.Typer(
    name="dbops",
    help="PostgreSQL backups, restores, migrations and maintenance as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="libpq URI; default $DATABASE_URL", show_default=False),
]
BackupUrl = Annotated[
    str | None,
    typer.Option(
        "--to", help="s3://bucket/prefix or a directory; default $BACKUP_URL or ./backups"
    ),
]
JobsOption = Annotated[int, typer.Option("--jobs", min=1, max=64, help=describe(parameters.Jobs))]
ChunkMbOption = Annotated[int, typer.Option("--chunk-mb", min=1, help=describe(parameters.ChunkMb))]
FromServer = Annotated[
    str | None,
    typer.Option(help=describe(parameters.FromServer), show_default=False),
]
ObjectLockOption = Annotated[
    str | None,
    typer.Option(
        "--object-lock",
        help="S3 Object Lock every object written: governance or compliance",
        show_default=False,
    ),
]
ObjectLockDaysOption = Annotated[
    int | None,
    typer.Option(help="days the objects stay locked (with --object-lock)", show_default=False),
]
IdentityOption = Annotated[
    str | None,
    typer.Option(
        "--identity",
        help="age identity file (or secret://BLOCK) to decrypt an encrypted backup; "
        "default $DBOPS_AGE_IDENTITY",
        show_default=False,
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")]
Retries = Annotated[int, typer.Option(min=0, max=10, help="retries of transient errors")]


def say(message: str) -> None:
    typer.echo(message, err=True)


def fail(message: str) -> None:
    say(f"error: {message}")
    raise typer.Exit(1)


def use_database_url(url: str | None) -> None:
    """A URL given on the command line travels in the environment, never as a flow parameter
    (Prefect stores parameters with the run)."""
    if url:
        os.environ["DATABASE_URL"] = url


# Flow parameters whose command-line spelling is not `--` plus the name with dashes.
FLAGS = {
    "checks": "--check",
    "DBOPS_AGE_RECIPIENTS": "DBOPS_AGE_RECIPIENTS",
    "confirm": "--yes",
    "include_globals": "--globals",
    "indexes": "--index",
    "labels": "--label",
    "owners": "--owner",
    "role": "ROLE",
    "schemas": "--schema",
    "secret_format": "--store",
    "smoke_queries": "--smoke",
    "tables": "--table",
}


def flag_of(parameter: str) -> str:
    return FLAGS.get(parameter, "--" + parameter.replace("_", "-"))


def error_line(error: BaseException) -> str:
    """One line for the terminal; a parameter is named by its flag, as the user typed it."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    if isinstance(error, ParameterError):
        for name in (error.parameter, *error.related):
            text = re.sub(rf"\b{re.escape(name)}\b", flag_of(name), text)
    return text


def run_flow(flow_fn: Any, **parameters: Any) -> Any:
    """Run a flow; on failure print its one-line error and exit 1."""
    try:
        state = flow_fn(**parameters, return_state=True)
    except DbopsError as exc:
        fail(error_line(exc))
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        if isinstance(error, BaseException):
            fail(error_line(error))
        message = (state.message or "").strip()
        fail(message.splitlines()[0] if message else state.name)
    return state.result()


def emit(document: Any, as_json: bool, human: str) -> None:
    if isinstance(document, BaseModel):
        document = document.model_dump(mode="json")
    if as_json:
        sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    else:
        say(human)


def s3_options(
    endpoint_url: str | None,
    sse: str | None,
    sse_kms_key_id: str | None,
    storage_class: str | None,
    tags: list[str] | None,
):
    from tasks.core.settings import parse_tags, s3_options_from_env

    return s3_options_from_env().merged(
        endpoint_url=endpoint_url,
        sse=sse,
        sse_kms_key_id=sse_kms_key_id,
        storage_class=storage_class,
        tags=parse_tags(",".join(tags or [])),
    )

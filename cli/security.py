"""`dbops create-readonly-user`, `rotate-password`, `terminate-blocking`."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from cli.app import (
    DatabaseUrl,
    JsonFlag,
    app,
    emit,
    run_flow,
    use_database_url,
)
from cli.application import AppTimeout, RestartApp, application_hooks

StoreAs = Annotated[
    Literal["url", "password"],
    typer.Option("--store", help="store a full DATABASE_URL (default) or only the password"),
]


@app.command("create-readonly-user")
def create_readonly_user_cmd(
    name: Annotated[str, typer.Argument(help="name of the read-only role")],
    database_url: DatabaseUrl = None,
    schema: Annotated[
        list[str] | None, typer.Option("--schema", help="schema to read (repeat); default public")
    ] = None,
    owner: Annotated[
        list[str] | None,
        typer.Option("--owner", help="role whose future tables must be readable (repeat)"),
    ] = None,
    secret_block: Annotated[
        str | None, typer.Option(help="Prefect Secret block for the credentials")
    ] = None,
    store: StoreAs = "url",
    as_json: JsonFlag = False,
) -> None:
    """Create a read-only role (idempotent) and prove it can read new tables and not write."""
    from flows.security import create_readonly_user

    use_database_url(database_url)
    result = run_flow(
        create_readonly_user,
        role=name,
        schemas=schema,
        owners=owner,
        secret_block=secret_block,
        secret_format=store,
    )
    where = (
        f"credentials in Prefect Secret {result.secret_block!r}"
        if result.secret_block
        else "its password is unknown to dbops (set it with `dbops rotate-password`)"
    )
    lines = [
        f"role {name!r} {'created' if result.created else 'already existed; grants refreshed'}"
        f" in {result.database}; {where}"
    ]
    lines += [f"  {c.check}: {c.result}" for c in result.checks]
    emit(result.model_dump(mode="json"), as_json, "\n".join(lines))


@app.command("rotate-password")
def rotate_password_cmd(
    role: Annotated[str, typer.Argument(help="role whose password to rotate")],
    database_url: DatabaseUrl = None,
    secret_block: Annotated[
        str | None, typer.Option(help="Prefect Secret block; default dbops-<db>-<role>")
    ] = None,
    store: StoreAs = "url",
    aws_secret_id: Annotated[
        str | None, typer.Option(help="also store in this AWS Secrets Manager secret")
    ] = None,
    aws_region: Annotated[str | None, typer.Option(help="default $AWS_DEFAULT_REGION")] = None,
    aws_endpoint_url: Annotated[
        str | None, typer.Option(help="default $AWS_ENDPOINT_URL_SECRETSMANAGER")
    ] = None,
    restart_app: RestartApp = None,
    app_timeout: AppTimeout = 300,
    as_json: JsonFlag = False,
) -> None:
    """New strong password, proven to log in, stored in a Prefect Secret (and AWS); never shown.

    --restart-app then restarts the application (the guide's rolling restart).
    """
    from flows.security import rotate_password

    use_database_url(database_url)
    result = run_flow(
        rotate_password,
        role=role,
        secret_block=secret_block,
        secret_format=store,
        aws_secret_id=aws_secret_id,
        aws_region=aws_region,
        aws_endpoint_url=aws_endpoint_url,
        application=application_hooks(
            "restart", restart_app=restart_app, app_timeout_seconds=app_timeout
        ),
    )
    where = f"Prefect Secret {result.secret_block!r}"
    if result.aws_secret_id:
        where += f" and AWS secret {result.aws_secret_id!r}"
    emit(
        result.model_dump(mode="json"),
        as_json,
        f"password of {role!r} rotated, login verified, stored in {where}; "
        + (
            f"the application was restarted ({result.app_restart_seconds:.1f} s)"
            if result.app_restart_seconds is not None
            else "restart the application to use it"
        ),
    )


@app.command("terminate-blocking")
def terminate_blocking_cmd(
    database_url: DatabaseUrl = None,
    min_blocked_seconds: Annotated[
        float, typer.Option(min=0, help="only sessions keeping others waiting longer than this")
    ] = 60.0,
    yes: Annotated[
        bool, typer.Option("--yes", help="really terminate them (default: only report)")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Last resort: pg_terminate_backend on sessions at the head of long lock waits."""
    from flows.security import terminate_blocking

    use_database_url(database_url)
    result = run_flow(terminate_blocking, min_blocked_seconds=min_blocked_seconds, confirm=yes)
    lines = [
        f"pid {s.pid} ({s.user}, {s.state}) blocks {s.blocked_pids} for "
        f"{s.longest_wait_seconds} s: {s.action}"
        for s in result.sessions
    ] or [f"no session blocks others for more than {min_blocked_seconds:g} s"]
    if result.sessions and not yes:
        lines.append("nothing terminated; pass --yes to terminate them")
    emit(result.model_dump(mode="json"), as_json, "\n".join(lines))

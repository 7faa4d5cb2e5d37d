"""The application flags of `dbops restore`, `migrate` and `rotate-password`.

`--stop-app 'docker compose stop web'` is split as a shell would split it (shlex) and run
without one; the flags become the flows' `application` parameter (ApplicationHooks).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer

from cli.app import error_line, fail
from tasks.application.commands import ApplicationHooks
from tasks.core.errors import DbopsError
from tasks.core.parameters import field_help

StopApp = Annotated[
    str | None,
    typer.Option("--stop-app", help="command that stops the application, e.g. "
                 "'docker compose stop web' (no shell)", show_default=False),
]  # fmt: skip
StartApp = Annotated[
    str | None,
    typer.Option("--start-app", help="command that starts it again, whatever happened",
                 show_default=False),
]  # fmt: skip
RestartApp = Annotated[
    str | None,
    typer.Option("--restart-app", help="command that restarts the application once the new "
                 "password is stored, e.g. 'kubectl rollout restart deployment/web'",
                 show_default=False),
]  # fmt: skip
StopAppAt = Annotated[
    Literal["swap", "start"],
    typer.Option("--stop-app-at", help=field_help(ApplicationHooks, "stop_app_at")),
]
AppTimeout = Annotated[
    float,
    typer.Option("--app-timeout", min=1, help=field_help(ApplicationHooks, "app_timeout_seconds")),
]


def application_hooks(
    around: Literal["restore", "restart"], **flags: Any
) -> ApplicationHooks | None:
    """The flags given, as the flows' parameter, checked before any work; None when no command
    was given."""
    given = {name: value for name, value in flags.items() if value is not None}
    if not any(name in given for name in ("stop_app", "start_app", "restart_app")):
        return None
    try:
        hooks = ApplicationHooks(**given)
        hooks.check_restore() if around == "restore" else hooks.check_restart()
        return hooks
    except DbopsError as exc:
        fail(error_line(exc))
        raise  # unreachable: fail() exits


def restore_hooks(
    stop_app: str | None, start_app: str | None, stop_app_at: str, app_timeout: float
) -> ApplicationHooks | None:
    """`--stop-app/--start-app` of `dbops restore` and `dbops migrate`."""
    return application_hooks(
        "restore",
        stop_app=stop_app,
        start_app=start_app,
        stop_app_at=stop_app_at,
        app_timeout_seconds=app_timeout,
    )

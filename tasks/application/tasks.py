"""The application's Prefect task: restart it after a password rotation.

The stop/start around a restore is no task of its own: it runs inside the restore task,
right around the swap (`window.py`), so that a retry of the restore stops and starts again.
"""

from __future__ import annotations

import time

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.application.commands import ApplicationHooks
from tasks.application.window import ApplicationWindow
from tasks.core.errors import DbopsError
from tasks.core.settings import Settings


@task(name="restart-application", cache_policy=NO_CACHE)
def restart_application(hooks: ApplicationHooks, database_url: str | None, done: str) -> float:
    """restart_app (retried), or stop_app then start_app; returns the seconds it took.
    `done` says what already happened, for the message when the restart fails."""
    logger = get_run_logger()
    password = Settings.load(database_url).connection().password
    window = ApplicationWindow(
        hooks,
        logger.info,
        logger.warning,
        secrets=[password],
        untouched="restart the application by hand",
        done="the application was stopped and started",
    )
    started = time.monotonic()
    try:
        if hooks.restart_app:
            window.start(hooks.restart_app, "restart-app")
        else:
            with window.stopped():
                pass
    except DbopsError as exc:
        raise type(exc)(f"{done}, but {exc}") from None
    return round(time.monotonic() - started, 3)

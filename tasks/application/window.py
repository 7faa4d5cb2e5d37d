"""The time the application is down for a restore: stopped, then started again whatever happens.

`ApplicationWindow.stopped()` is a context manager: it runs the stop command (or pauses the
flow run until an operator says the application is stopped), runs the body, and then runs the
start command on every way out: success, a failed restore, a bad checksum, a Prefect
cancellation or SIGTERM (both raise through the body), Ctrl-C. A start command that fails is
retried and then reported loudly: the run fails with ApplicationStartError and the webhook
(DBOPS_WEBHOOK_URL) hears of it. A stop command that fails ends the run before the database is
touched (the start command still runs: a half-finished stop may have stopped part of it).

While the application is down the flow run carries the label `dbops.application` (stopping,
stopped, starting, started, start-failed), so the flow's on_cancellation and on_crashed hooks
(`hooks.py`), which run in the worker even when the flow's process was killed, know whether
the application still has to be started.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Literal
from uuid import UUID

from pydantic import BaseModel, Field

from tasks.application.commands import (
    ApplicationError,
    ApplicationHooks,
    ApplicationStartError,
    Log,
    describe,
    run_command,
)
from tasks.core.errors import DbopsError, first_line
from tasks.core.notify import send

LABEL = "dbops.application"
LEFT_DOWN = ("stopping", "stopped", "starting", "start-failed")
CONFIRM_POLL_SECONDS = 1


class ApplicationReport(BaseModel):
    """What the restore report says about the application: who stopped it, how long it was
    down (stop command begun to start command done)."""

    stopped_by: Literal["command", "operator"]
    stop_at: Literal["swap", "start"]
    stopped_at: str
    started_at: str | None = None
    downtime_seconds: float | None = None
    started: bool = False


class ApplicationStopped(BaseModel):
    """Stop the application, then resume: dbops swaps the restored database in at once."""

    stopped: bool = Field(
        False,
        description="the application is stopped: nothing writes to the database any more",
    )


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def current_flow_run_id() -> UUID | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context.flow_run.id if context and context.flow_run else None


def set_label(flow_run_id: UUID | None, value: str, log: Log) -> None:
    """Mark the flow run; a mark that cannot be written is a warning, never a failure."""
    if flow_run_id is None:
        return
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run_labels(flow_run_id, {LABEL: value})
    except Exception as exc:  # noqa: BLE001 - the in-process start does not depend on it
        log(f"could not label the flow run {LABEL}={value}: {first_line(exc)}")


class ApplicationWindow:
    """Stop, body, start: see the module docstring."""

    def __init__(
        self,
        hooks: ApplicationHooks | None,
        log: Log,
        warn: Log | None = None,
        secrets: Iterable[str | None] = (),
        untouched: str = "the database was not touched",
        flow_run_id: UUID | None = None,
        done: str = "the database was restored",
    ) -> None:
        self.hooks = hooks
        self.log = log
        self.warn = warn or log
        self.secrets = [s for s in secrets if s]
        self.untouched = untouched
        self.done = done
        self.flow_run_id = flow_run_id if flow_run_id is not None else current_flow_run_id()
        self.report: ApplicationReport | None = None
        self.body_done = False  # what ran while the application was down completed
        self._down_since = 0.0
        if hooks is not None:
            hooks.refuse_secrets(self.secrets)

    @property
    def active(self) -> bool:
        return self.hooks is not None and self.hooks.active

    # -- where in a restore --------------------------------------------------------------

    def around_restore(self) -> contextlib.AbstractContextManager[object]:
        """The whole restore, when the application stops before it begins."""
        if self.active and self.hooks and self.hooks.stop_app_at == "start":
            return self.stopped()
        return contextlib.nullcontext()

    def around_swap(self) -> Callable[[], contextlib.AbstractContextManager[object]] | None:
        """Only the swap (the default): the application runs while the copy is restored."""
        if self.active and self.hooks and self.hooks.stop_app_at == "swap":
            return self.stopped
        return None

    # -- the window ----------------------------------------------------------------------

    @contextlib.contextmanager
    def stopped(self) -> Iterator[ApplicationWindow]:
        if not self.active:
            yield self
            return
        failure: BaseException | None = None
        try:
            self._stop()
            yield self
            self.body_done = True
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._start_again(failure)

    def _stop(self) -> None:
        hooks = self.hooks
        assert hooks is not None
        self._down_since = time.monotonic()
        if hooks.confirm_app_stopped:
            self._await_operator(hooks)
            self.report = ApplicationReport(
                stopped_by="operator", stop_at=hooks.stop_app_at, stopped_at=_now()
            )
            return
        assert hooks.stop_app is not None
        self.report = ApplicationReport(
            stopped_by="command", stop_at=hooks.stop_app_at, stopped_at=_now()
        )
        set_label(self.flow_run_id, "stopping", self.warn)
        try:
            timeout = hooks.app_timeout_seconds
            run_command(hooks.stop_app, "stop-app", timeout, self.log, self.secrets)
        except DbopsError as exc:
            raise ApplicationError(
                f"stopping the application failed: {exc}; {self.untouched}"
            ) from None
        set_label(self.flow_run_id, "stopped", self.warn)
        self.log("the application is stopped")

    def _await_operator(self, hooks: ApplicationHooks) -> None:
        from prefect.exceptions import FlowPauseTimeout
        from prefect.flow_runs import pause_flow_run

        if current_flow_run_id() is None:
            raise ApplicationError(
                "confirm_app_stopped pauses a flow run, and this is none; give stop_app and "
                "start_app instead"
            )
        self.warn(
            "WAITING FOR YOU: stop the application, then resume this flow run and tick "
            f"'stopped' (within {hooks.confirm_timeout_seconds} s, or nothing is changed)"
        )
        try:
            answer = pause_flow_run(
                wait_for_input=ApplicationStopped,
                timeout=hooks.confirm_timeout_seconds,
                poll_interval=CONFIRM_POLL_SECONDS,
            )
        except FlowPauseTimeout:
            raise ApplicationError(
                f"nobody confirmed within {hooks.confirm_timeout_seconds} s that the "
                f"application is stopped; {self.untouched}"
            ) from None
        if not answer.stopped:
            raise ApplicationError(
                f"resumed without confirming that the application is stopped; {self.untouched}"
            )
        self.log("the operator confirmed that the application is stopped")

    def _start_again(self, failure: BaseException | None) -> None:
        hooks = self.hooks
        assert hooks is not None
        if self.report is None and failure is not None and hooks.confirm_app_stopped:
            return  # the operator never confirmed a stop: nothing to start
        if not hooks.start_app:
            self.warn("dbops has no start_app command: START THE APPLICATION AGAIN NOW")
            return
        try:
            self.start(hooks.start_app)
        except ApplicationStartError as exc:
            if failure is None:
                raise ApplicationStartError(f"{self.done}, but {exc}") from None
            raise ApplicationStartError(f"{exc}; before that: {first_line(failure)}") from None

    def start(self, argv: list[str], what: str = "start-app") -> None:
        """The start (or restart) command with retries; then loud when it never succeeded."""
        hooks = self.hooks
        assert hooks is not None
        set_label(self.flow_run_id, "starting", self.warn)
        attempts = hooks.start_app_retries + 1
        error: DbopsError | None = None
        for attempt in range(1, attempts + 1):
            try:
                run_command(
                    argv,
                    what,
                    hooks.app_timeout_seconds,
                    self.log,
                    self.secrets,
                    die_with_dbops=False,
                )
            except DbopsError as exc:
                error = exc
                self.warn(f"{what} attempt {attempt} of {attempts} failed: {exc}")
                if attempt < attempts:
                    time.sleep(hooks.start_app_retry_delay_seconds)
                continue
            if self.report is not None:
                self.report.started_at = _now()
                self.report.started = True
                self.report.downtime_seconds = round(time.monotonic() - self._down_since, 3)
                self.log(
                    f"the application runs again; it was down {self.report.downtime_seconds} s"
                )
            set_label(self.flow_run_id, "started", self.warn)
            return
        set_label(self.flow_run_id, "start-failed", self.warn)
        headline = "WAS NOT RESTARTED" if what == "restart-app" else "IS NOT RUNNING"
        message = (
            f"THE APPLICATION {headline}: `{describe(argv)}` failed {attempts} times "
            f"({error}); {what.split('-')[0]} it by hand"
        )
        send(lambda: f":rotating_light: dbops: {message}", "the application left stopped")
        raise ApplicationStartError(message)

"""Flow hooks that start the application when the flow's own process could not.

A Prefect cancellation through a worker sends the flow's process SIGTERM and kills it 30 s
later; an OOM kill gives it no chance at all. The worker then runs the flow's on_cancellation
or on_crashed hooks in its own process: `start_if_left_stopped` reads the run's label
`dbops.application` (written by `window.py` around the stop and the start) and runs the
start command from the run's own parameters when the application was left down.
"""

from __future__ import annotations

from typing import Any

from tasks.application.commands import ApplicationHooks, ApplicationStartError
from tasks.application.window import LABEL, LEFT_DOWN, ApplicationWindow


def start_if_left_stopped(flow: Any, flow_run: Any, state: Any) -> None:
    """on_cancellation / on_crashed: start the application if the run left it down."""
    from prefect.client.orchestration import get_client
    from prefect.logging import get_logger

    logger = get_logger("dbops.application")
    raw = (flow_run.parameters or {}).get("application")
    if not raw:
        return
    hooks = ApplicationHooks.model_validate(raw)
    if not hooks.start_app:
        return
    with get_client(sync_client=True) as client:
        labels = client.read_flow_run(flow_run.id).labels or {}
    if labels.get(LABEL) not in LEFT_DOWN:
        return
    logger.warning(
        "flow run %s ended %s with the application %s: starting it",
        flow_run.name,
        state.name,
        labels.get(LABEL),
    )
    window = ApplicationWindow(hooks, logger.info, logger.warning, flow_run_id=flow_run.id)
    try:
        window.start(hooks.start_app)
    except ApplicationStartError as exc:
        logger.critical("%s", exc)  # already sent to the webhook; a hook must not raise


def merged(*hook_sets: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Flow decorator hook keywords, several sets joined."""
    joined: dict[str, list[Any]] = {}
    for hooks in hook_sets:
        for name, functions in hooks.items():
            joined.setdefault(name, []).extend(functions)
    return joined


APPLICATION_HOOKS: dict[str, list[Any]] = {
    "on_cancellation": [start_if_left_stopped],
    "on_crashed": [start_if_left_stopped],
}

"""What the Prefect API stored about given flow runs: parameters, states, logs, artifacts.

Tests that look for secrets must read every record of their own runs (filtered by run
id and paged through), never the first page of everything on the server.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any
from uuid import UUID

PAGE = 200


def _all_pages(read: Callable[..., list[Any]], **filters: Any) -> list[Any]:
    found: list[Any] = []
    while True:
        page = read(**filters, limit=PAGE, offset=len(found))
        found += page
        if len(page) < PAGE:
            return found


def flow_run_ids() -> set[UUID]:
    """Every flow run the server knows; take it before and after to find a test's own runs."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        runs = _all_pages(client.read_flow_runs)
    return {run.id for run in runs}


def records_text(run_ids: Iterable[UUID]) -> str:
    """Parameters, state messages, task run states, logs and artifacts of these runs, as text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    ids = list(run_ids)
    if not ids:
        return ""
    with get_client(sync_client=True) as client:
        by_run = FlowRunFilter(id=FlowRunFilterId(any_=ids))
        runs = _all_pages(client.read_flow_runs, flow_run_filter=by_run)
        task_runs = _all_pages(client.read_task_runs, flow_run_filter=by_run)
        logs = _all_pages(
            client.read_logs, log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids))
        )
        artifacts = _all_pages(
            client.read_artifacts,
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids)),
        )
    assert {run.id for run in runs} == set(ids)
    records: list[Any] = []
    for run in [*runs, *task_runs]:
        records += [run.name, getattr(run, "parameters", None), run.state_name]
        records += [run.state.message if run.state else None]
    records += [log.message for log in logs]
    records += [(a.key, a.description, a.data) for a in artifacts]
    return json.dumps(records, default=str, ensure_ascii=False)


def events_about(resource_id: str, wait_for: set[str] = frozenset(), timeout: float = 30) -> list:
    """The `dbops.*` events the API stored about one resource, oldest first.

    The server writes events in batches: wait until every name in `wait_for` is there.
    """
    import time

    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

    deadline = time.monotonic() + timeout
    while True:
        event_filter = EventFilter(  # its time window ends now: build it anew each time
            event=EventNameFilter(prefix=["dbops."]),
            resource=EventResourceFilter(id=[resource_id]),
        )
        with get_client(sync_client=True) as client:
            events = client.read_events(filter=event_filter, limit=50).events
        if {e.event for e in events} >= set(wait_for) or time.monotonic() > deadline:
            return sorted(events, key=lambda e: e.occurred)
        time.sleep(0.5)

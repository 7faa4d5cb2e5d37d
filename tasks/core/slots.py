"""One database, one heavy job at a time: a Prefect global concurrency slot per database.

A nightly backup and a weekly VACUUM of the same database must not overlap, even when they
run on different workers on different machines; the Prefect server arbitrates.
"""

from __future__ import annotations

import contextlib
import contextvars
import re
from collections.abc import Iterator

from prefect.client.orchestration import get_client
from prefect.concurrency.sync import concurrency

from tasks.core.errors import DbopsError
from tasks.core.postgres import ConnInfo


def slot_name(info: ConnInfo) -> str:
    where = f"{info.params.get('host', 'local')}-{info.params.get('port', '5432')}-{info.dbname}"
    return "dbops-db-" + re.sub(r"[^A-Za-z0-9_.-]", "_", where)


def _ensure_limit(name: str) -> None:
    """Prefect only enforces limits that exist; create this one (limit 1) on first use."""
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except Exception:  # noqa: BLE001 - ObjectNotFound; a racing creator is fine too
            with contextlib.suppress(Exception):
                client.upsert_global_concurrency_limit_by_name(name, limit=1)


# Slots a flow run already holds: a migration holds its database's slot for the whole flow, and
# the pre-migration backup and the rollback restore inside it must not wait for themselves.
# Keyed by flow run, so another run in the same process still waits.
_held: contextvars.ContextVar[frozenset[tuple[str, str]]] = contextvars.ContextVar(
    "dbops_held_slots", default=frozenset()
)


def _current_run() -> str:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return str(context.flow_run.id) if context and context.flow_run else ""


@contextlib.contextmanager
def database_slot(info: ConnInfo, wait_seconds: float = 3600) -> Iterator[None]:
    """Hold the database's slot; re-entrant within one run (its tasks inherit the context)."""
    name = slot_name(info)
    held = _held.get()
    key = (_current_run(), name)
    if key[0] and key in held:
        yield
        return
    _ensure_limit(name)
    try:
        with concurrency(name, occupy=1, timeout_seconds=wait_seconds, strict=True):
            token = _held.set(held | {key})
            try:
                yield
            finally:
                _held.reset(token)
    except TimeoutError:
        raise DbopsError(
            f"another dbops job held {info.dbname!r} for more than {wait_seconds:.0f} s "
            f"(concurrency limit {name}); try again later"
        ) from None

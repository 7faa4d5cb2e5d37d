"""`dbops serve`: every deployment of prefect.yaml, with its schedules, served by this process.

The embedded default for one machine: the guide's "automated daily backup" with one command
and no work pool. Runs need a Prefect API (PREFECT_API_URL, or a local `prefect server start`).
"""

from __future__ import annotations

from typing import Any

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.events import DeploymentTriggerTypes
from prefect.schedules import Cron, Interval, RRule
from pydantic import TypeAdapter

from deployments.specs import DeploymentSpec, load_specs

# prefect.yaml's `triggers:` entries, read as `prefect deploy` reads them.
TRIGGER: TypeAdapter[Any] = TypeAdapter(DeploymentTriggerTypes)


def _schedule(entry: dict[str, Any]) -> Any:
    common = {"timezone": entry.get("timezone"), "active": entry.get("active", True)}
    if "cron" in entry:
        return Cron(entry["cron"], **common)
    if "interval" in entry:
        return Interval(entry["interval"], **common)
    return RRule(entry["rrule"], **common)


def to_runner_deployment(spec: DeploymentSpec) -> Any:
    limit = spec.concurrency_limit
    if isinstance(limit, dict):
        limit = ConcurrencyLimitConfig(**limit)
    return spec.load_flow().to_deployment(
        name=spec.name,
        schedules=[_schedule(entry) for entry in spec.schedules] or None,
        parameters=spec.parameters,
        description=spec.description or None,
        tags=spec.tags,
        concurrency_limit=limit,
        enforce_parameter_schema=spec.enforce_parameter_schema,
        triggers=[TRIGGER.validate_python(trigger) for trigger in spec.triggers] or None,
    )


def serve_all(names: list[str] | None = None) -> None:
    specs = [s for s in load_specs() if not names or s.full_name in names]
    serve(*(to_runner_deployment(spec) for spec in specs))


if __name__ == "__main__":
    serve_all()

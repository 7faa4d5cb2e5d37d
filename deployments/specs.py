"""prefect.yaml is the one description of the deployments; this turns it into Python objects.

`dbops serve` serves them from one process (the guide's cron, with no work pool), the fleet
and the tests read names from it: nothing else repeats a schedule or a parameter.
"""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tasks.core.errors import DbopsError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PREFECT_YAML = PROJECT_ROOT / "prefect.yaml"


@dataclass
class DeploymentSpec:
    flow_name: str
    name: str
    entrypoint: str
    parameters: dict[str, Any] = field(default_factory=dict)
    schedules: list[dict[str, Any]] = field(default_factory=list)
    description: str = ""
    tags: list[str] = field(default_factory=list)
    concurrency_limit: dict[str, Any] | int | None = None
    enforce_parameter_schema: bool = True
    job_env: dict[str, str] = field(default_factory=dict)
    triggers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def full_name(self) -> str:
        return f"{self.flow_name}/{self.name}"

    def load_flow(self) -> Any:
        path, _, attribute = self.entrypoint.partition(":")
        module_name = path.removesuffix(".py").replace("/", ".")
        if str(PROJECT_ROOT) not in sys.path:
            sys.path.insert(0, str(PROJECT_ROOT))
        if importlib.util.find_spec(module_name) is None:
            raise DbopsError(f"entrypoint {self.entrypoint} in prefect.yaml does not exist")
        return getattr(importlib.import_module(module_name), attribute)


def load_specs(path: Path = PREFECT_YAML) -> list[DeploymentSpec]:
    document = yaml.safe_load(path.read_text())
    specs = []
    for entry in document.get("deployments", []):
        spec = DeploymentSpec(
            flow_name="",
            name=entry["name"],
            entrypoint=entry["entrypoint"],
            parameters=entry.get("parameters") or {},
            schedules=entry.get("schedules") or [],
            description=(entry.get("description") or "").strip(),
            tags=entry.get("tags") or [],
            concurrency_limit=entry.get("concurrency_limit"),
            enforce_parameter_schema=entry.get("enforce_parameter_schema", True),
            job_env=((entry.get("work_pool") or {}).get("job_variables") or {}).get("env") or {},
            triggers=entry.get("triggers") or [],
        )
        spec.flow_name = spec.load_flow().name
        specs.append(spec)
    return specs

"""prefect.yaml, checked without a server: every deployment loads, is typed and described."""

from __future__ import annotations

from prefect.utilities.callables import parameter_schema

from deployments.serve import to_runner_deployment
from deployments.specs import load_specs


def test_every_parameter_of_every_deployment_is_described_for_the_ui():
    specs = load_specs()
    assert len(specs) >= 10
    for spec in specs:
        properties = parameter_schema(spec.load_flow()).model_dump()["properties"]
        undocumented = [name for name, field in properties.items() if not field.get("description")]
        assert undocumented == [], spec.full_name
        assert set(spec.parameters) <= set(properties), spec.full_name
        assert spec.enforce_parameter_schema


def test_no_secret_in_parameters_and_no_ignored_retries_key():
    import yaml

    from tests.conftest import REPO

    raw = yaml.safe_load((REPO / "prefect.yaml").read_text())
    for entry in raw["deployments"]:
        assert "retries" not in {k for k in entry if k != "parameters"}  # Prefect ignores it
        url = entry.get("parameters", {}).get("database_url")
        assert url is None or url.startswith("secret://"), entry["name"]


def test_serve_builds_the_same_schedules_as_prefect_yaml():
    for spec in load_specs():
        deployment = to_runner_deployment(spec)
        crons = [s.schedule.cron for s in deployment.schedules or []]
        assert crons == [s["cron"] for s in spec.schedules], spec.full_name
        assert deployment.parameters == spec.parameters

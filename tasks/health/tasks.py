"""The health report's Prefect task: connection errors are retried, nothing is cached."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.core.errors import retry_transient
from tasks.core.settings import Settings
from tasks.health.checks import run_checks
from tasks.health.model import HealthThresholds, PoolSettings
from tasks.health.report import HealthReport


@task(name="run-health-checks", cache_policy=NO_CACHE, retry_condition_fn=retry_transient)
def health_checks(
    database_url: str | None,
    thresholds: HealthThresholds,
    checks: list[str] | None,
    app_instances: int,
    connection_limit: int | None,
    top_n: int,
) -> HealthReport:
    # The URL is resolved here, inside the task, so its password never passes through Prefect.
    info = Settings.load(database_url).connection()
    pool = PoolSettings.from_conninfo(info, connection_limit, app_instances)
    get_run_logger().info("Checking %s", info.redacted())
    return HealthReport.of(info.dbname, run_checks(info, thresholds, pool, checks, top_n))

"""dbops-demo: the whole backup/restore story on an embedded PostgreSQL, nothing configured."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from flows.backup import backup_database
from flows.restore import restore_database
from tasks.core.parameters import documented
from tasks.demo.embedded import LocalCluster
from tasks.demo.tasks import DemoSummary, compare_row_counts, create_demo_database
from tasks.operations.outcomes import outcome_hooks

DEMO_DATABASE = "ai_saas"


@flow(name="dbops-demo", **outcome_hooks("demo"))
@documented
def demo(
    workdir: Annotated[
        str, Field(description="where the backups and the server go")
    ] = "dbops-demo",
    size_mb: Annotated[float, Field(gt=0, description="approximate dump size")] = 20.0,
) -> DemoSummary:
    """Back up and restore a guide-shaped database on an embedded PostgreSQL."""
    logger = get_run_logger()
    root = Path(workdir).resolve()
    backups = root / "backups"
    pgdata = root / "pgdata"
    shutil.rmtree(pgdata, ignore_errors=True)
    passfile = root / "pgpass"
    passfile.unlink(missing_ok=True)
    os.environ["PGPASSFILE"] = str(passfile)  # URLs below carry no password
    try:
        with LocalCluster(pgdata, passfile=passfile) as cluster:
            source_url = cluster.url(DEMO_DATABASE, password="")
            restored_url = cluster.url(f"{DEMO_DATABASE}_restored", password="")
            logger.info("Embedded PostgreSQL %s running on port %d", cluster.major, cluster.port)
            create_demo_database(source_url, size_mb)
            manifest = backup_database(database_url=source_url, backup_url=str(backups))
            restored = restore_database(
                source=manifest.backup_id, database_url=restored_url, backup_url=str(backups)
            )
            counts = compare_row_counts(source_url, restored_url)
    finally:
        shutil.rmtree(pgdata, ignore_errors=True)
        passfile.unlink(missing_ok=True)
    return DemoSummary(
        backup=str(backups / manifest.dump.name),
        manifest=str(backups / manifest.manifest_name),
        dump_mb=round((manifest.dump.raw_size or 0) / 1e6, 2),
        stored_mb=round(manifest.stored_size / 1e6, 2),
        backup_seconds=manifest.duration_seconds,
        restore_seconds=restored.seconds,
        checksum_verified=restored.checksum_verified,
        row_counts=counts,
    )

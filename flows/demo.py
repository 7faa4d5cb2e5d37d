"""dbops-demo: the whole backup/restore story on an embedded PostgreSQL, nothing configured."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import Field

from flows.backup import backup_database
from flows.restore import restore_database
from tasks.backup.pipeline import table_row_counts
from tasks.core.errors import DbopsError
from tasks.core.parameters import documented
from tasks.core.postgres import ConnInfo
from tasks.demo.embedded import LocalCluster
from tasks.demo.sample_data import create_sample_database

DEMO_DATABASE = "ai_saas"


@task(name="create-demo-database", cache_policy=NO_CACHE)
def create_demo_database(url: str, size_mb: float) -> dict[str, int]:
    info = ConnInfo.parse(url)
    with info.with_dbname("postgres").connect() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(info.dbname)))
    return create_sample_database(info, size_mb)


@task(name="compare-row-counts", cache_policy=NO_CACHE)
def compare_row_counts(source_url: str, restored_url: str) -> dict[str, list[int]]:
    with ConnInfo.parse(source_url).connect() as conn:
        before = table_row_counts(conn)
    with ConnInfo.parse(restored_url).connect() as conn:
        after = table_row_counts(conn)
    if before != after:
        raise DbopsError(f"restored row counts differ: {before} != {after}")
    return {table: [count, after[table]] for table, count in before.items()}


@flow(name="dbops-demo")
@documented
def demo(
    workdir: Annotated[
        str, Field(description="where the backups and the server go")
    ] = "dbops-demo",
    size_mb: Annotated[float, Field(gt=0, description="approximate dump size")] = 20.0,
) -> dict:
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
        summary = _run_demo(logger, backups, pgdata, passfile, size_mb)
    finally:
        shutil.rmtree(pgdata, ignore_errors=True)
        passfile.unlink(missing_ok=True)
    return summary


def _run_demo(logger, backups: Path, pgdata: Path, passfile: Path, size_mb: float) -> dict:
    with LocalCluster(pgdata, passfile=passfile) as cluster:
        source_url = cluster.url(DEMO_DATABASE, password="")
        restored_url = cluster.url(f"{DEMO_DATABASE}_restored", password="")
        logger.info("Embedded PostgreSQL %s running on port %d", cluster.major, cluster.port)
        create_demo_database(source_url, size_mb)
        manifest = backup_database(database_url=source_url, backup_url=str(backups))
        restored = restore_database(
            source=manifest["backup_id"], database_url=restored_url, backup_url=str(backups)
        )
        counts = compare_row_counts(source_url, restored_url)
    return {
        "backup": str(backups / manifest["dump"]["name"]),
        "manifest": str(backups / (manifest["backup_id"] + ".manifest.json")),
        "dump_mb": round(manifest["dump"]["raw_size"] / 1e6, 2),
        "stored_mb": round(manifest["dump"]["size"] / 1e6, 2),
        "backup_seconds": manifest["duration_seconds"],
        "restore_seconds": restored["seconds"],
        "checksum_verified": restored["checksum_verified"],
        "row_counts": counts,
    }

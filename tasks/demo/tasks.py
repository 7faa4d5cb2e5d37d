"""The demo's own Prefect tasks: a sample database to back up, and the proof it came back."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from psycopg import sql
from pydantic import BaseModel

from tasks.backup.row_counts import table_row_counts
from tasks.core.errors import DbopsError
from tasks.core.postgres import ConnInfo
from tasks.demo.sample_data import create_sample_database


class DemoSummary(BaseModel):
    """What `dbops demo` prints: where the backup is, its sizes and times, the row counts."""

    backup: str
    manifest: str
    dump_mb: float
    stored_mb: float
    backup_seconds: float
    restore_seconds: float
    checksum_verified: bool
    row_counts: dict[str, list[int]]


@task(name="create-demo-database", cache_policy=NO_CACHE)
def create_demo_database(url: str, size_mb: float) -> dict[str, int]:
    info = ConnInfo.parse(url)
    with info.with_dbname("postgres").connect() as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(info.dbname)))
    return create_sample_database(info, size_mb)


@task(name="compare-row-counts", cache_policy=NO_CACHE)
def compare_row_counts(source_url: str, restored_url: str) -> dict[str, list[int]]:
    """Per table: [rows in the source, rows restored]; raises if any differ."""
    with ConnInfo.parse(source_url).connect() as conn:
        before = table_row_counts(conn)
    with ConnInfo.parse(restored_url).connect() as conn:
        after = table_row_counts(conn)
    if before != after:
        raise DbopsError(f"restored row counts differ: {before} != {after}")
    return {table: [count, after[table]] for table, count in before.items()}

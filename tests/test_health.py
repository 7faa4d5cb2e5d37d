"""health-report against real PostgreSQL: each check finds what was planted, and nothing on a
clean database; critical ends the run Failed and the webhook hears about it."""

from __future__ import annotations

import http.server
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from flows.health import health_report
from tasks.core.errors import DbopsError, TransientError
from tasks.core.notify import failure_text, notify_failure, post_webhook, selected
from tasks.core.postgres import ConnInfo
from tasks.core.statistics import redact_sql
from tasks.health.checks import CHECKS, run_checks, select_checks
from tasks.health.model import HealthCheck, HealthThresholds, PoolSettings
from tasks.health.report import HealthReport
from tests.backup_helpers import cli_app
from tests.conftest import new_database

# Sensitive enough that every planted problem shows, used on the clean database too.
SENSITIVE = HealthThresholds(
    idle_in_transaction_warning_seconds=0.5,
    long_query_warning_seconds=0.5,
    blocked_warning_seconds=0.5,
    unused_index_min_stats_days=0,
    unused_index_min_mb=0,
    slow_query_warning_ms=200,
    seq_scan_min_rows=1000,
    seq_scan_min_scans=5,
    table_bloat_min_mb=0,
    index_bloat_min_mb=0,
    dead_tuple_min=100,
)


def connect(url: str, autocommit: bool = True) -> psycopg.Connection:
    return psycopg.connect(url, autocommit=autocommit)


def flush_stats(conn: psycopg.Connection) -> None:
    """Make this session's table statistics visible to others now, not in up to 10 s."""
    conn.execute("SELECT pg_stat_force_next_flush()")
    conn.execute("SELECT 1")


def reset_statements(conn: psycopg.Connection) -> None:
    conn.execute(
        "SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database "
        "WHERE datname = current_database()), 0)"
    )


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


@contextmanager
def blocked_session(url: str, table: str = "accounts") -> Iterator[tuple[int, int]]:
    """A transaction holding a row lock, idle, and a second session waiting for that row.

    Yields (holder pid, waiter pid); the holder may be terminated by the test.
    """
    target = sql.Identifier(table)
    holder = connect(url, autocommit=False)
    holder.execute(sql.SQL("UPDATE {} SET balance = balance + 1 WHERE id = 1").format(target))
    waiter = connect(url)
    waiter_pid = waiter.info.backend_pid
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            waiter.execute(
                sql.SQL("UPDATE {} SET balance = balance - 1 WHERE id = 1").format(target)
            )
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    with connect(url) as monitor:
        wait_for(
            lambda: monitor.execute(
                "SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = %s",
                [waiter_pid],
            ).fetchone()[0]
        )
    try:
        yield holder.info.backend_pid, waiter_pid
    finally:
        with suppress(psycopg.Error):
            holder.rollback()
        holder.close()
        thread.join(10)
        waiter.close()


def run_quietly(conn: psycopg.Connection, query: str) -> None:
    """Run a statement the test will cancel or terminate."""
    with suppress(psycopg.Error):
        conn.execute(query)


def make_accounts(conn: psycopg.Connection) -> None:
    conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)")
    conn.execute("INSERT INTO accounts SELECT i, 100 FROM generate_series(1, 10) i")


def clean_database(pg) -> str:
    """Tables with primary keys, analyzed and used through their indexes: nothing to report."""
    url = new_database(pg, "healthy")
    with connect(url) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        make_accounts(conn)
        conn.execute('CREATE TABLE "Message" (id bigserial PRIMARY KEY, body text NOT NULL)')
        conn.execute(
            """INSERT INTO "Message"(body) SELECT md5(i::text) FROM generate_series(1, 2000) i"""
        )
        conn.execute("""CREATE INDEX message_body ON "Message"(body)""")
        flush_stats(conn)
        conn.execute('ANALYZE accounts, "Message"')
        for i in range(10):
            conn.execute("""SELECT * FROM "Message" WHERE body = %s""", [f"x{i}"]).fetchall()
            conn.execute("""SELECT * FROM "Message" WHERE id = %s""", [i]).fetchall()
        flush_stats(conn)
        reset_statements(conn)
    return url


def results_by_name(report: HealthReport) -> dict[str, HealthCheck]:
    return {c.name: c for c in report.checks}


def test_clean_database_passes_every_check(pg, prefect):
    url = clean_database(pg)
    state = health_report(database_url=url, thresholds=SENSITIVE, return_state=True)
    assert state.is_completed(), state.message
    report = state.result()
    assert [c.name for c in report.checks] == list(CHECKS)
    noisy = {c.name: c.findings for c in report.checks if c.status != "ok" or c.findings}
    assert noisy == {}
    assert report.status == "ok"
    sizes = results_by_name(report)["index-sizes"].details
    assert {d["index"] for d in sizes} == {"accounts_pkey", "Message_pkey", "message_body"}


@pytest.fixture
def planted(pg) -> Iterator[str]:
    """One database with one of every problem the report knows."""
    url = new_database(pg, "sick")
    with connect(url) as conn:
        conn.execute("CREATE EXTENSION pg_stat_statements")
        make_accounts(conn)
        # Bloat: 80 % of rows deleted and vacuumed away; the table and its index keep their pages.
        conn.execute(
            "CREATE TABLE bloated (id int PRIMARY KEY, payload text NOT NULL) "
            "WITH (autovacuum_enabled = false)"
        )
        conn.execute("INSERT INTO bloated SELECT i, md5(i::text) FROM generate_series(1, 30000) i")
        conn.execute("CREATE INDEX bloated_payload ON bloated(payload)")
        conn.execute("DELETE FROM bloated WHERE id % 5 <> 0")
        flush_stats(conn)
        conn.execute("VACUUM ANALYZE bloated")
        # Dead tuples autovacuum has not removed.
        conn.execute("CREATE TABLE churn (id int, v int) WITH (autovacuum_enabled = false)")
        conn.execute("INSERT INTO churn SELECT i, 0 FROM generate_series(1, 2000) i")
        conn.execute("ANALYZE churn")
        conn.execute("UPDATE churn SET v = 1")
        # A duplicate index: (a) is the leading column of (a, b).
        conn.execute("CREATE TABLE pairs (a int, b int)")
        conn.execute("CREATE INDEX pairs_a_b ON pairs(a, b)")
        conn.execute("CREATE INDEX pairs_a ON pairs(a)")
        conn.execute("CREATE UNIQUE INDEX pairs_b_unique ON pairs(b)")
        # An invalid index: a concurrent unique build that failed.
        conn.execute("INSERT INTO pairs VALUES (1, 1), (1, 2), (2, 3)")
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY pairs_a_unique ON pairs(a)")
        # A sequence about to run out, and a bigint sequence feeding an int column.
        conn.execute("CREATE SEQUENCE order_no AS integer")
        conn.execute("SELECT setval('order_no', 2000000000)")
        conn.execute("CREATE SEQUENCE wide_seq")
        conn.execute("CREATE TABLE tickets (id int NOT NULL DEFAULT nextval('wide_seq'))")
        conn.execute("ALTER SEQUENCE wide_seq OWNED BY tickets.id")
        conn.execute("SELECT setval('wide_seq', 1700000000)")
        # A large table read only by sequential scans.
        conn.execute("CREATE TABLE events (id int, kind text)")
        conn.execute("INSERT INTO events SELECT i, 'k' || (i % 10) FROM generate_series(1, 3000) i")
        conn.execute("ANALYZE events")
        conn.execute(
            "ALTER TABLE events ADD CONSTRAINT events_id_positive CHECK (id > 0) NOT VALID"
        )
        flush_stats(conn)
        reset_statements(conn)
        for _ in range(6):
            conn.execute("SELECT count(*) FROM events WHERE kind = 'k3'")
        conn.execute("SELECT pg_sleep(0.3)")
        conn.execute("SELECT * FROM bloated WHERE id = 5")  # the primary key is used
        flush_stats(conn)
    yield url


def test_planted_problems_are_found_and_nothing_else(pg, prefect, planted, tmp_path):
    url = planted
    long_query = connect(url)
    long_pid = long_query.info.backend_pid
    sleeper = threading.Thread(target=run_quietly, args=(long_query, "SELECT pg_sleep(30)"))
    with connect(url) as admin:
        admin.execute("SELECT pg_create_physical_replication_slot('dbops_test_slot', true)")
    hook = WebhookServer()
    try:
        sleeper.start()
        with blocked_session(url) as (holder, waiter), hook.running() as webhook:
            time.sleep(0.7)
            os.environ["DBOPS_WEBHOOK_URL"] = webhook
            state = health_report(
                database_url=url + "?connection_limit=40",
                thresholds=SENSITIVE,
                app_instances=3,
                return_state=True,
            )
    finally:
        os.environ.pop("DBOPS_WEBHOOK_URL", None)
        with connect(url) as admin:
            admin.execute("SELECT pg_cancel_backend(%s)", [long_pid])
            admin.execute("SELECT pg_drop_replication_slot('dbops_test_slot')")
        sleeper.join(10)
        long_query.close()

    assert state.is_failed()
    assert "critical check(s)" in state.message and "sequences" in state.message
    report = state.result(raise_on_failure=False)
    checks = results_by_name(report)

    def named(check: str, *keys: str) -> set:
        return {
            tuple(f[k] for k in keys) if len(keys) > 1 else f[keys[0]]
            for f in checks[check].findings
        }

    assert checks["idle-in-transaction"].status == "warning"
    assert named("idle-in-transaction", "pid") == {holder}
    assert named("long-running-queries", "pid") == {long_pid, waiter}
    pairs = checks["blocking"].findings
    assert [(p["blocked_pid"], p["blocking_pid"], p["blocking_is_head"]) for p in pairs] == [
        (waiter, holder, True)
    ]
    assert "balance - 1" in pairs[0]["blocked_query"]
    assert "balance + 1" in pairs[0]["blocking_query"]
    assert named("unused-indexes", "table", "index") == {
        ("bloated", "bloated_payload"),
        ("pairs", "pairs_a"),
        ("pairs", "pairs_a_b"),
    }
    assert named("duplicate-indexes", "index", "covered_by") == {("pairs_a", "pairs_a_b")}
    assert named("invalid-indexes", "index") == {"pairs_a_unique"}
    assert named("index-bloat", "index") == {"bloated_payload", "bloated_pkey"}
    assert min(f["bloat_pct"] for f in checks["index-bloat"].findings) > 60
    assert named("table-bloat", "table") == {"bloated"}
    assert named("dead-tuples", "table") == {"churn"}
    slow = checks["slow-queries"].findings
    assert [q["query"] for q in slow] == ["SELECT pg_sleep($1)"]
    assert named("sequential-scans", "table") == {"events"}
    assert any("kind" in q for q in checks["sequential-scans"].findings[0]["queries"])
    seqs = {f["sequence"]: f for f in checks["sequences"].findings}
    assert set(seqs) == {"order_no", "wide_seq"}
    assert seqs["order_no"]["status"] == "critical"
    assert seqs["wide_seq"]["status"] == "warning"  # bigint sequence, int column
    assert seqs["wide_seq"]["limit"] == 2147483647
    assert "tickets" in seqs["wide_seq"]["columns"]
    assert named("invalid-constraints", "constraint") == {"events_id_positive"}
    assert named("replication-slots", "slot") == {"dbops_test_slot"}
    pool = checks["connection-pool"]
    assert pool.status == "critical" and pool.findings[0]["planned_connections"] == 120
    assert checks["transaction-id-wraparound"].status == "ok"
    assert checks["connections"].status == "ok"

    # The markdown summary and one table per check are in the Prefect API.
    artifacts = flow_run_artifacts(state.state_details.flow_run_id)
    kinds = sorted(a.type for a in artifacts)
    assert kinds.count("markdown") == 1 and kinds.count("table") == len(CHECKS)
    summary = next(a for a in artifacts if a.type == "markdown").data
    assert "pairs_a_unique" in summary and "critical" in summary

    # The failure notification reached the webhook, short and Slack-shaped.
    assert len(hook.bodies) == 1
    text = hook.bodies[0]["text"]
    assert "health-report" in text and "sequences" in text and "Failed" in text


def flow_run_logs(flow_run_id) -> str:
    """Everything the run (and its tasks) logged, as the Prefect API stored it."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()
    with get_client(sync_client=True) as client:
        logs = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]))
        )
    return "\n".join(log.message for log in logs)


def flow_run_artifacts(flow_run_id):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        return client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def test_thresholds_are_parameters(pg, planted):
    info = ConnInfo.parse(planted)
    loose = HealthThresholds(sequence_warning_pct=95, sequence_critical_pct=99)
    tight = HealthThresholds(connections_warning_pct=0.1, xid_age_warning=1, xid_age_critical=10**9)
    by_name = {r.name: r for r in run_checks(info, loose, PoolSettings(), ["sequences"])}
    assert by_name["sequences"].status == "ok"
    by_name = {
        r.name: r
        for r in run_checks(
            info, tight, PoolSettings(), ["connections", "transaction-id-wraparound"]
        )
    }
    assert by_name["connections"].status == "warning"
    assert any(f["database"] == info.dbname for f in by_name["connections"].findings)
    assert by_name["transaction-id-wraparound"].status == "warning"
    assert info.dbname in {f.get("database") for f in by_name["transaction-id-wraparound"].findings}


def test_cache_hit_ratio_sees_reads_from_disk(pg):
    url = new_database(pg, "cold")
    with connect(url) as conn:
        conn.execute("CREATE EXTENSION pg_buffercache")
        conn.execute(
            "CREATE TABLE cold AS SELECT i, md5(i::text) AS t FROM generate_series(1, 20000) i"
        )
        conn.execute("SELECT pg_stat_reset()")
        for _ in range(3):
            conn.execute("SELECT pg_buffercache_evict_relation('cold')")
            conn.execute("SELECT count(*) FROM cold")
        flush_stats(conn)
    thresholds = HealthThresholds(cache_min_blocks=100)
    (result,) = run_checks(ConnInfo.parse(url), thresholds, PoolSettings(), ["cache-hit-ratio"])
    assert result.status == "critical"
    assert [f["scope"] for f in result.findings] == ["tables"]
    assert result.findings[0]["hit_ratio_pct"] < 50


def test_without_pg_stat_statements_the_check_says_how_to_enable_it(pg, pg15):
    url = new_database(pg, "nostats")  # library preloaded, extension not created
    (result,) = run_checks(
        ConnInfo.parse(url), HealthThresholds(), PoolSettings(), ["slow-queries"]
    )
    assert result.status == "warning"
    assert result.summary.startswith("extension not installed")
    assert "CREATE EXTENSION pg_stat_statements" in result.summary

    # PostgreSQL 15 without the library: every check runs, only this one complains.
    old = ConnInfo.parse(new_database(pg15, "old"))
    results = {r.name: r for r in run_checks(old, HealthThresholds(), PoolSettings())}
    assert "shared_preload_libraries" in results["slow-queries"].summary
    assert {n: r.status for n, r in results.items() if r.status != "ok"} == {
        "slow-queries": "warning"
    }


def test_pool_check_follows_the_guide(pg):
    info = ConnInfo.parse(new_database(pg, "pool") + "?connection_limit=10&pool_timeout=20")
    pool = PoolSettings.from_conninfo(info, None, 1)
    assert pool.connection_limit == 10 and not pool.pgbouncer
    (ok,) = run_checks(info, HealthThresholds(), pool, ["connection-pool"])
    assert ok.status == "ok" and "10 x 1" in ok.summary
    (many,) = run_checks(info, HealthThresholds(), PoolSettings(5, 12), ["connection-pool"])
    assert many.status == "warning" and "PgBouncer" in many.findings[0]["fix"]
    (bouncer,) = run_checks(
        info, HealthThresholds(), PoolSettings(5, 12, True), ["connection-pool"]
    )
    assert bouncer.status == "ok" and "PgBouncer" in bouncer.summary


def test_passwords_never_reach_a_report():
    assert redact_sql("ALTER ROLE x WITH PASSWORD 'hunter2'") == "ALTER ROLE x WITH PASSWORD '***'"
    assert "s3cret" not in redact_sql(
        "CREATE USER MAPPING FOR u SERVER s OPTIONS (password 's3cret')"
    )
    assert "pw" not in redact_sql("SELECT dblink_connect('host=h password=pw dbname=d')")


def test_bad_check_names_and_inline_passwords_are_refused(prefect):
    with pytest.raises(DbopsError, match="unknown health check"):
        select_checks(["connections", "nope"])
    state = health_report(database_url="postgresql://u:pw@localhost/db", return_state=True)
    assert state.is_failed() and "contains a password" in state.message


class WebhookServer:
    """A real HTTP server on loopback that records the JSON bodies posted to it."""

    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict] = []
        self.status = status

    @contextmanager
    def running(self) -> Iterator[str]:
        bodies, status = self.bodies, self.status

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers["Content-Length"])
                bodies.append(json.loads(self.rfile.read(length)))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/hooks/{uuid.uuid4().hex}"
        finally:
            server.shutdown()
            server.server_close()


class _Named:
    def __init__(self, **kw: object) -> None:
        self.__dict__.update(kw)


def test_webhook_notification_rules(monkeypatch):
    hook = WebhookServer()
    flow = _Named(name="backup-database")
    run = _Named(name="brave-fox", id=uuid.uuid4())
    state = _Named(name="Failed", message="cannot connect to postgresql://u:pw@h/db: refused")
    with hook.running() as url:
        monkeypatch.setenv("DBOPS_WEBHOOK_URL", url)
        monkeypatch.setenv("DBOPS_NOTIFY_FLOWS", "health-report, vacuum-analyze")
        notify_failure(flow, run, state)  # not a configured flow
        assert hook.bodies == []
        monkeypatch.setenv("DBOPS_NOTIFY_FLOWS", "backup-database")
        notify_failure(flow, run, state)
    assert len(hook.bodies) == 1
    text = hook.bodies[0]["text"]
    assert "backup-database" in text and "brave-fox" in text and "pw@" not in text
    # A dead webhook is logged, not raised: the flow's own failure stays the story.
    monkeypatch.setenv("DBOPS_WEBHOOK_URL", url)
    notify_failure(flow, run, state)
    with pytest.raises(TransientError):
        post_webhook(url, "x", timeout=2)
    assert selected("x", None) and selected("x", "*") and not selected("x", "y,z")
    assert len(failure_text("f", "r", "Failed", "m" * 2000, "")) < 500


def test_dbops_health_json(pg, prefect, monkeypatch):
    url = clean_database(pg)
    with connect(url) as conn:
        conn.execute("CREATE SEQUENCE almost AS smallint")
        conn.execute("SELECT setval('almost', 32000)")
    monkeypatch.setenv(
        "DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none"
    )  # --database-url wins
    runner = CliRunner()
    app = cli_app()
    args = [
        "health",
        "--json",
        "--database-url",
        url,
        "--check",
        "sequences",
        "--check",
        "blocking",
    ]
    done = runner.invoke(app, args)
    assert done.exit_code == 1, done.output
    report = json.loads(done.stdout)  # stdout holds the JSON document and nothing else
    assert [(c["name"], c["status"]) for c in report["checks"]] == [
        ("sequences", "critical"),
        ("blocking", "ok"),
    ]
    assert report["checks"][0]["findings"][0]["sequence"] == "almost"
    assert report["checks"][1]["findings"] == []
    assert "error: 1 critical check(s): sequences" in done.stderr
    bad = runner.invoke(app, ["health", "--threshold", "nope=1"])
    assert bad.exit_code == 1 and "unknown threshold" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1

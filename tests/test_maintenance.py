"""vacuum-analyze, analyze and reindex against real PostgreSQL: targeted, ordered by payoff,
within budget and lock_timeout, reporting before/after; hostile names stay names."""

from __future__ import annotations

import json

import psycopg
import pytest
from psycopg import sql
from typer.testing import CliRunner

from flows.maintenance import FULL_WARNING, analyze, reindex, vacuum_analyze
from tasks.core.postgres import ConnInfo
from tasks.core.slots import database_slot
from tasks.core.statistics import invalid_indexes
from tasks.maintenance.reindex import IndexCandidate, run_reindex
from tasks.maintenance.vacuum import VacuumThresholds
from tests.backup_helpers import cli_app
from tests.conftest import new_database
from tests.test_health import connect, flow_run_artifacts, flow_run_logs, flush_stats

LOW = VacuumThresholds(min_dead_tuples=100, min_modifications=100)
HOSTILE_SCHEMA = "my schema"
HOSTILE_TABLE = "Robert'); DROP TABLE students;--"


def ident(*parts: str) -> sql.Composed:
    return sql.SQL(".").join(sql.Identifier(p) for p in parts)


def table_with_dead_rows(
    conn: psycopg.Connection, name: sql.Composable, rows: int, dead: int, how: str = "update"
) -> None:
    """A table autovacuum leaves alone, with `dead` dead tuples after its last ANALYZE."""
    conn.execute(
        sql.SQL("CREATE TABLE {} (id int, v text) WITH (autovacuum_enabled = false)").format(name)
    )
    conn.execute(
        sql.SQL("INSERT INTO {} SELECT i, md5(i::text) FROM generate_series(1, %s) i").format(name),
        [rows],
    )
    flush_stats(conn)  # else the INSERT's counts land after ANALYZE reset them
    conn.execute(sql.SQL("ANALYZE {}").format(name))
    if dead:
        change = "UPDATE {} SET v = v || 'x'" if how == "update" else "DELETE FROM {}"
        conn.execute(sql.SQL(change + " WHERE id <= %s").format(name), [dead])


def stats(url: str, table: str) -> dict:
    with connect(url) as conn:
        row = conn.execute(
            "SELECT n_dead_tup, n_mod_since_analyze, last_vacuum, last_analyze "
            "FROM pg_stat_user_tables WHERE relname = %s",
            [table],
        ).fetchone()
    return dict(zip(("dead", "mods", "last_vacuum", "last_analyze"), row, strict=True))


@pytest.fixture
def dusty(pg) -> str:
    url = new_database(pg, "dusty")
    with connect(url) as conn:
        conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(HOSTILE_SCHEMA)))
        table_with_dead_rows(conn, ident("big_dead"), 20000, 10000)
        table_with_dead_rows(conn, ident(HOSTILE_SCHEMA, HOSTILE_TABLE), 5000, 4000, "delete")
        table_with_dead_rows(conn, ident("small_dead"), 3000, 1500)
        table_with_dead_rows(conn, ident("fresh"), 2000, 0)
        table_with_dead_rows(conn, ident("stale"), 1000, 0)
        conn.execute("INSERT INTO stale SELECT i, 'new' FROM generate_series(1, 2000) i")
        flush_stats(conn)
    return url


def test_targeted_vacuum_takes_the_biggest_payoff_first(pg, prefect, dusty):
    state = vacuum_analyze(database_url=dusty, thresholds=LOW, return_state=True)
    assert state.is_completed(), state.message
    items = state.result().items
    assert [(i["target"], i["action"], i["status"]) for i in items] == [
        ("public.big_dead", "VACUUM (ANALYZE)", "done"),
        (f"{HOSTILE_SCHEMA}.{HOSTILE_TABLE}", "VACUUM (ANALYZE)", "done"),
        ("public.small_dead", "VACUUM (ANALYZE)", "done"),
        ("public.stale", "ANALYZE", "done"),
    ]
    big = items[0]
    assert big["dead_tuples_before"] == 10000 and big["dead_tuples_after"] == 0
    assert big["size_mb_before"] > 0 and big["seconds"] >= 0
    assert "dead tuples 33%" in big["reason"]
    assert stats(dusty, "small_dead")["dead"] == 0
    stale = stats(dusty, "stale")
    assert stale["mods"] == 0 and stale["last_vacuum"] is None
    assert stats(dusty, "fresh")["last_vacuum"] is None  # nothing to do there
    with connect(dusty) as conn:  # the hostile name was a name, nothing was dropped
        assert (
            conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(ident(HOSTILE_SCHEMA, HOSTILE_TABLE))
            ).fetchone()[0]
            == 1000
        )
    (artifact,) = flow_run_artifacts(state.state_details.flow_run_id)
    assert artifact.type == "table" and artifact.key.startswith("vacuum-dusty-")
    assert "big_dead" in str(artifact.data) and "4 done" in artifact.description


def test_time_budget_and_all_tables(pg, prefect, dusty):
    state = vacuum_analyze(
        database_url=dusty, thresholds=LOW, time_budget_minutes=1e-6, return_state=True
    )
    assert state.is_completed(), state.message
    statuses = [i["status"] for i in state.result().items]
    assert statuses[0] == "done"
    assert statuses[1:] == ["skipped: time budget spent"] * 3

    state = vacuum_analyze(database_url=dusty, all_tables=True, return_state=True)
    assert state.is_completed(), state.message
    items = state.result().items
    assert {i["target"] for i in items} == {
        "public.big_dead",
        "public.small_dead",
        "public.fresh",
        "public.stale",
        f"{HOSTILE_SCHEMA}.{HOSTILE_TABLE}",
    }
    assert {(i["action"], i["status"]) for i in items} == {("VACUUM (ANALYZE)", "done")}
    assert stats(dusty, "fresh")["last_vacuum"] is not None

    # Never beside a backup (or another maintenance run) of the same database.
    with database_slot(ConnInfo.parse(dusty), 5):
        state = vacuum_analyze(
            database_url=dusty, all_tables=True, slot_wait_seconds=0.5, return_state=True
        )
    assert state.is_failed() and "another dbops job held" in state.message


def test_vacuum_full_only_when_asked_one_table_at_a_time_under_lock_timeout(pg, prefect):
    url = new_database(pg, "full")
    with connect(url) as conn:
        table_with_dead_rows(conn, ident("bloaty"), 20000, 16000, "delete")
        table_with_dead_rows(conn, ident("busy"), 100, 0)
        flush_stats(conn)
        conn.execute("VACUUM bloaty")  # plain VACUUM frees the space but keeps the file
    reader = connect(url, autocommit=False)
    reader.execute("SELECT count(*) FROM busy")  # holds ACCESS SHARE until it ends
    try:
        state = vacuum_analyze(
            database_url=url,
            tables=["bloaty", "public.busy"],
            full=True,
            lock_timeout_seconds=0.5,
            return_state=True,
        )
    finally:
        reader.rollback()
        reader.close()
    assert state.is_failed()
    assert state.message.startswith("1 of 2 not processed: public.busy (locked")
    bloaty, busy = state.result(raise_on_failure=False).items
    assert (bloaty["action"], bloaty["status"]) == ("VACUUM (FULL, ANALYZE)", "done")
    assert bloaty["size_mb_after"] < bloaty["size_mb_before"] * 0.4
    assert busy["status"].startswith("locked: lock not granted within 0.5 s")
    assert busy["seconds"] < 5
    assert FULL_WARNING[:40] in flow_run_logs(state.state_details.flow_run_id)


def test_analyze_refreshes_stale_and_missing_statistics_only(pg, prefect):
    url = new_database(pg, "stats")
    with connect(url) as conn:
        table_with_dead_rows(conn, ident("fresh"), 2000, 0)
        table_with_dead_rows(conn, ident("stale"), 1000, 0)
        conn.execute("INSERT INTO stale SELECT i, 'new' FROM generate_series(1, 2000) i")
        conn.execute("CREATE TABLE never (id int) WITH (autovacuum_enabled = false)")
        conn.execute("INSERT INTO never SELECT generate_series(1, 500)")
        conn.execute("CREATE TABLE empty (id int)")
        flush_stats(conn)
    state = analyze(database_url=url, thresholds=LOW, return_state=True)
    assert state.is_completed(), state.message
    items = state.result().items
    assert {(i["target"], i["action"], i["status"]) for i in items} == {
        ("public.stale", "ANALYZE", "done"),
        ("public.never", "ANALYZE", "done"),
    }
    assert "never analyzed" in next(i["reason"] for i in items if i["target"] == "public.never")
    assert stats(url, "never")["last_analyze"] is not None
    assert stats(url, "fresh")["mods"] == 0

    state = analyze(database_url=url, all_tables=True, dry_run=True, return_state=True)
    items = state.result().items
    assert {i["target"] for i in items} == {
        "public.fresh",
        "public.stale",
        "public.never",
        "public.empty",
    }
    assert {i["status"] for i in items} == {"planned"}


def interrupted(url: str, statement: str, table: str = "t") -> None:
    """Run a concurrent index build and cancel it while it waits for a writer: it leaves an
    invalid index behind, as a real interrupted run does."""
    writer = connect(url, autocommit=False)
    writer.execute(
        sql.SQL("INSERT INTO {} (id, payload, kind) VALUES (-1, 'w', 0)").format(
            sql.Identifier(table)
        )
    )
    try:
        with connect(url) as conn:
            conn.execute("SET statement_timeout = '400ms'")
            with pytest.raises(psycopg.errors.QueryCanceled):
                conn.execute(statement)
    finally:
        writer.rollback()
        writer.close()


HOSTILE_INDEX = 'ix "bloat"; DROP TABLE t; --'


@pytest.fixture
def indexed(pg) -> str:
    url = new_database(pg, "idx")
    with connect(url) as conn:
        conn.execute(
            "CREATE TABLE t (id int PRIMARY KEY, payload text NOT NULL, kind int NOT NULL) "
            "WITH (autovacuum_enabled = false)"
        )
        conn.execute("INSERT INTO t SELECT i, md5(i::text), i % 7 FROM generate_series(1, 30000) i")
        conn.execute(sql.SQL("CREATE INDEX {} ON t(payload)").format(sql.Identifier(HOSTILE_INDEX)))
        conn.execute("CREATE INDEX t_kind ON t(kind)")
        conn.execute("DELETE FROM t WHERE id % 5 <> 0")
        flush_stats(conn)
        conn.execute("VACUUM ANALYZE t")
    interrupted(url, "CREATE INDEX CONCURRENTLY t_later ON t(id, kind)")
    interrupted(url, "REINDEX INDEX CONCURRENTLY t_kind")
    return url


def index_state(url: str) -> dict[str, tuple[bool, int]]:
    with connect(url) as conn:
        rows = conn.execute(
            "SELECT c.relname, i.indisvalid, pg_relation_size(c.oid) FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indexrelid WHERE i.indrelid = 't'::regclass"
        ).fetchall()
    return {name: (valid, size) for name, valid, size in rows}


def test_reindex_rebuilds_invalid_and_bloated_and_drops_leftovers(pg, prefect, indexed):
    before = index_state(indexed)
    assert before["t_later"][0] is False and before["t_kind_ccnew"][0] is False
    with connect(indexed) as conn:
        kinds = {i["index"]: i["leftover_of"] for i in invalid_indexes(conn)}
    assert kinds == {"t_later": None, "t_kind_ccnew": "t_kind"}

    dry = reindex(
        database_url=indexed,
        bloat_threshold_pct=50,
        min_index_mb=0,
        dry_run=True,
        return_state=True,
    )
    planned = {i["target"]: i["action"] for i in dry.result().items}
    assert planned == {
        "public.t_kind_ccnew": "DROP INDEX CONCURRENTLY",
        "public.t_later": "REINDEX INDEX CONCURRENTLY",
        f"public.{HOSTILE_INDEX}": "REINDEX INDEX CONCURRENTLY",
        "public.t_pkey": "REINDEX INDEX CONCURRENTLY",
    }
    assert list(planned)[0] == "public.t_kind_ccnew"  # leftovers go first
    assert index_state(indexed) == before  # a dry run changes nothing

    state = reindex(database_url=indexed, bloat_threshold_pct=50, min_index_mb=0, return_state=True)
    assert state.is_completed(), state.message
    items = {i["target"]: i for i in state.result().items}
    assert {i["status"] for i in items.values()} == {"done"}
    after = index_state(indexed)
    assert set(after) == {"t_pkey", "t_kind", HOSTILE_INDEX, "t_later"}
    assert all(valid for valid, _ in after.values())
    hostile = items[f"public.{HOSTILE_INDEX}"]
    assert hostile["size_mb_after"] < hostile["size_mb_before"] * 0.5
    assert after[HOSTILE_INDEX][1] < before[HOSTILE_INDEX][1] * 0.5

    again = reindex(database_url=indexed, bloat_threshold_pct=50, min_index_mb=0, return_state=True)
    assert again.result().items == []  # nothing left to do

    # A rebuild that cannot get its locks in time leaves no _ccnew copy behind.
    writer = connect(indexed, autocommit=False)
    writer.execute("INSERT INTO t (id, payload, kind) VALUES (-2, 'w', 0)")
    try:
        plan = [IndexCandidate("public", "t", "t_kind", "reindex", "requested", 0)]
        (outcome,) = run_reindex(ConnInfo.parse(indexed), plan, lock_timeout_seconds=0.5)
    finally:
        writer.rollback()
        writer.close()
    assert outcome.status.startswith("locked")
    # Dropping the copy waits for the same writer: it is left for the next run, which drops it.
    assert outcome.note.startswith("leftover t_kind_ccnew remains (canceling statement due to lock")
    state = reindex(database_url=indexed, min_index_mb=1000, return_state=True)
    assert [(i["target"], i["status"]) for i in state.result().items] == [
        ("public.t_kind_ccnew", "done")
    ]
    assert set(index_state(indexed)) == {"t_pkey", "t_kind", HOSTILE_INDEX, "t_later"}


def test_cli_vacuum_and_reindex(pg, prefect, indexed, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", indexed)
    runner = CliRunner()
    app = cli_app()
    done = runner.invoke(
        app, ["reindex", "--dry-run", "--json", "--min-size-mb", "0", "--bloat-threshold", "50"]
    )
    assert done.exit_code == 0, done.output
    assert '"public.t_kind_ccnew"' in done.stdout and '"dry_run": true' in done.stdout
    done = runner.invoke(app, ["vacuum", "--all", "--dry-run"])
    assert done.exit_code == 0, done.output
    assert "VACUUM (ANALYZE)" in done.stderr and "public.t" in done.stderr
    bad = runner.invoke(app, ["vacuum", "--table", "nope"])
    assert bad.exit_code == 1
    assert bad.stderr.strip().splitlines()[-1].startswith("error: table 'nope' not found")


def test_a_run_over_many_tables_shows_every_failure_and_the_slowest_in_its_artifact(pg, prefect):
    url = new_database(pg, "wide")
    with connect(url) as conn:
        conn.execute(
            "DO $$ BEGIN FOR i IN 1..129 LOOP EXECUTE format("
            "'CREATE TABLE t_%s AS SELECT g AS id FROM generate_series(1, 20) g', i); END LOOP; END $$"
        )
        conn.execute("CREATE TABLE zz_busy (id int)")
    holder = connect(url, autocommit=False)
    holder.execute("LOCK TABLE zz_busy IN SHARE UPDATE EXCLUSIVE MODE")  # ANALYZE waits for it
    try:
        state = analyze(
            database_url=url, all_tables=True, lock_timeout_seconds=0.3, return_state=True
        )
    finally:
        holder.rollback()
        holder.close()
    assert state.is_failed() and "zz_busy (locked" in state.message
    items = state.result(raise_on_failure=False).items
    assert len(items) == 130  # the result (and --json) keeps every table
    (artifact,) = flow_run_artifacts(state.state_details.flow_run_id)
    shown = artifact.data if isinstance(artifact.data, list) else json.loads(artifact.data)
    assert len(shown) == 100 and "showing 100 of 130" in artifact.description
    assert any(
        row["target"] == "public.zz_busy" and row["status"].startswith("locked") for row in shown
    )
    shown_targets = {row["target"] for row in shown}
    left_out = [i for i in items if i["target"] not in shown_targets]
    fastest_shown = min(r["seconds"] for r in shown if r["status"] == "done")
    assert len(left_out) == 30 and all(i["seconds"] <= fastest_shown for i in left_out)
    order = [i["target"] for i in items if i["target"] in shown_targets]
    assert [row["target"] for row in shown] == order  # the run's order, not re-sorted

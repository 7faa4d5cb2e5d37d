"""Restores that cannot lose the database: each promise against the fault that would break it.

A client connected where we rename, `kill -9` of dbops alone half way, database-level state
around `--clean`, system databases, bytes only the checksum can catch, and a 1000:1 dump.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import psutil
import psycopg
import pytest
from psycopg import sql

from flows.backup import backup_database
from flows.restore import restore_database
from tasks.backup.catalog import BackupSource
from tasks.core.errors import BackupFaultError, SurroundingsError
from tasks.core.postgres import ConnInfo
from tasks.core.streams import StderrTail
from tasks.demo.sample_data import create_sample_database
from tasks.restore.restore import restore_command, tool_failure, user_object_count
from tasks.restore.swap import LEFTOVER, read_state
from tests.conftest import REPO, content_checksums, new_database, run_cli


def backup_of(url: str, where: Path, compression: str = "gzip"):
    state = backup_database(
        database_url=url, backup_url=str(where), compression=compression, return_state=True
    )
    assert state.is_completed(), state.message
    return state.result()


def restore(**kwargs):
    return restore_database(**kwargs, retries=0, return_state=True)


def admin(pg) -> psycopg.Connection:
    return ConnInfo.parse(pg.url("postgres", password="")).connect()


def databases(pg) -> set[str]:
    with admin(pg) as conn:
        return {name for (name,) in conn.execute("SELECT datname FROM pg_database").fetchall()}


def dbname(url: str) -> str:
    return ConnInfo.parse(url).dbname


def fill(url: str, rows: int = 7) -> None:
    with ConnInfo.parse(url).connect() as conn:
        conn.execute("CREATE TABLE current_data(id int primary key, note text)")
        conn.execute(
            "INSERT INTO current_data SELECT i, 'now' FROM generate_series(1, %s) i", [rows]
        )


class Intruder(threading.Thread):
    """A monitoring agent: connects to every dbops scratch database as soon as it appears."""

    def __init__(self, pg) -> None:
        super().__init__(daemon=True)
        self.pg = pg
        self.stop = threading.Event()
        self.visited: set[str] = set()
        self.sessions: list[psycopg.Connection] = []

    def run(self) -> None:
        while not self.stop.is_set():
            for name in databases(self.pg):
                if "__dbops_restore_" in name:
                    try:
                        url = self.pg.url(name, password="")
                        self.sessions.append(ConnInfo.parse(url).connect())
                        self.visited.add(name)
                    except Exception:  # noqa: BLE001 - refused once dbops shut it out
                        pass
            time.sleep(0.02)

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join(5)
        for session in self.sessions:
            session.close()

    def __enter__(self) -> Intruder:
        self.start()
        return self


def test_a_client_on_the_scratch_database_cannot_break_the_swap(prefect, pg, tmp_path):
    source = new_database(pg, "app")
    create_sample_database(ConnInfo.parse(source), size_mb=4)
    manifest = backup_of(source, tmp_path)
    target = new_database(pg, "target")
    fill(target)
    with Intruder(pg) as intruder:
        state = restore(
            source=manifest.backup_id, database_url=target, backup_url=str(tmp_path), clean=True
        )
    assert intruder.visited, "the intruder never got into the scratch database"
    assert state.is_completed(), state.message
    assert content_checksums(target) == content_checksums(source)
    assert not [name for name in databases(pg) if LEFTOVER.match(name)]


def test_database_level_state_survives_clean(prefect, pg, sample_db, tmp_path):
    manifest = backup_of(sample_db, tmp_path)
    target = new_database(pg, "guarded")
    fill(target)
    name = dbname(target)
    with admin(pg) as conn:
        conn.execute("DROP ROLE IF EXISTS dbops_reader")
        conn.execute("CREATE ROLE dbops_reader LOGIN")
        db = sql.Identifier(name)
        for statement in (
            "REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC",
            "GRANT CONNECT ON DATABASE {} TO dbops_reader",
            "ALTER DATABASE {} SET work_mem = '12MB'",
            "ALTER DATABASE {} SET search_path = app, public",
            "ALTER ROLE dbops_reader IN DATABASE {} SET statement_timeout = '5s'",
            "ALTER DATABASE {} CONNECTION LIMIT 42",
            "COMMENT ON DATABASE {} IS 'the app''s data'",
        ):
            conn.execute(sql.SQL(statement).format(db))
        before = read_state(conn, name)
    state = restore(
        source=manifest.backup_id, database_url=target, backup_url=str(tmp_path), clean=True
    )
    assert state.is_completed(), state.message
    with admin(pg) as conn:
        after = read_state(conn, name)
        conn.execute("DROP OWNED BY dbops_reader")
    assert after == before
    assert content_checksums(target) == content_checksums(sample_db)


@pytest.mark.parametrize("system", ["postgres", "template1"])
def test_system_databases_are_refused(prefect, pg, sample_db, tmp_path, system):
    manifest = backup_of(sample_db, tmp_path)
    before = databases(pg)
    state = restore(
        source=manifest.backup_id,
        database_url=pg.url(system, password=""),
        backup_url=str(tmp_path),
        clean=True,
    )
    assert state.is_failed()
    assert "system database" in state.message and "\n" not in state.message
    assert databases(pg) == before


def test_a_63_byte_database_name_restores(prefect, pg, sample_db, tmp_path):
    manifest = backup_of(sample_db, tmp_path)
    long_name = "é" * 31 + "x"  # 63 bytes; scratch names must cut it on a character
    assert len(long_name.encode()) == 63
    with admin(pg) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(long_name)))
    target = pg.url(long_name, password="")
    fill(target)
    state = restore(
        source=manifest.backup_id, database_url=target, backup_url=str(tmp_path), clean=True
    )
    assert state.is_completed(), state.message
    assert content_checksums(target) == content_checksums(sample_db)


@pytest.mark.parametrize("damage", ["flipped byte in COPY data", "appended gzip member"])
def test_bytes_that_decompress_fine_are_caught_by_the_checksum(
    prefect, pg, sample_db, tmp_path, damage
):
    compression = "none" if damage.startswith("flipped") else "gzip"
    manifest = backup_of(sample_db, tmp_path, compression)
    dump = tmp_path / manifest.dump.name
    data = bytearray(dump.read_bytes())
    if compression == "none":
        at = data.index(b"COPY public.") + 200  # inside the rows of the first table
        data[at] = ord("7") if data[at] != ord("7") else ord("8")
        assert data[at - 1 : at + 1].isascii()
    else:
        data += gzip.compress(b"-- more SQL that gunzip would happily decompress\n")
    dump.write_bytes(bytes(data))
    target = new_database(pg, "victim")
    fill(target)
    before = content_checksums(target)
    state = restore(
        source=manifest.backup_id, database_url=target, backup_url=str(tmp_path), clean=True
    )
    assert state.is_failed()
    assert "SHA-256" in state.message or "manifest says" in state.message, state.message
    assert content_checksums(target) == before
    assert not [name for name in databases(pg) if LEFTOVER.match(name)]


def dbops_restore(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    dbops = shutil.which("dbops", path=str(Path(sys.executable).parent)) or "dbops"
    return subprocess.Popen(
        [dbops, "restore", *args],
        env={**os.environ, **env},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a kill of dbops alone: its children are not in our signal path
    )


def scratch_rows(pg, name: str) -> int:
    try:
        with ConnInfo.parse(pg.url(name, password="")).connect() as conn:
            row = conn.execute(
                "SELECT coalesce(sum(n_tup_ins), 0) FROM pg_stat_user_tables"
            ).fetchone()
            return int(row[0])
    except Exception:  # noqa: BLE001 - not there yet
        return 0


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.fixture(scope="module")
def big_backup(prefect_api, pg, tmp_path_factory):
    """A backup whose restore takes a few seconds, shared by the kill tests."""
    where = tmp_path_factory.mktemp("big")
    source = new_database(pg, "big")
    create_sample_database(ConnInfo.parse(source), size_mb=40)
    return backup_of(source, where), where, content_checksums(source)


def database_size(pg, name: str) -> int:
    with admin(pg) as conn:
        row = conn.execute(
            "SELECT pg_database_size(datname) FROM pg_database WHERE datname = %s", [name]
        ).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.xdist_group("restore_kill")  # one worker builds the shared big backup
@pytest.mark.parametrize(
    ("target_kind", "moment"),
    [("empty", "data arriving"), ("full", "scratch created")],
)
def test_kill_9_of_dbops_alone_never_changes_the_target(
    prefect_api, pg, big_backup, target_kind, moment
):
    manifest, where, source_sums = big_backup
    target = new_database(pg, "killed")
    if target_kind == "full":
        fill(target)
    before = content_checksums(target)
    before_dbs = databases(pg)
    args = [manifest.backup_id, "--from", str(where)]
    args += ["--clean"] if target_kind == "full" else []
    process = dbops_restore(args, {"DATABASE_URL": target, "PREFECT_API_URL": prefect_api})
    deadline = time.monotonic() + 120
    scratch, empty_size = None, 0
    children: list[int] = []
    while time.monotonic() < deadline and process.poll() is None:
        scratch = next((n for n in databases(pg) - before_dbs if "__dbops_restore_" in n), None)
        children = children_of(process.pid) or children
        if scratch and not empty_size:
            empty_size = database_size(pg, scratch)
        if moment == "scratch created" and scratch:
            break
        arrived = scratch and database_size(pg, scratch) > empty_size + 4 * 2**20
        if moment == "data arriving" and children and arrived:
            break
        time.sleep(0.02)
    assert process.poll() is None, "the restore finished before it could be killed; make it bigger"
    os.kill(process.pid, signal.SIGKILL)  # dbops alone, as the OOM killer does
    process.wait()
    # Its psql dies with it: nothing but dbops could still swap the scratch database in.
    for _ in range(100):
        if not any(Path(f"/proc/{pid}").exists() for pid in children):
            break
        time.sleep(0.1)
    assert not any(Path(f"/proc/{pid}").exists() for pid in children), "psql outlived dbops"
    assert dbname(target) in databases(pg)
    if scratch in databases(pg):  # killed before the swap: the target is exactly as it was
        assert content_checksums(target) == before
        if target_kind == "empty":
            assert user_object_count(ConnInfo.parse(target)) == 0
        cleanup = run_cli(
            "cleanup", "--yes", "--json", env={"DATABASE_URL": target}, api_url=prefect_api
        )
        assert cleanup.returncode == 0, cleanup.stderr
        assert scratch in json.loads(cleanup.stdout)["dropped"]
    else:  # the one-transaction swap had committed: the target is the whole restored copy
        assert content_checksums(target) == source_sums
    assert databases(pg) - {n for n in databases(pg) if LEFTOVER.match(n)} == before_dbs


def test_a_1000_to_1_dump_restores_in_bounded_memory(prefect_api, pg, tmp_path):
    """The guide's gzip writes one member; a 4 MiB read of it must not inflate all at once."""
    line = b"x" * (1024 * 1024 - 1) + b"\n"
    rows = 320
    path = tmp_path / "ai_saas_20250101_020000.sql.gz"
    packer = zlib.compressobj(6, zlib.DEFLATED, 31)
    with open(path, "wb") as out:
        out.write(
            packer.compress(b"CREATE TABLE blob(v text);\nCOPY public.blob (v) FROM stdin;\n")
        )
        for _ in range(rows):
            out.write(packer.compress(line))
        out.write(packer.compress(b"\\.\n") + packer.flush())
    assert path.stat().st_size * 1000 < rows * len(line)
    target = new_database(pg, "inflated")
    dbops = shutil.which("dbops", path=str(Path(sys.executable).parent)) or "dbops"
    process = subprocess.Popen(
        [dbops, "restore", str(path)],
        env={**os.environ, "DATABASE_URL": target, "PREFECT_API_URL": prefect_api},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    peak = 0  # sampled: a forked child's ru_maxrss starts at its parent's size on Linux
    watched = psutil.Process(process.pid)
    while process.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak = max(peak, watched.memory_info().rss)
        time.sleep(0.02)
    assert process.returncode == 0, process.stderr.read() if process.stderr else ""
    with ConnInfo.parse(target).connect() as conn:
        assert conn.execute("SELECT count(*) FROM blob").fetchone()[0] == rows
    peak_mb = peak / 2**20
    assert peak_mb < 256, f"dbops restore peaked at {peak_mb:.0f} MB for a {rows} MB dump"


@pytest.mark.parametrize(
    ("statement", "blamed"),
    [
        (
            "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '53100', "
            "MESSAGE = 'could not extend file: No space left on device'; END $$;",
            "server",
        ),
        ("CREATE TABLE broken (", "backup"),
    ],
)
def test_a_full_disk_is_the_servers_fault_a_bad_statement_the_backups(
    pg, empty_db, statement, blamed
):
    """The real psql's own error output decides who is to blame, by SQLSTATE."""
    info = ConnInfo.parse(empty_db)
    plain = BackupSource(destination=None, dump_name="x.sql", format="plain", compression="none")  # type: ignore[arg-type]
    argv = [part.replace("{dbname}", info.dbname) for part in restore_command(plain, 15)]
    process = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        env=info.child_env(),
    )  # fmt: skip
    tail = StderrTail(process.stderr)
    assert process.stdin is not None  # the tail thread alone reads stderr: no communicate()
    process.stdin.write(statement.encode() + b"\n")
    process.stdin.close()
    process.wait()
    error = tool_failure("psql", process.returncode, tail, None)
    expected = SurroundingsError if blamed == "server" else BackupFaultError
    assert type(error) is expected, str(error)
    assert "\n" not in str(error)

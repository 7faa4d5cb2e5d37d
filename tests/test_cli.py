"""`dbops` as a user runs it: a separate process, exit codes, JSON on stdout, one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tasks.demo.embedded import free_port
from tests.conftest import content_checksums, new_database, run_cli
from tests.faults import immutable, mutable, recording_tools
from tests.prefect_records import flow_run_ids, records_text


def error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr[-2000:]
    return lines[0]


def test_backup_list_restore_json(prefect, pg, sample_db, tmp_path):
    backup = run_cli(
        "backup", "--database-url", sample_db, "--to", str(tmp_path), "--json", api_url=prefect
    )
    assert backup.returncode == 0, backup.stderr[-2000:]
    manifest = json.loads(backup.stdout)  # stdout holds the JSON document and nothing else
    assert (tmp_path / manifest["dump"]["name"]).exists()

    listing = run_cli("list", "--to", str(tmp_path), "--json")
    assert listing.returncode == 0, listing.stderr
    assert [row["backup_id"] for row in json.loads(listing.stdout)] == [manifest["backup_id"]]

    target = new_database(pg, "cli")
    restored = run_cli(
        "restore",
        "latest",
        "--database-url",
        target,
        "--from",
        str(tmp_path),
        "--from-database",
        manifest["database"],
        "--json",
        api_url=prefect,
    )
    assert restored.returncode == 0, restored.stderr[-2000:]
    assert json.loads(restored.stdout)["checksum_verified"] is True
    assert content_checksums(target) == content_checksums(sample_db)


def test_environment_supplies_urls_and_flags_override_it(prefect, sample_db, tmp_path):
    env_dir, flag_dir = tmp_path / "env", tmp_path / "flag"
    result = run_cli(
        "backup", env={"DATABASE_URL": sample_db, "BACKUP_URL": str(env_dir)}, api_url=prefect
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list(env_dir.glob("*.manifest.json"))) == 1
    result = run_cli(
        "backup",
        "--to",
        str(flag_dir),
        "--compression",
        "zstd",
        env={"DATABASE_URL": sample_db, "BACKUP_URL": str(env_dir)},
        api_url=prefect,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(list(flag_dir.glob("*.sql.zst"))) == 1
    assert len(list(env_dir.glob("*.manifest.json"))) == 1


WRONG_PASSWORD = "Wrong-Pw-Kpq7"


def bad_inputs(pg, sample_db, bucket):
    good_url_with_password = pg.url(sample_db.rsplit("/", 1)[-1])
    wrong_password = good_url_with_password.replace(f":{pg.password}@", f":{WRONG_PASSWORD}@")
    return {
        "unreachable host": (
            ["--database-url", f"postgresql://postgres@127.0.0.1:{free_port()}/x"],
            "server unreachable",
        ),
        "wrong password": (["--database-url", wrong_password], "password authentication failed"),
        "missing database": (
            ["--database-url", pg.url("no_such_db")],
            "'no_such_db' does not exist",
        ),
        "malformed URL": (
            ["--database-url", "postgresql://postgres@127.0.0.1:port/x"],
            "malformed database URL",
        ),
        "unsupported scheme": (["--database-url", "mysql://root@localhost/db"], "not supported"),
        "nonexistent bucket": (
            ["--database-url", good_url_with_password, "--to", f"s3://{bucket}-missing/x"],
            "does not exist",
        ),
    }


@pytest.mark.parametrize(
    "case",
    [
        "unreachable host",
        "wrong password",
        "missing database",
        "malformed URL",
        "unsupported scheme",
        "nonexistent bucket",
    ],
)
def test_bad_input_gets_a_one_line_error_and_writes_nothing(
    prefect, pg, sample_db, bucket, s3_client, tmp_path, case
):
    args, expected = bad_inputs(pg, sample_db, bucket)[case]
    if "--to" not in args:
        args = [*args, "--to", str(tmp_path / "out")]
    result = run_cli("backup", *args, env={"PGPASSFILE": "/nonexistent"}, api_url=prefect)
    assert result.returncode == 1
    line = error_line(result)
    assert expected in line, line
    # The passwords given (the right one, or the wrong one of that case) are never echoed.
    assert pg.password not in result.stderr + result.stdout
    assert WRONG_PASSWORD not in result.stderr + result.stdout
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert s3_client.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_unwritable_backup_directory(prefect, sample_db, tmp_path):
    target = tmp_path / "locked"
    target.mkdir()
    immutable(target)
    try:
        result = run_cli(
            "backup", "--database-url", sample_db, "--to", str(target), api_url=prefect
        )
    finally:
        mutable(target)
    assert result.returncode == 1
    assert "cannot write to backup directory" in error_line(result)
    assert list(target.iterdir()) == []


def test_unknown_format_and_compression_are_refused(sample_db, tmp_path):
    for option, value in (("--format", "tar"), ("--compression", "lz4")):
        result = run_cli(
            "backup", "--database-url", sample_db, "--to", str(tmp_path), option, value
        )
        assert result.returncode == 2
        assert value in result.stderr and "plain" in result.stderr or "gzip" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_password_never_reaches_argv_logs_manifest_or_prefect(prefect, pg, sample_db, tmp_path):
    """The password is given only inside --database-url; it must surface nowhere else."""
    secret_url = pg.url(sample_db.rsplit("/", 1)[-1])
    assert pg.password in secret_url
    argv_log = tmp_path / "argv.log"
    bin_dir = recording_tools(tmp_path / "bin", argv_log, ("pg_dump", "psql"))
    env = {"PG_BIN_DIR": str(bin_dir), "PGPASSFILE": "/nonexistent"}
    backups = tmp_path / "backups"
    before = flow_run_ids()
    backup = run_cli(
        "backup",
        "--database-url",
        secret_url,
        "--to",
        str(backups),
        "--json",
        env=env,
        api_url=prefect,
    )
    assert backup.returncode == 0, backup.stderr[-2000:]
    target_url = pg.url(f"target_{os.getpid()}")
    restore = run_cli(
        "restore",
        "latest",
        "--database-url",
        target_url,
        "--from",
        str(backups),
        "--from-database",
        json.loads(backup.stdout)["database"],
        env=env,
        api_url=prefect,
    )
    assert restore.returncode == 0, restore.stderr[-2000:]

    argv = argv_log.read_text()
    assert "pg_dump" in argv and "psql" in argv  # the wrappers really ran
    assert pg.password not in argv
    for output in (backup.stdout, backup.stderr, restore.stdout, restore.stderr):
        assert pg.password not in output
    for stored in backups.iterdir():
        assert pg.password.encode() not in Path(stored).read_bytes()
    # Every record of this test's own runs (filtered by their ids, all pages), not the
    # first page of whatever the server holds.
    own_runs = flow_run_ids() - before
    assert len(own_runs) >= 2  # the backup and the restore
    prefect_text = records_text(own_runs)
    assert "Restoring" in prefect_text and "Backing up" in prefect_text
    assert pg.password not in prefect_text


def test_flow_parameter_with_a_password_is_refused(prefect, pg, sample_db, tmp_path):
    from flows.backup import backup_database

    state = backup_database(
        database_url=pg.url(sample_db.rsplit("/", 1)[-1]),
        backup_url=str(tmp_path),
        return_state=True,
    )
    assert state.is_failed()
    assert "secret://" in state.message
    assert list(tmp_path.iterdir()) == []


def test_restore_one_table_beside_the_live_one(prefect, sample_db, tmp_path):
    from tasks.backup.pipeline import BackupRequest, run_backup
    from tasks.core.postgres import ConnInfo
    from tasks.storage.destinations import Destination
    from tests.backup_helpers import invoke_dbops

    manifest = run_backup(
        BackupRequest(ConnInfo.parse(sample_db), Destination.from_url(str(tmp_path)))
    )
    before = content_checksums(sample_db)
    table = next(name for name in manifest.row_counts if name.endswith(".User"))
    common = ("restore", manifest.backup_id, "--from", str(tmp_path), "--database-url", sample_db)
    # In-process (the session's Prefect harness): a subprocess adds ~10 s of start-up here.
    restored = invoke_dbops(*common, "--table", table, "--into-schema", "rescued", "--json")
    assert restored.exit_code == 0, restored.output[-2000:]
    result = json.loads(restored.stdout)
    assert result["tables"] == {table: "rescued.User"} and result["checksum_verified"] is True
    after = content_checksums(sample_db)
    assert after.pop("rescued.User") == before[table]
    assert after == before

    refused = invoke_dbops(*common, "--table", table)  # in-process: the refusal comes first
    assert refused.exit_code == 1
    line = next(line for line in refused.output.splitlines() if line.startswith("error: "))
    assert f"{table} already exists" in line and "--as-table" in line and "--into-schema" in line

"""rehearse-migration: the pending migrations on a copy restored from the newest verified backup,
every statement's locks, rewrites and lint reported and rated, production byte-identical, and
the scratch copy dropped whatever happens (a failure, a red verdict, a SIGTERM)."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest

from flows.rehearse import rehearse_migration
from tasks.backup.catalog import resolve_source
from tasks.backup.pipeline import BackupRequest, run_backup
from tasks.core.errors import NotFoundError, ParameterError
from tasks.core.postgres import ConnInfo
from tasks.migrations.rehearsal import RehearsalReport
from tasks.restore.restore_test import verify_restore, write_verification
from tasks.storage.destinations import Destination
from tests.backup_helpers import invoke_dbops
from tests.conftest import content_checksums, new_database, schema_dump
from tests.test_migrate import ALEMBIC, ALEMBIC_PROJECT, BASE_SCHEMA, execute, write_migrations
from tests.test_migrate_cancel import start_dbops, wait_for
from tests.test_verify import markdown_of

pytestmark = pytest.mark.xdist_group("rehearse")  # its module fixture is built once

MIGRATIONS = {
    "0001_email.sql": 'ALTER TABLE "User" ADD COLUMN email text;\nUPDATE "User" SET email = name;\n',
    "0002_body_type.sql": 'ALTER TABLE "Message" ALTER COLUMN body TYPE varchar(200);\n',
    "0003_index.sql": 'CREATE INDEX message_user ON "Message" (user_id);\n',
    "0004_created.sql": 'ALTER TABLE "User" ADD COLUMN created timestamptz NOT NULL '
    "DEFAULT clock_timestamp();\n",
    "0005_concurrent.sql": "-- dbops:no-transaction\n"
    'CREATE INDEX CONCURRENTLY IF NOT EXISTS message_body ON "Message" (body);\n',
}


def back_up_and_verify(url: str, directory: Path, verify: bool = True) -> str:
    """A real backup of url in directory, restore-tested like `dbops verify` records it."""
    destination = Destination.from_url(str(directory))
    manifest = run_backup(BackupRequest(conn=ConnInfo.parse(url), destination=destination))
    if verify:
        server = ConnInfo.parse(url)
        record = verify_restore(resolve_source(manifest.backup_id, str(directory)), server)
        assert record.ok, record.detail
        write_verification(destination, record)
    return manifest.backup_id


@pytest.fixture(scope="module")
def production(pg, tmp_path_factory) -> tuple[str, str, str]:
    """(url, backup directory, verified backup id) of a small guide-shaped database."""
    url = new_database(pg, "rehearse")
    execute(url, BASE_SCHEMA)
    backups = tmp_path_factory.mktemp("backups")
    return url, str(backups), back_up_and_verify(url, backups)


def rehearsal_copies(pg) -> list[str]:
    with ConnInfo.parse(pg.url("postgres", password="")).connect() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE '%\\_\\_dbops\\_rehearse\\_%'"
        ).fetchall()
    return [r[0] for r in rows]


def snapshot(url: str) -> tuple[str, dict]:
    return schema_dump(url), content_checksums(url)


def statement(report: RehearsalReport, migration_id: str, index: int = 1):
    (migration,) = [m for m in report.migrations if m.id == migration_id]
    return migration.statements[index - 1]


def test_rehearsal_reports_locks_rewrites_and_lint_and_leaves_production_as_it_was(
    prefect, pg, production, tmp_path, monkeypatch
):
    url, backups, backup_id = production
    monkeypatch.setenv("DATABASE_URL", url)
    # The copy goes to VERIFY_DATABASE_URL's server (here told apart by a libpq option).
    monkeypatch.setenv("VERIFY_DATABASE_URL", pg.url("postgres", password="") + "?keepalives=1")
    root = write_migrations(tmp_path / "m", MIGRATIONS)
    before = snapshot(url)

    state = rehearse_migration(migrations=str(root), backup_url=backups, return_state=True)

    assert state.is_completed(), state.message
    report = state.result()
    assert report.backup_id == backup_id and report.scratch_dropped
    assert "__dbops_rehearse_" in report.scratch and report.scratch.endswith("?keepalives=1")
    assert [m.id for m in report.migrations] == list(m.removesuffix(".sql") for m in MIGRATIONS)
    assert all(m.rehearsed and m.error is None for m in report.migrations)
    # The update touched every row, under ROW EXCLUSIVE only: green.
    update = statement(report, "0001_email", 2)
    assert update.rows == 40 and update.rating == "green" and update.observed == "exact"
    assert [(e.relation, e.lock) for e in update.effects][0] == ('public."User"', "ROW EXCLUSIVE")
    # ALTER COLUMN TYPE: a rewrite (new relfilenode) under ACCESS EXCLUSIVE, below the limit.
    alter = statement(report, "0002_body_type")
    message = next(e for e in alter.effects if e.relation == 'public."Message"')
    assert message.lock == "ACCESS EXCLUSIVE" and message.rewritten
    assert message.blocks == "reads and writes" and alter.rating == "amber"
    assert "changing-column-type" in [f.rule for f in alter.lint]
    assert any("backfill" in advice for advice in alter.advice)
    # A plain CREATE INDEX: SHARE (writes wait), a scan, squawk's CONCURRENTLY advice.
    index = statement(report, "0003_index")
    (effect,) = index.effects
    assert (effect.lock, effect.blocks, effect.scanned) == ("SHARE", "writes", True)
    assert [f.rule for f in index.lint] == ["require-concurrent-index-creation"]
    assert index.rating == "amber" and "CONCURRENTLY" in index.advice[0]
    # ADD COLUMN NOT NULL with a volatile default: a rewrite too, and squawk says why.
    created = statement(report, "0004_created")
    assert [(e.lock, e.rewritten) for e in created.effects] == [("ACCESS EXCLUSIVE", True)]
    assert "adding-field-with-default" in [f.rule for f in created.lint]
    assert any("backfill it in batches" in advice for advice in created.advice)
    # Outside a transaction: watched by the sampling session; SHARE UPDATE EXCLUSIVE at most.
    concurrent = statement(report, "0005_concurrent")
    assert concurrent.observed == "sampled" and concurrent.samples is not None
    assert concurrent.lint == [] and concurrent.rating == "green"
    assert all(e.lock in (None, "SHARE UPDATE EXCLUSIVE") for e in concurrent.effects)
    assert report.rating == "amber" and not report.refusals
    assert report.expected_seconds == pytest.approx(sum(m.seconds for m in report.migrations))
    assert [c.ok for c in report.checks] == [True, True]
    markdown = markdown_of(state)
    assert "ACCESS EXCLUSIVE" in markdown and "CREATE INDEX CONCURRENTLY" in markdown
    assert "expected production duration" in markdown
    assert snapshot(url) == before  # schema and every row as they were: no history table either
    assert rehearsal_copies(pg) == []

    # The same rehearsal with a 0 s lock limit: red, refused, with the reason; through the CLI.
    result = invoke_dbops(
        "migrate", "--rehearse", "--json", "--migrations", str(root), "--to", backups,
        "--max-lock-seconds", "0",
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    red = RehearsalReport.model_validate(json.loads(result.stdout))
    assert red.rating == "red" and red.scratch_dropped
    assert any('held ACCESS EXCLUSIVE on public."Message"' in r for r in red.refusals)
    assert any("0003_index statement 1" in r and "SHARE" in r for r in red.refusals)
    assert not any("0005_concurrent" in r for r in red.refusals)  # writes go on during it
    assert snapshot(url) == before and rehearsal_copies(pg) == []


def test_failing_migration_fails_the_rehearsal_and_production_stays(
    prefect, pg, production, tmp_path, monkeypatch
):
    url, backups, _ = production
    monkeypatch.setenv("DATABASE_URL", url)
    root = write_migrations(
        tmp_path / "m",
        {
            "0001_email.sql": MIGRATIONS["0001_email.sql"],
            "0002_broken.sql": 'CREATE TABLE "Audit" (id int);\nDELETE FROM "Message";\nSELECT 1/0;\n',
            "0003_index.sql": MIGRATIONS["0003_index.sql"],
        },
    )
    before = snapshot(url)

    state = rehearse_migration(migrations=str(root), backup_url=backups, return_state=True)

    assert state.is_failed()
    assert "division by zero" in state.message and "production was not touched" in state.message
    report = state.result(raise_on_failure=False)
    broken = report.migrations[1]
    assert broken.error and [s.ran for s in broken.statements] == [True, True, False]
    assert statement(report, "0002_broken", 2).rows == 300  # the DELETE ran on the copy
    assert not report.migrations[2].rehearsed and report.migrations[2].statements[0].lint
    assert snapshot(url) == before and rehearsal_copies(pg) == []


def test_bad_input_is_refused_before_any_work(prefect, pg, production, tmp_path, monkeypatch):
    url, _, _ = production
    monkeypatch.setenv("DATABASE_URL", url)
    root = write_migrations(tmp_path / "m", {"0001_email.sql": MIGRATIONS["0001_email.sql"]})
    unverified = tmp_path / "unverified"
    back_up_and_verify(url, unverified, verify=False)

    with pytest.raises(NotFoundError, match=r"no verified backup .*run `dbops verify latest`"):
        rehearse_migration(migrations=str(root), backup_url=str(unverified))
    with pytest.raises(ParameterError, match="does not exist"):
        rehearse_migration(migrations=str(tmp_path / "absent"), backup_url=str(unverified))
    refused = invoke_dbops(
        "migrate", "--rehearse", "--migrations", str(root), "--to", str(unverified)
    )
    assert refused.exit_code == 1
    (line,) = [x for x in refused.output.splitlines() if x.startswith("error: ")]
    assert "no verified backup" in line and "`dbops verify latest`" in line
    missing = invoke_dbops("migrate", "--rehearse", "--migrations", str(tmp_path / "absent"))
    assert missing.exit_code == 1 and "--migrations" in missing.output
    assert rehearsal_copies(pg) == []


def test_sigterm_during_a_rehearsal_drops_the_copy(prefect, pg, production, tmp_path):
    url, backups, _ = production
    sleep = "SELECT pg_sleep(30)"
    root = write_migrations(tmp_path / "m", {"0001_slow.sql": f"{sleep};\n"})
    before = snapshot(url)

    def sleeping() -> bool:
        with ConnInfo.parse(pg.url("postgres", password="")).connect() as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE query = %s "
                "AND datname LIKE '%%\\_\\_dbops\\_rehearse\\_%%'",
                [sleep],
            ).fetchone()
        return bool(row and row[0])

    env = {"DATABASE_URL": url, "BACKUP_URL": backups}
    process = start_dbops(
        "migrate", "--rehearse", "--migrations", str(root), api_url=prefect, env=env
    )
    try:
        wait_for(sleeping, 120, "the rehearsal to run the slow statement in the copy")
        assert len(rehearsal_copies(pg)) == 1
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0
    assert rehearsal_copies(pg) == [] and snapshot(url) == before


def test_another_tools_migrations_are_watched_by_a_sampling_session(
    prefect, pg, production, tmp_path, monkeypatch
):
    url, backups, _ = production
    monkeypatch.setenv("DATABASE_URL", url)
    project = shutil.copytree(ALEMBIC_PROJECT, tmp_path / "alembic")
    (project / "versions" / "0003_body.py").write_text(
        '"""widen Message.body"""\nfrom alembic import op\n\nrevision = "0003"\n'
        'down_revision = "0002"\n\n\ndef upgrade() -> None:\n'
        "    op.execute('ALTER TABLE \"Message\" ALTER COLUMN body TYPE varchar(300)')\n"
        '    op.execute("SELECT pg_sleep(0.3)")\n'  # held until Alembic's COMMIT: sampled
    )
    before = snapshot(url)

    state = rehearse_migration(
        command=f"{ALEMBIC} upgrade head",
        workdir=str(project),
        backup_url=backups,
        return_state=True,
    )

    assert state.is_completed(), state.message
    (migration,) = state.result().migrations
    assert migration.observed_by == "sampler" and migration.error is None
    (whole,) = migration.statements
    assert whole.observed == "sampled" and whole.samples and whole.rating == "amber"
    # accounts is new (nobody else's yet); Message existed: its lock and rewrite are reported.
    (effect,) = whole.effects
    assert (effect.relation, effect.lock, effect.rewritten) == (
        'public."Message"',
        "ACCESS EXCLUSIVE",
        True,
    )
    assert not effect.lock_inferred and effect.held_seconds >= 0.2
    assert snapshot(url) == before and rehearsal_copies(pg) == []

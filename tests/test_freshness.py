"""backup-freshness / `dbops check`: fails when the newest *verified* backup is too old."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from flows.check import backup_freshness
from tasks.core.errors import DbopsError
from tasks.core.settings import s3_options_from_env
from tasks.retention.freshness import assess_freshness
from tasks.retention.plan import BackupInfo
from tasks.storage.destinations import Destination
from tests.backup_helpers import invoke_dbops, make_backup, run_dbops

NOW = datetime(2025, 6, 1, 12, tzinfo=UTC)


def info(db: str, hours: float, verified: bool | None) -> BackupInfo:
    when = NOW - timedelta(hours=hours)
    return BackupInfo(f"{db}_{when:%Y%m%d_%H%M%S}", db, when, (), verified)


def test_fresh_when_the_newest_verified_backup_is_recent():
    report = assess_freshness(
        [info("app", 2, None), info("app", 30, True), info("app", 200, True)], NOW, 48
    )
    assert report.ok
    (row,) = report.databases
    assert row.newest_age_hours == 2 and row.newest_verified_age_hours == 30


def test_unverified_or_failed_backups_do_not_count():
    backups = [info("app", 1, False), info("app", 3, None), info("app", 100, True)]
    report = assess_freshness(backups, NOW, 48)
    assert not report.ok
    assert report.problems() == (
        f"the newest verified backup of app ({backups[2].backup_id}) is 4.2d old, "
        "over the 48h limit"
    )
    never = assess_freshness([info("app", 1, None)], NOW, 48)
    assert "app has no verified backup" in never.problems()


def test_each_database_is_judged_and_an_expected_one_must_exist():
    backups = [info("app", 1, True), info("billing", 500, True)]
    report = assess_freshness(backups, NOW, 192)
    assert [d.ok for d in report.databases] == [True, False]
    assert "billing" in report.problems() and "app" not in report.problems()
    missing = assess_freshness(backups, NOW, 192, databases=["crm"])
    assert [d.database for d in missing.databases] == ["crm"]
    assert missing.problems() == "crm has no backups"


def test_the_optional_limit_on_any_backup_catches_failing_nightly_dumps():
    backups = [info("app", 30, True)]
    assert assess_freshness(backups, NOW, 192).ok
    report = assess_freshness(backups, NOW, 192, max_backup_age_hours=26)
    assert not report.ok and "over the 26h limit" in report.problems()


@pytest.mark.parametrize(("max_age", "other"), [(0, None), (-5, None), (24, 0)])
def test_bad_thresholds_are_refused(max_age, other):
    with pytest.raises(DbopsError, match="must be positive"):
        assess_freshness([], NOW, max_age, other)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_freshness_flow_passes_then_fails_when_verification_stops(prefect, tmp_path, kind, request):
    if kind == "local":
        url = str(tmp_path / "backups")
    else:
        url = f"s3://{request.getfixturevalue('bucket')}/prod"
    destination = Destination.from_url(url, s3_options_from_env())
    make_backup(destination, "ai_saas", now() - timedelta(hours=3), verified=None)
    verified = make_backup(destination, "ai_saas", now() - timedelta(days=2), verified=True)

    ok = backup_freshness(backup_url=url, max_age_hours=72, return_state=True)
    assert ok.is_completed(), ok
    result = ok.result()
    assert result.ok and result.databases[0].newest_verified == verified.backup_id

    stale = backup_freshness(backup_url=url, max_age_hours=24, return_state=True)
    assert stale.is_failed()
    message = str(stale.result(raise_on_failure=False))
    assert message.startswith("backups are stale: the newest verified backup of ai_saas")
    assert verified.backup_id in message and "\n" not in message

    if kind == "local":
        nightly = backup_freshness(
            backup_url=url, max_age_hours=72, max_backup_age_hours=1, return_state=True
        )
        assert nightly.is_failed()
        assert "newest backup of ai_saas" in str(nightly.result(raise_on_failure=False))


def test_freshness_flow_fails_without_backups_or_with_a_bad_threshold(prefect, tmp_path):
    empty = backup_freshness(backup_url=str(tmp_path / "none"), return_state=True)
    assert empty.is_failed()
    assert "no backups under" in str(empty.result(raise_on_failure=False))
    bad = backup_freshness(backup_url=str(tmp_path / "none"), max_age_hours=-1, return_state=True)
    assert bad.is_failed()
    error = bad.result(raise_on_failure=False)
    # The run names the parameter as the UI shows it; the CLI names its flag.
    assert "max_age_hours -1 must be positive" in str(error) and "--" not in str(error)
    assert error.parameter == "max_age_hours"
    cli = invoke_dbops("check", "--to", str(tmp_path / "none"), "--max-age-hours", "-1")
    assert cli.exit_code == 1
    assert cli.stderr.strip().splitlines()[-1] == (
        "error: --max-age-hours -1 must be positive, e.g. 192 (8 days)"
    )


def test_cli_check_exit_codes(prefect, prefect_api, tmp_path):
    url = str(tmp_path / "backups")
    destination = Destination.from_url(url)
    make_backup(destination, "ai_saas", now() - timedelta(days=3), verified=True)

    fresh = invoke_dbops("check", "--to", url, "--json")
    assert fresh.exit_code == 0, fresh.output
    assert json.loads(fresh.stdout)["ok"] is True

    # Once as a user runs it: the console script in its own process.
    stale = run_dbops("check", "--to", url, "--max-age-hours", "48", api_url=prefect_api)
    assert stale.returncode == 1
    assert (
        stale.stderr.strip()
        .splitlines()[-1]
        .startswith("error: backups are stale: the newest verified backup of ai_saas")
    )

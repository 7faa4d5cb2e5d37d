"""Thousands of tables under default server settings: no step holds every table's lock at once.

max_locks_per_transaction is 64 and max_connections 100 here, so one transaction can lock
about 6,400 objects; 3,000 tables with a primary key and one more index are 9,000.
"""

from __future__ import annotations

from flows.backup import backup_database
from flows.restore import restore_database
from flows.verify import verify_backup
from tasks.core.postgres import ConnInfo
from tests.conftest import content_checksums, new_database

TABLES = 3000


def many_tables(url: str, count: int) -> None:
    with ConnInfo.parse(url).connect() as conn:
        assert conn.execute("SHOW max_locks_per_transaction").fetchone()[0] == "64"
        for start in range(1, count + 1, 250):  # each batch its own transaction
            conn.execute(
                """
                DO $$ BEGIN FOR i IN FIRST..LAST LOOP EXECUTE format(
                  'CREATE TABLE tenant_%s (id int PRIMARY KEY, v text, at timestamptz);
                   CREATE INDEX ON tenant_%s (at);
                   INSERT INTO tenant_%s SELECT g, md5(g::text), now() FROM generate_series(1, 50) g',
                  i, i, i); END LOOP; END $$
                """.replace("FIRST", str(start)).replace("LAST", str(min(start + 249, count)))
            )


def test_three_thousand_tables_back_up_restore_and_verify(prefect, pg, tmp_path):
    source = new_database(pg, "tenants")
    many_tables(source, TABLES)
    backup = backup_database(database_url=source, backup_url=str(tmp_path), return_state=True)
    assert backup.is_completed(), backup.message
    manifest = backup.result()
    assert len(manifest.row_counts) == TABLES and set(manifest.row_counts.values()) == {50}

    target = new_database(pg, "tenants_copy")
    restored = restore_database(
        source=manifest.backup_id, database_url=target, backup_url=str(tmp_path), retries=0,
        return_state=True,
    )  # fmt: skip
    assert restored.is_completed(), restored.message
    assert content_checksums(target) == content_checksums(source)

    verified = verify_backup(
        source=manifest.backup_id, database_url=source, backup_url=str(tmp_path), retries=0,
        return_state=True,
    )  # fmt: skip
    assert verified.is_completed(), verified.message
    assert verified.result().ok and verified.result().tables == TABLES


def test_a_full_lock_table_names_the_setting_to_raise_and_stores_nothing(
    prefect, session_dir, passfile, tmp_path
):
    """Past the server's lock table pg_dump itself fails (as the guide's would): the one line
    says which setting to raise and to what, and no object is left behind."""
    from tasks.demo.embedded import LocalCluster

    small = LocalCluster(
        session_dir / "pg-few-locks", passfile=passfile,
        settings=("max_locks_per_transaction=10", "max_connections=20"),
    )  # fmt: skip
    with small:
        url = small.url("postgres", password="")
        with ConnInfo.parse(url).connect() as conn:
            for start in range(0, 2000, 500):
                conn.execute(
                    f"DO $$ BEGIN FOR i IN {start}..{start + 499} LOOP "
                    "EXECUTE format('CREATE TABLE t_%s (id int)', i); END LOOP; END $$"
                )
        backups = tmp_path / "backups"
        state = backup_database(database_url=url, backup_url=str(backups), return_state=True)
        assert state.is_failed()
        message = str(state.message)
        assert "set max_locks_per_transaction = " in message, message
        advised = int(message.split("set max_locks_per_transaction = ")[1].split()[0])
        assert advised * 20 >= 2000 and "no backup was stored" in message
        assert not backups.exists() or not any(backups.iterdir())

        # The parallel format: pg_dump's schema run is what fills it (the snapshot's own
        # connection holds no locks), the advice counts the workers, nothing is left.
        state = backup_database(
            database_url=url, backup_url=str(backups), format="parallel", return_state=True
        )
        assert state.is_failed()
        message = str(state.message)
        assert "set max_locks_per_transaction = " in message, message
        assert "parallel workers" in message and "no backup was stored" in message, message
        assert not backups.exists() or not any(backups.iterdir())

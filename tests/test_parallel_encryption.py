"""An encrypted parallel backup: every object age-encrypted (schema archive, the rest, each
table's rows), copied to a second destination as ciphertext, restored from the copy only with
the identity; Debian's `age` opens a table object; a wrong identity changes nothing."""

from __future__ import annotations

import subprocess

from flows.backup import backup_database
from flows.restore import restore_database
from tasks.core.postgres import ConnInfo
from tests.conftest import content_checksums, new_database, psql
from tests.test_encryption import AGE_MAGIC, keypair, marked_target, marker_intact


def small_shop(pg) -> str:
    url = new_database(pg, "penc")
    psql(
        url,
        "-q",
        "-c",
        """
        CREATE TABLE customer (id int PRIMARY KEY, name text);
        INSERT INTO customer SELECT g, 'customer ' || g FROM generate_series(1, 3000) g;
        CREATE TABLE purchase (id bigserial PRIMARY KEY, customer int REFERENCES customer,
                               total numeric);
        INSERT INTO purchase (customer, total)
        SELECT 1 + g % 3000, g * 1.5 FROM generate_series(1, 6000) g;
        CREATE TABLE audit (at timestamptz, what text);
        """,
    )
    return url


def test_an_encrypted_parallel_backup_is_copied_and_restored_only_with_the_key(
    prefect, pg, bucket, s3_client, tmp_path
):
    source = small_shop(pg)
    public, _ = keypair(tmp_path / "key.txt")
    keypair(tmp_path / "wrong.txt")
    primary = tmp_path / "primary"
    state = backup_database(
        database_url=source,
        backup_url=str(primary),
        format="parallel",
        jobs=2,
        encrypt_to=[public],
        copy_to=[f"s3://{bucket}/offsite"],
        return_state=True,
    )
    assert state.is_completed(), state.message
    manifest = state.result()
    stored = [manifest.dump, *manifest.objects]
    assert (
        manifest.encryption is not None and len(manifest.objects) >= 2
    )  # a batch of 3 tables, the rest
    for obj in stored:  # every data-bearing object is ciphertext, in both places
        assert obj.name.endswith(".age"), obj.name
        assert (primary / obj.name).read_bytes()[:32].startswith(AGE_MAGIC)
        copied = s3_client.get_object(Bucket=bucket, Key=f"offsite/{obj.name}")["Body"]
        assert copied.read(32).startswith(AGE_MAGIC)
    assert public.encode() not in (primary / manifest.manifest_name).read_bytes()

    # Debian's age opens the small tables' batch: a psql script (per table a header line, the
    # COPY statement, its rows and the end mark), as many rows as the manifest says.
    purchase = next(o for o in manifest.objects if "public.purchase" in {e.table for e in o.tables})
    rows = subprocess.run(
        f"age -d -i {tmp_path / 'key.txt'} {primary / purchase.name} | gunzip",
        shell=True,
        capture_output=True,
        check=True,
    ).stdout
    assert rows.count(b"\n") == 1 + sum(e.rows + 3 for e in purchase.tables)
    assert {e.table: e.rows for e in purchase.tables}["public.purchase"] == 6000

    # Restored from the S3 copy: with a wrong key nothing changes; with the key, exactly.
    target = marked_target(pg)
    refused = restore_database(
        source=manifest.backup_id,
        database_url=target,
        backup_url=f"s3://{bucket}/offsite",
        clean=True,
        identity=str(tmp_path / "wrong.txt"),
        retries=0,
        return_state=True,
    )
    assert refused.is_failed() and "\n" not in refused.message.strip()
    assert marker_intact(target)
    done = restore_database(
        source=manifest.backup_id,
        database_url=target,
        backup_url=f"s3://{bucket}/offsite",
        clean=True,
        identity=str(tmp_path / "key.txt"),
        jobs=2,
        return_state=True,
    )
    assert done.is_completed(), done.message
    assert content_checksums(target) == content_checksums(source)
    with ConnInfo.parse(target).connect() as conn:
        assert conn.execute("SELECT nextval('purchase_id_seq')").fetchone()[0] == 6001

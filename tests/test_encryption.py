"""age encryption end to end: real pg_dump, moto's S3 server, Debian's `age`, the aws CLI, psql.

The backup machine has only public keys; the stock tools restore what dbops stored; dbops
restores and verifies with the identity, and refuses (one line, target untouched) a missing
or wrong identity, a damaged or a truncated object. The key never reaches the run's records.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

from prefect.blocks.system import Secret

from flows.backup import backup_database
from flows.restore import restore_database
from flows.restore_tables import restore_tables
from flows.verify import verify_backup
from tasks.core.client_tools import find_client_tool
from tasks.core.postgres import ConnInfo
from tests.conftest import content_checksums, new_database, psql, run_cli
from tests.faults import dying_pg_dump, write_script
from tests.prefect_records import flow_run_ids, records_text

AGE_MAGIC = b"age-encryption.org/v1"


def keypair(path: Path) -> tuple[str, str]:
    """age-keygen writes the identity file; returns (public key, secret key line)."""
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run(
        ["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True
    ).stdout.strip()
    secret = next(x for x in path.read_text().splitlines() if x.startswith("AGE-SECRET-KEY-"))
    return public, secret


def completed(flow, **kwargs):
    state = flow(**kwargs, return_state=True)
    assert state.is_completed(), state.message
    return state.result()


def failed(flow, **kwargs) -> str:
    state = flow(**kwargs, retries=0, return_state=True)
    assert state.is_failed()
    assert "\n" not in state.message.strip()
    return state.message


def spying_tools(bin_dir: Path, log: Path) -> Path:
    """psql and pg_restore that write their argv and environment to `log`, then run."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    for name in ("psql", "pg_restore"):
        real = find_client_tool(name, 18).path
        write_script(
            bin_dir / name, f'{{ echo "{name} $*"; env; }} >> "{log}"\nexec "{real}" "$@"\n'
        )
    return bin_dir


def marked_target(pg) -> str:
    """A non-empty target whose marker a committed restore would replace."""
    url = new_database(pg, "target")
    psql(url, "-q", "-c", "CREATE TABLE marker AS SELECT 42 AS answer")
    return url


def marker_intact(url: str) -> bool:
    return psql(url, "-tAc", "SELECT answer FROM marker").stdout.strip() == "42"


def test_encrypted_backup_restores_with_stock_tools_and_dbops_only_with_the_key(
    prefect, pg, sample_db, bucket, s3_client, s3_server, tmp_path, monkeypatch
):
    public, secret = keypair(tmp_path / "key.txt")
    other_public, _ = keypair(tmp_path / "other.txt")
    _, wrong_secret = keypair(tmp_path / "wrong.txt")
    recipients_file = tmp_path / "recipients.txt"
    recipients_file.write_text(f"# the second operator\n\n{other_public}\n")
    copy_dir = tmp_path / "copy"
    before = flow_run_ids()

    manifest = completed(
        backup_database,
        database_url=sample_db,
        backup_url=f"s3://{bucket}/enc",
        include_globals=True,
        encrypt_to=[public, str(recipients_file)],
        copy_to=[str(copy_dir)],  # copies move ciphertext as it is: no key needed
    )
    assert manifest.dump.name == f"{manifest.backup_id}.sql.gz.age"
    assert manifest.globals is not None and manifest.globals.name.endswith(".globals.sql.gz.age")
    assert manifest.encryption is not None and len(manifest.encryption.recipients) == 2
    stored_manifest = s3_client.get_object(
        Bucket=bucket, Key=f"enc/{manifest.backup_id}.manifest.json"
    )["Body"].read()
    assert public.encode() not in stored_manifest and other_public.encode() not in stored_manifest
    assert json.loads(stored_manifest)["encryption"]["recipients"] == manifest.encryption.recipients
    key = f"enc/{manifest.dump.name}"
    assert s3_client.get_object(Bucket=bucket, Key=key)["Body"].read(32).startswith(AGE_MAGIC)

    # The README's restore with stock tools: aws s3 cp ... - | age -d -i key.txt | gunzip | psql
    stock = new_database(pg, "stock")
    info = ConnInfo.parse(stock)
    pipeline = (
        f"aws s3 cp s3://{bucket}/{key} - --endpoint-url {s3_server} "
        f"| age -d -i {tmp_path / 'key.txt'} | gunzip | psql -q -v ON_ERROR_STOP=1 --no-psqlrc"
    )
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", pipeline],
        env={**os.environ, **info.child_env()},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert content_checksums(stock) == content_checksums(sample_db)
    # The recipients file's key opens it too (here: the globals object, from the copy).
    roles = subprocess.run(
        f"age -d -i {tmp_path / 'other.txt'} {copy_dir / manifest.globals.name} | gunzip",
        shell=True,
        capture_output=True,
        check=True,
    ).stdout
    assert b"CREATE ROLE" in roles

    # dbops restores with the identity file, decrypting in-process: psql's argv and
    # environment never hold the key. Verify, with the other identity from a Secret block,
    # proves decryption (dump and globals).
    spied = tmp_path / "children.log"
    with monkeypatch.context() as patch:
        patch.setenv("PG_BIN_DIR", str(spying_tools(tmp_path / "spy", spied)))
        restored = new_database(pg, "restored")
        result = completed(
            restore_database,
            source=manifest.backup_id,
            database_url=restored,
            backup_url=f"s3://{bucket}/enc",
            identity=str(tmp_path / "key.txt"),
        )
    assert result.checksum_verified
    assert content_checksums(restored) == content_checksums(sample_db)
    assert spied.read_text().startswith("psql ") and "AGE-SECRET-KEY" not in spied.read_text()
    block = f"age-identity-{uuid.uuid4().hex[:8]}"
    Secret(value=(tmp_path / "other.txt").read_text()).save(block)
    record = completed(
        verify_backup,
        source=manifest.backup_id,
        database_url=sample_db,
        backup_url=f"s3://{bucket}/enc",
        identity=f"secret://{block}",
    )
    assert record.ok and record.globals_checked and record.checksum_verified

    # Without the key, with the wrong key, damaged, truncated: one line, the target untouched.
    target = marked_target(pg)
    common = {"database_url": target, "clean": True, "source": manifest.backup_id}
    message = failed(restore_database, backup_url=f"s3://{bucket}/enc", **common)
    assert "encrypted with age" in message and "--identity" in message
    message = failed(
        restore_database,
        backup_url=f"s3://{bucket}/enc",
        identity=str(tmp_path / "wrong.txt"),
        **common,
    )
    assert "not a recipient" in message
    dump = copy_dir / manifest.dump.name
    good = dump.read_bytes()
    middle = len(good) // 2
    dump.write_bytes(good[:middle] + bytes([good[middle] ^ 0x01]) + good[middle + 1 :])
    message = failed(
        restore_database,
        backup_url=str(copy_dir),
        identity=str(tmp_path / "key.txt"),
        **common,
    )
    assert "age authentication" in message or "SHA-256" in message
    dump.write_bytes(good[: len(good) - 1000])
    message = failed(
        restore_database,
        backup_url=str(copy_dir),
        identity=str(tmp_path / "key.txt"),
        **common,
    )
    assert "truncated" in message
    assert marker_intact(target)

    # A custom-format archive, encrypted to DBOPS_AGE_RECIPIENTS, gives single tables back
    # with DBOPS_AGE_IDENTITY; a verify with the wrong key fails the run and records nothing.
    monkeypatch.setenv("DBOPS_AGE_RECIPIENTS", f"{recipients_file},{public}")
    custom_dir = tmp_path / "custom"
    custom = completed(
        backup_database, database_url=sample_db, backup_url=str(custom_dir), format="custom"
    )
    assert custom.dump.name.endswith(".dump.age")
    assert set(custom.encryption.recipients) == set(manifest.encryption.recipients)
    assert (custom_dir / custom.dump.name).read_bytes().startswith(AGE_MAGIC)
    message = failed(
        verify_backup,
        source=custom.backup_id,
        database_url=sample_db,
        backup_url=str(custom_dir),
        identity=str(tmp_path / "wrong.txt"),
    )
    assert "not a recipient" in message
    assert not list(custom_dir.glob("*.verified.json"))
    monkeypatch.setenv("DBOPS_AGE_IDENTITY", str(tmp_path / "key.txt"))
    tables_into = new_database(pg, "tables")
    completed(
        restore_tables,
        source=custom.backup_id,
        tables=["public.User"],
        database_url=tables_into,
        backup_url=str(custom_dir),
    )
    assert (
        content_checksums(tables_into)["public.User"] == content_checksums(sample_db)["public.User"]
    )

    # A pg_dump killed half way leaves nothing, encrypted or not (age's end is no backup's).
    with monkeypatch.context() as patch:
        patch.setenv("PG_BIN_DIR", str(dying_pg_dump(tmp_path / "dying")))
        message = failed(
            backup_database,
            database_url=sample_db,
            backup_url=str(tmp_path / "cut"),
            encrypt_to=[public],
        )
    assert "pg_dump failed" in message and "no backup was stored" in message
    assert list((tmp_path / "cut").iterdir()) == []

    # The secret keys are in no parameter, state message, log or artifact of these runs.
    records = records_text(flow_run_ids() - before)
    assert "encrypted with age" in records  # the records were read
    assert f"age to {', '.join(manifest.encryption.recipients)}" in records  # the report
    assert secret not in records and wrong_secret not in records
    assert "AGE-SECRET-KEY" not in records


def test_bad_recipients_and_identities_are_refused_in_one_line_before_anything_is_written(
    sample_db, tmp_path
):
    backups = tmp_path / "backups"
    _, secret = keypair(tmp_path / "key.txt")
    (tmp_path / "keys.txt").write_text("# ops\nage1notakey\n")
    cases = [
        (
            ["backup", "--to", str(backups), "--encrypt-to", "age1qqqqbad"],
            "--encrypt-to 'age1qqqqbad'",
        ),
        (["backup", "--to", str(backups), "--encrypt-to", str(tmp_path / "keys.txt")], "line 2"),
        (["backup", "--to", str(backups), "--encrypt-to", secret], "secret key"),
        (["restore", "latest", "--from", str(backups), "--identity", str(tmp_path)], "identity"),
        (["restore", "latest", "--from", str(backups), "--identity", secret], "never the key"),
        (
            ["verify", "latest", "--from", str(backups), "--identity", str(tmp_path / "nokey")],
            "no such",
        ),
    ]
    for args, expected in cases:
        done = run_cli(*args, env={"DATABASE_URL": sample_db})
        assert done.returncode == 1, (args, done.stderr)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
        assert expected.lower() in lines[0].lower(), lines[0]
        assert secret not in done.stderr + done.stdout
    done = run_cli(
        "backup", "--to", str(backups), env={"DATABASE_URL": sample_db, "DBOPS_AGE_RECIPIENTS": "x"}
    )
    assert done.returncode == 1 and "DBOPS_AGE_RECIPIENTS" in done.stderr
    assert not backups.exists()  # nothing written

"""prefect-aws blocks as S3 credentials and as a backup location, against moto's S3 server: with
the environment's AWS keys and endpoint removed, only the blocks can make a backup land."""

from __future__ import annotations

import pytest

from flows.backup import backup_database
from tasks.core.settings import Settings
from tasks.storage.options import S3Options


@pytest.fixture
def no_aws_environment(s3_server, bucket, s3_client, monkeypatch):
    """boto3's own chain finds nothing: no keys, no endpoint, no config files (the test's own
    client and bucket were made before)."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT_URL",
        "AWS_PROFILE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3_server


@pytest.fixture
def credentials_block(prefect, no_aws_environment) -> str:
    from prefect_aws import AwsCredentials
    from prefect_aws.client_parameters import AwsClientParameters

    AwsCredentials(
        aws_access_key_id="testing",
        aws_secret_access_key="testing-secret-key",
        region_name="us-east-1",
        aws_client_parameters=AwsClientParameters(endpoint_url=no_aws_environment),
    ).save("dbops-test-aws", overwrite=True)
    return "dbops-test-aws"


def keys(s3_client, bucket: str, prefix: str) -> list[str]:
    listed = s3_client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def test_an_aws_credentials_block_is_what_reaches_s3(
    credentials_block, sample_db, bucket, s3_client, monkeypatch
):
    without = backup_database(
        database_url=sample_db, backup_url=f"s3://{bucket}/env", retries=0, return_state=True
    )
    assert without.is_failed() and keys(s3_client, bucket, "env/") == []

    manifest = backup_database(
        database_url=sample_db,
        backup_url=f"s3://{bucket}/block",
        s3=S3Options(credentials_block=credentials_block),
        retries=0,
    )
    assert f"block/{manifest.dump.name}" in keys(s3_client, bucket, "block/")

    monkeypatch.setenv("DBOPS_AWS_CREDENTIALS_BLOCK", credentials_block)  # the same, by setting
    listed = Settings.load(None, f"s3://{bucket}/block").destination().list()
    assert manifest.dump.name in {item.name for item in listed}


def test_an_s3_bucket_block_is_a_backup_location(credentials_block, sample_db, bucket, s3_client):
    from prefect_aws import AwsCredentials, S3Bucket

    S3Bucket(
        bucket_name=bucket,
        bucket_folder="nightly/app",
        credentials=AwsCredentials.load(credentials_block),
    ).save("dbops-test-bucket", overwrite=True)
    manifest = backup_database(
        database_url=sample_db, backup_url="s3-bucket://dbops-test-bucket", retries=0
    )
    stored = keys(s3_client, bucket, "nightly/app/")
    assert f"nightly/app/{manifest.dump.name}" in stored
    assert f"nightly/app/{manifest.backup_id}.manifest.json" in stored
    destination = Settings.load(None, "s3-bucket://dbops-test-bucket").destination()
    assert destination.url == f"s3://{bucket}/nightly/app"
    missing = Settings.load(None, "s3-bucket://no-such-block")
    with pytest.raises(Exception, match="S3Bucket block 'no-such-block' not found"):
        missing.destination()

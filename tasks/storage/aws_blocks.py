"""Prefect-aws blocks that teams already keep: `AwsCredentials` for S3, `S3Bucket` as a place.

Beside the environment (boto3's chain: AWS_* variables, profiles, instance roles), a backup
location may use an `AwsCredentials` block by name (`DBOPS_AWS_CREDENTIALS_BLOCK`, or the
`credentials_block` S3 option), and a whole location may be an `S3Bucket` block:
`BACKUP_URL=s3-bucket://BLOCK` stands for `s3://<bucket_name>/<bucket_folder>` with that
block's credentials. The keys stay in the blocks: never in a URL, a parameter or a log.
"""

from __future__ import annotations

from typing import Any

from tasks.core.errors import ConfigError, NotFoundError
from tasks.storage.options import S3Options

S3_BUCKET_PREFIX = "s3-bucket://"


def _load(block_type: str, name: str) -> Any:
    try:
        from prefect_aws import AwsCredentials, S3Bucket
    except ImportError:  # pragma: no cover - a dependency of dbops
        raise ConfigError("the prefect-aws package is not installed: uv add prefect-aws") from None
    block_class = {"AwsCredentials": AwsCredentials, "S3Bucket": S3Bucket}[block_type]
    try:
        return block_class.load(name)
    except ValueError:
        raise NotFoundError(
            f"Prefect {block_type} block {name!r} not found; create it in the UI under Blocks "
            f"or with {block_type}(...).save({name!r})"
        ) from None


def s3_client(options: S3Options) -> Any:
    """A boto3 S3 client: from the named AwsCredentials block, else boto3's default chain.

    An endpoint given in the options (AWS_ENDPOINT_URL_S3, --endpoint-url) wins over the
    block's `aws_client_parameters.endpoint_url`.
    """
    import boto3

    if not options.credentials_block:
        return boto3.session.Session().client("s3", endpoint_url=options.endpoint_url)
    credentials = _load("AwsCredentials", options.credentials_block)
    endpoint = options.endpoint_url or credentials.aws_client_parameters.endpoint_url
    return credentials.get_boto3_session().client("s3", endpoint_url=endpoint)


def resolve_s3_bucket(url: str, options: S3Options) -> tuple[str, S3Options]:
    """`s3-bucket://BLOCK` → `s3://bucket/folder` and options naming the block's credentials."""
    if not url.startswith(S3_BUCKET_PREFIX):
        return url, options
    name = url[len(S3_BUCKET_PREFIX) :].strip("/")
    bucket = _load("S3Bucket", name)
    folder = (bucket.bucket_folder or "").strip("/")
    resolved = f"s3://{bucket.bucket_name}" + (f"/{folder}" if folder else "")
    credentials_name = getattr(bucket.credentials, "_block_document_name", None)
    if credentials_name and not options.credentials_block:
        options = options.model_copy(update={"credentials_block": credentials_name})
    elif bucket.credentials is not None and not options.credentials_block:
        raise ConfigError(
            f"the S3Bucket block {name!r} has credentials that are not a saved AwsCredentials "
            "block; save them as one and reference it by name"
        )
    return resolved, options

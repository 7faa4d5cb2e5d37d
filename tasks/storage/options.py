"""S3 options, apart from the storage code: the command line and the flows' parameter types
read them without importing boto3 (about 0.7 s), so bad input is refused at once."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class S3Options(BaseModel):
    """What pgBackRest/WAL-G users expect to set for an S3 or S3-compatible store."""

    endpoint_url: str | None = Field(None, description="S3-compatible endpoint (MinIO, R2, ...)")
    sse: Literal["AES256", "aws:kms"] | None = Field(None, description="Server-side encryption")
    sse_kms_key_id: str | None = Field(None, description="KMS key id when sse is aws:kms")
    storage_class: str | None = Field(None, description="e.g. STANDARD_IA, GLACIER_IR")
    tags: dict[str, str] = Field(default_factory=dict, description="Object tags")
    object_lock: Literal["governance", "compliance"] | None = Field(
        None, description="S3 Object Lock mode of every object written (needs a lock bucket)"
    )
    object_lock_days: int | None = Field(
        None, ge=1, description="days each written object stays locked (with object_lock)"
    )
    credentials_block: str | None = Field(
        None, description="name of a prefect-aws AwsCredentials block; default boto3's chain"
    )

    def merged(self, **overrides: object) -> S3Options:
        """Flags override the environment; None means 'not given'."""
        given = {k: v for k, v in overrides.items() if v not in (None, {}, "")}
        return self.model_copy(update=given)

"""S3 Object Lock: write every object of a backup with a retention date, check the bucket can.

A locked object version cannot be deleted or overwritten before its retain-until date
(governance mode: except by someone holding s3:BypassGovernanceRetention; compliance
mode: by nobody). dbops never rewrites a backup object, so locking costs it nothing.
Object Lock needs a versioned bucket created with Object Lock enabled, and S3 refuses a
locked PutObject/UploadPart without a Content-MD5 or checksum header: `content_md5`.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import botocore.exceptions

from tasks.core.errors import DbopsError, ParameterError

LockMode = Literal["governance", "compliance"]


class ObjectLockedError(DbopsError):
    """S3 refused to delete an object version its Object Lock retention still protects."""

    def __init__(self, url: str, until: datetime | None) -> None:
        when = f" until {until:%Y-%m-%d %H:%M} UTC" if until else ""
        super().__init__(f"{url} is locked{when} (S3 Object Lock); it stays until then")
        self.until = until


class LockUnknownError(DbopsError):
    """Whether the bucket can lock objects could not be read (permissions, the store)."""


def check_lock_request(mode: str | None, days: int | None) -> None:
    """Both or neither: a mode without days (or days without a mode) locks nothing useful."""
    if mode is not None and mode not in ("governance", "compliance"):
        raise ParameterError("object_lock", f"{mode!r} is unknown; use governance or compliance")
    if mode and not days:
        raise ParameterError("object_lock_days", "must be given (1 or more) with object_lock")
    if days is not None and days < 1:
        raise ParameterError("object_lock_days", f"is {days}; give 1 or more days")
    if days and not mode:
        raise ParameterError("object_lock", "must be given (governance or compliance) with days")


def lock_args(mode: str | None, days: int | None, now: datetime | None = None) -> dict[str, Any]:
    """The PutObject/CreateMultipartUpload arguments that lock an object for `days` days."""
    if not mode or not days:
        return {}
    until = (now or datetime.now(UTC)) + timedelta(days=days)
    if until.microsecond:  # stores keep whole seconds: round up so the lock is never short
        until = until.replace(microsecond=0) + timedelta(seconds=1)
    return {"ObjectLockMode": mode.upper(), "ObjectLockRetainUntilDate": until}


def content_md5(data: bytes | bytearray | memoryview) -> str:
    """The Content-MD5 header S3 demands of a locked write (any S3-compatible store takes it)."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode()


def require_lock_enabled(client: Any, bucket: str) -> None:
    """One clear line, before anything is written, when the bucket cannot lock objects."""
    try:
        config = client.get_object_lock_configuration(Bucket=bucket)
        enabled = config.get("ObjectLockConfiguration", {}).get("ObjectLockEnabled") == "Enabled"
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code not in ("ObjectLockConfigurationNotFoundError", "NotImplemented"):
            raise LockUnknownError(
                f"cannot read the Object Lock configuration of S3 bucket {bucket!r} ({code}); "
                "grant s3:GetBucketObjectLockConfiguration to the backup credentials"
            ) from None
        enabled = False
    if not enabled:
        raise DbopsError(
            f"S3 bucket {bucket!r} does not have Object Lock enabled, so --object-lock cannot "
            "protect its backups; create a bucket with Object Lock enabled "
            "(aws s3api create-bucket --object-lock-enabled-for-bucket) or drop --object-lock"
        )


def retention_of(head: dict[str, Any], now: datetime | None = None) -> datetime | None:
    """The retain-until date of a HeadObject answer while it is in the future, else None."""
    until = head.get("ObjectLockRetainUntilDate")
    if not head.get("ObjectLockMode") or until is None:
        return None
    if isinstance(until, str):
        until = datetime.fromisoformat(until.replace("Z", "+00:00"))
    if until.tzinfo is None:
        until = until.replace(tzinfo=UTC)
    return until if until > (now or datetime.now(UTC)) else None

"""One storage abstraction over S3 (and S3-compatible stores) and local directories.

Nothing else in dbops knows which one it is talking to. Writes are atomic: a
local object is written under a temporary name and renamed; an S3 object is one
PutObject, or a multipart upload (`multipart.py`: growing parts, a few in flight)
completed on success and aborted on any failure.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, Protocol

import botocore.exceptions
import smart_open
from pydantic import BaseModel

from tasks.core.errors import DbopsError, TransientError
from tasks.storage.aws_blocks import s3_client
from tasks.storage.multipart import DEFAULT_SCHEDULE, MultipartWriter, PartSchedule
from tasks.storage.object_lock import (
    LockUnknownError,
    ObjectLockedError,
    content_md5,
    lock_args,
    require_lock_enabled,
    retention_of,
)
from tasks.storage.options import S3Options

PARTIAL_MARK = ".partial-"


@dataclass(frozen=True)
class StoredObject:
    name: str
    size: int
    modified: datetime
    etag: str | None = None  # S3: changes whenever the object is written again
    mtime_ns: int | None = None  # a local file: with size and inode, its version
    inode: int | None = None

    @property
    def version(self) -> str | None:
        """What changes when the object is written again (None: unknown, never cached)."""
        if self.etag:
            return self.etag
        if self.mtime_ns is not None:
            return f"{self.size}:{self.mtime_ns}:{self.inode}"
        return None


class ObjectReader(Protocol):
    """What reading a small metadata object needs (a Destination, or its metadata cache)."""

    def read_bytes(self, name: str) -> bytes: ...

    def url_for(self, name: str) -> str: ...


class IncompleteWrite(BaseModel):
    """An object never completed: an S3 multipart upload or a local `.partial-` file."""

    key: str
    upload_id: str | None = None
    since: datetime


class Destination:
    """A place that holds backups: open for streaming write/read, list, delete."""

    url: str

    @staticmethod
    def from_url(url: str, s3: S3Options | None = None) -> Destination:
        if url.startswith("s3://"):
            return S3Destination(url, s3 or S3Options())
        lock = s3.object_lock if s3 else None
        if "://" in url and not url.startswith("file://"):
            scheme = url.split("://", 1)[0]
            raise DbopsError(
                f"backup location scheme {scheme!r} is not supported; "
                "use s3://bucket/prefix or a local directory"
            )
        return LocalDestination(url.removeprefix("file://"), lock)

    def same_place(self, other: Destination) -> bool:
        """Whether both name the same backups (a copy onto itself would rewrite them)."""
        return type(self) is type(other) and self.url == other.url

    def locked_until(self, name: str) -> datetime | None:
        """When an Object Lock retention on `name` ends, if it is still running."""
        return None

    def lockable(self) -> bool:
        """Whether objects here can carry an Object Lock (else nothing here is locked)."""
        return False

    def check_writable(self) -> None:
        raise NotImplementedError

    def open_write(self, name: str) -> contextlib.AbstractContextManager[IO[bytes]]:
        raise NotImplementedError

    def open_read(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def list(self) -> list[StoredObject]:
        raise NotImplementedError

    def delete(self, name: str) -> None:
        raise NotImplementedError

    def exists(self, name: str) -> bool:
        return any(obj.name == name for obj in self.list())

    def url_for(self, name: str) -> str:
        raise NotImplementedError

    def incomplete_writes(self) -> list[IncompleteWrite]:
        """Writes that were started and never completed nor aborted (killed processes)."""
        raise NotImplementedError

    def abort_incomplete_write(self, write: IncompleteWrite) -> None:
        raise NotImplementedError

    def create_if_absent(self, name: str, data: bytes) -> bool:
        """Write `name` only if nothing has that name (never check-then-write); False if taken."""
        raise NotImplementedError

    def read_bytes(self, name: str) -> bytes:
        with self.open_read(name) as stream:
            return stream.read()

    def read_versioned(self, name: str) -> tuple[bytes, str | None]:
        """The object's bytes and the version of exactly those bytes (as `list()` gives it)."""
        return self.read_bytes(name), None

    @property
    def cache_key(self) -> str:
        """Names this place among all others (a metadata cache's file is per place)."""
        return self.url

    def write_bytes(self, name: str, data: bytes) -> None:
        with self.open_write(name) as stream:
            stream.write(data)


class LocalDestination(Destination):
    def __init__(self, path: str, lock: str | None = None) -> None:
        self.root = Path(path).expanduser()
        self.url = str(self.root.resolve())
        self.lock = lock

    def check_writable(self) -> None:
        if self.lock:
            raise DbopsError(
                f"{self.url} is a local directory, which S3 Object Lock cannot protect; "
                "lock backups in an S3 bucket with Object Lock enabled or drop --object-lock"
            )
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DbopsError(
                f"cannot create backup directory {self.url}: {exc.strerror}; "
                "choose a writable --to directory"
            ) from None
        probe = self.root / f"{PARTIAL_MARK}probe-{uuid.uuid4().hex}"
        try:
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise DbopsError(
                f"cannot write to backup directory {self.url}: {exc.strerror}; "
                "fix its permissions or choose another --to directory"
            ) from None

    @contextlib.contextmanager
    def open_write(self, name: str) -> Iterator[IO[bytes]]:
        final = self._path(name)
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = final.with_name(f".{final.name}{PARTIAL_MARK}{uuid.uuid4().hex}")
        stream = open(temp, "wb")  # noqa: SIM115 - closed below on every path
        try:
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
            stream.close()
            os.replace(temp, final)
            _fsync_dir(final.parent)
        except BaseException:
            stream.close()
            temp.unlink(missing_ok=True)
            raise

    def open_read(self, name: str) -> IO[bytes]:
        path = self._path(name)
        try:
            return open(path, "rb")  # noqa: SIM115 - caller closes
        except FileNotFoundError:
            raise DbopsError(f"{path} does not exist; `dbops list` shows the backups") from None

    def list(self) -> list[StoredObject]:
        if not self.root.is_dir():
            return []
        objects = []
        for path in self.root.iterdir():
            if not path.is_file() or PARTIAL_MARK in path.name:
                continue
            stat = path.stat()
            modified = datetime.fromtimestamp(stat.st_mtime, UTC)
            objects.append(
                StoredObject(
                    path.name, stat.st_size, modified, mtime_ns=stat.st_mtime_ns, inode=stat.st_ino
                )
            )
        return objects

    def read_versioned(self, name: str) -> tuple[bytes, str | None]:
        with self.open_read(name) as stream:
            stat = os.fstat(stream.fileno())  # the file read, even if renamed over since
            data = stream.read()
        return data, f"{stat.st_size}:{stat.st_mtime_ns}:{stat.st_ino}"

    def exists(self, name: str) -> bool:
        return self._path(name).is_file()

    def delete(self, name: str) -> None:
        self._path(name).unlink(missing_ok=True)

    def url_for(self, name: str) -> str:
        return str(self._path(name).resolve())

    def incomplete_writes(self) -> list[IncompleteWrite]:
        if not self.root.is_dir():
            return []
        return [
            IncompleteWrite(
                key=entry.name, since=datetime.fromtimestamp(entry.stat().st_mtime, UTC)
            )
            for entry in os.scandir(self.root)
            if PARTIAL_MARK in entry.name and entry.is_file()
        ]

    def abort_incomplete_write(self, write: IncompleteWrite) -> None:
        (self.root / write.key).unlink(missing_ok=True)

    def create_if_absent(self, name: str, data: bytes) -> bool:
        self.check_writable()
        final = self._path(name)
        temp = final.with_name(f".{name}{PARTIAL_MARK}{uuid.uuid4().hex}")
        try:
            with open(temp, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            try:
                os.link(temp, final)  # atomic, and fails when `final` exists: never replaces
            except FileExistsError:
                return False
            _fsync_dir(final.parent)
            return True
        finally:
            temp.unlink(missing_ok=True)

    def _path(self, name: str) -> Path:
        if "/" in name or name in ("", ".", ".."):
            raise DbopsError(f"invalid object name {name!r}")
        return self.root / name


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class S3Destination(Destination):
    # Part sizes and parts in flight of uploads (tests and benchmarks use others).
    schedule: PartSchedule = DEFAULT_SCHEDULE

    def __init__(self, url: str, options: S3Options) -> None:
        rest = url[len("s3://") :]
        bucket, _, prefix = rest.partition("/")
        if not bucket:
            raise DbopsError(f"{url!r} names no bucket; use s3://bucket/prefix")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.options = options
        self.url = f"s3://{bucket}/{self.prefix}".rstrip("/")
        self.client = s3_client(options)  # boto3's chain, or an AwsCredentials block

    def key(self, name: str) -> str:
        return f"{self.prefix}/{name}" if self.prefix else name

    @property
    def cache_key(self) -> str:
        return f"{self.options.endpoint_url or 'aws'} {self.url}"

    def url_for(self, name: str) -> str:
        return f"s3://{self.bucket}/{self.key(name)}"

    def check_writable(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except botocore.exceptions.ClientError as exc:
            raise _explain_s3_error(exc, self.bucket) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise _explain_s3_error(exc, self.bucket) from None
        if self.options.object_lock:
            require_lock_enabled(self.client, self.bucket)

    def _ensure_locked(self, key: str, args: dict[str, Any]) -> None:
        """Some S3-compatible stores (moto among them) drop the lock of a multipart upload's
        CreateMultipartUpload: the completed object gets its retention set explicitly."""
        if retention_of(self.client.head_object(Bucket=self.bucket, Key=key)) is None:
            self.client.put_object_retention(
                Bucket=self.bucket,
                Key=key,
                Retention={
                    "Mode": args["ObjectLockMode"],
                    "RetainUntilDate": args["ObjectLockRetainUntilDate"],
                },
            )

    def same_place(self, other: Destination) -> bool:
        return (
            isinstance(other, S3Destination)
            and (self.bucket, self.prefix) == (other.bucket, other.prefix)
            and self.options.endpoint_url == other.options.endpoint_url
        )

    def _write_args(self) -> dict[str, Any]:
        args: dict[str, Any] = {}
        if self.options.sse:
            args["ServerSideEncryption"] = self.options.sse
        if self.options.sse_kms_key_id:
            args["SSEKMSKeyId"] = self.options.sse_kms_key_id
        if self.options.storage_class:
            args["StorageClass"] = self.options.storage_class
        if self.options.tags:
            from urllib.parse import urlencode

            args["Tagging"] = urlencode(self.options.tags)
        args.update(lock_args(self.options.object_lock, self.options.object_lock_days))
        return args

    @contextlib.contextmanager
    def open_write(self, name: str) -> Iterator[IO[bytes]]:
        args = self._write_args()
        writer = MultipartWriter(self.client, self.bucket, self.key(name), args, self.schedule)
        # Completed only when the block ends cleanly; any failure, including one while the
        # last parts upload or the upload completes, aborts it: no object, no parts kept.
        try:
            yield writer  # type: ignore[misc]
            writer.complete()
            if writer.upload_id is not None and "ObjectLockMode" in args:
                self._ensure_locked(self.key(name), args)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                writer.abort()
            if isinstance(exc, botocore.exceptions.ClientError | botocore.exceptions.BotoCoreError):
                raise _explain_s3_error(exc, self.bucket) from None
            raise

    def open_read(self, name: str) -> IO[bytes]:
        try:
            return smart_open.open(
                self.url_for(name),
                "rb",
                compression="disable",
                transport_params={"client": self.client},
            )
        except (OSError, botocore.exceptions.ClientError) as exc:
            if "NoSuchKey" in str(exc) or "404" in str(exc):
                raise DbopsError(
                    f"{self.url_for(name)} does not exist; `dbops list` shows the backups"
                ) from None
            raise _explain_s3_error(exc, self.bucket) from None

    def list(self) -> list[StoredObject]:
        prefix = f"{self.prefix}/" if self.prefix else ""
        objects = []
        try:
            for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=prefix, Delimiter="/"
            ):
                for item in page.get("Contents", []):
                    name = item["Key"][len(prefix) :]
                    objects.append(
                        StoredObject(
                            name, item["Size"], item["LastModified"], etag=item.get("ETag")
                        )
                    )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise _explain_s3_error(exc, self.bucket) from None
        return objects

    def read_versioned(self, name: str) -> tuple[bytes, str | None]:
        """One GetObject: the bytes with the ETag of exactly those bytes."""
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(name))
            data = response["Body"].read()
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                raise DbopsError(
                    f"{self.url_for(name)} does not exist; `dbops list` shows the backups"
                ) from None
            raise _explain_s3_error(exc, self.bucket) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise _explain_s3_error(exc, self.bucket) from None
        return data, response.get("ETag")

    def exists(self, name: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self.key(name))
            return True
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise _explain_s3_error(exc, self.bucket) from None

    def lockable(self) -> bool:
        try:
            require_lock_enabled(self.client, self.bucket)
        except LockUnknownError:
            return True  # cannot tell: each object's own retention is asked instead
        except DbopsError:
            return False
        return True

    def locked_until(self, name: str) -> datetime | None:
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=self.key(name))
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise _explain_s3_error(exc, self.bucket) from None
        return retention_of(head)

    def delete(self, name: str) -> None:
        """Delete the object; a locked one's version itself (a delete marker would only hide
        a backup that still exists), which S3 refuses while its retention runs."""
        key = self.key(name)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return
            raise
        if not head.get("ObjectLockMode") or not head.get("VersionId"):
            self.client.delete_object(Bucket=self.bucket, Key=key)
            return
        try:
            self.client.delete_object(Bucket=self.bucket, Key=key, VersionId=head["VersionId"])
        except botocore.exceptions.ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "AccessDenied":
                until = head.get("ObjectLockRetainUntilDate")
                raise ObjectLockedError(self.url_for(name), until) from None
            raise

    def incomplete_writes(self) -> list[IncompleteWrite]:
        """Multipart uploads under the prefix that were never completed or aborted."""
        prefix = f"{self.prefix}/" if self.prefix else ""
        found: list[IncompleteWrite] = []
        try:
            for page in self.client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=prefix
            ):
                found += [
                    IncompleteWrite(key=u["Key"], upload_id=u["UploadId"], since=u["Initiated"])
                    for u in page.get("Uploads", [])
                ]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as exc:
            raise DbopsError(
                f"listing incomplete uploads in s3://{self.bucket} failed "
                f"({type(exc).__name__}); grant s3:ListBucketMultipartUploads or skip with "
                "abort_uploads_older_than_hours left empty"
            ) from None
        return found

    def abort_incomplete_write(self, write: IncompleteWrite) -> None:
        try:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=write.key, UploadId=write.upload_id
            )
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code != "NoSuchUpload":
                raise DbopsError(
                    f"aborting the upload of s3://{self.bucket}/{write.key} failed ({code}); "
                    "grant s3:AbortMultipartUpload"
                ) from None

    def create_if_absent(self, name: str, data: bytes) -> bool:
        try:
            self.client.put_object(
                Bucket=self.bucket,
                Key=self.key(name),
                Body=data,
                IfNoneMatch="*",
                **self._write_args(),
                **({"ContentMD5": content_md5(data)} if self.options.object_lock else {}),
            )
        except botocore.exceptions.ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False  # taken; a conflict is a concurrent create of the same name
            if code == "NotImplemented":
                raise DbopsError(
                    f"{self.url} does not support conditional writes (If-None-Match), which "
                    "dbops needs to give every backup its own id; use a store that does"
                ) from None
            raise _explain_s3_error(exc, self.bucket) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise _explain_s3_error(exc, self.bucket) from None
        return True


def _explain_s3_error(exc: Exception, bucket: str) -> DbopsError:
    code = ""
    status = 0
    if isinstance(exc, botocore.exceptions.ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    if code in ("NoSuchBucket", "404") or (status == 404 and not code):
        return DbopsError(
            f"S3 bucket {bucket!r} does not exist; create it or fix BACKUP_URL / --to"
        )
    if code in ("AccessDenied", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return DbopsError(
            f"access to S3 bucket {bucket!r} denied ({code}); check the AWS credentials "
            "and the bucket policy"
        )
    if isinstance(exc, botocore.exceptions.NoCredentialsError):
        return DbopsError(
            "no AWS credentials found; set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        )
    if isinstance(exc, botocore.exceptions.EndpointConnectionError) or status >= 500:
        return TransientError(f"S3 unreachable for bucket {bucket!r}: {exc}")
    return DbopsError(f"S3 error on bucket {bucket!r}: {code or type(exc).__name__}: {exc}")

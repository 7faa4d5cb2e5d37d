"""S3 multipart uploads of unknown length: growing parts, a few in flight, all or nothing.

A dump is streamed, so its size is known only at the end. S3 allows 10,000 parts
of at most 5 GiB, and the object itself up to 5 TiB; a fixed 16 MiB part would stop
a dump at ~156 GiB, hours in. `PartSchedule` grows the part size as parts are
written, so small dumps keep small parts (little memory, quick retries) and the
largest object S3 accepts still fits in 10,000 parts.

Memory: at most `in_flight` parts are uploading while the next one fills, so the
writer holds at most (in_flight + 1) x the current part size (with the defaults,
4 x 16 MiB = 64 MiB for any dump under 7.8 GiB, and 4 GiB only past ~3 TiB).
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tasks.storage.object_lock import content_md5

MiB = 1024 * 1024
GiB = 1024 * MiB
S3_MAX_PARTS = 10_000
S3_MAX_PART_SIZE = 5 * GiB
S3_MIN_PART_SIZE = 5 * MiB
S3_MAX_OBJECT_SIZE = 5 * 1024 * GiB


@dataclass(frozen=True)
class PartSchedule:
    """Part n (from 1) is `first` bytes doubled once per `double_every` parts, up to `largest`.

    Defaults: 16 MiB for parts 1-500, 32 MiB for 501-1000, ... 512 MiB for 2501-3000,
    then 1 GiB up to part 10,000. That holds 500 x 16 MiB x 63 + 7,000 x 1 GiB ~ 7.3 TiB,
    above S3's 5 TiB object limit, while the largest part stays a fifth of S3's 5 GiB
    maximum (1 GiB is the smallest power of two that fits 5 TiB in 10,000 parts).
    """

    first: int = 16 * MiB
    double_every: int = 500
    largest: int = 1 * GiB
    in_flight: int = 3

    def __post_init__(self) -> None:
        if not S3_MIN_PART_SIZE <= self.first <= self.largest <= S3_MAX_PART_SIZE:
            raise ValueError("part sizes must be within S3's 5 MiB .. 5 GiB")
        if self.double_every < 1 or self.in_flight < 1:
            raise ValueError("double_every and in_flight must be at least 1")

    def part_size(self, number: int) -> int:
        """The size of part `number` (1-based); every part but the last has exactly this size."""
        return min(self.first << ((number - 1) // self.double_every), self.largest)

    def capacity(self) -> int:
        """The largest object this schedule uploads within S3's 10,000 parts."""
        return sum(self.part_size(n) for n in range(1, S3_MAX_PARTS + 1))

    def memory_bound(self, parts: int = S3_MAX_PARTS) -> int:
        """Bytes the writer holds at most once `parts` parts are under way."""
        return (self.in_flight + 1) * self.part_size(parts)


DEFAULT_SCHEDULE = PartSchedule()


class MultipartWriter(io.RawIOBase):
    """A write-only stream that becomes one S3 object on `complete()`, or none on `abort()`.

    An object smaller than the first part is sent with one PutObject. Otherwise parts
    upload on a small thread pool; a failed part makes the next `write` or `complete`
    raise that part's error (the caller then aborts). Nothing is visible under the key
    until `complete()` succeeds.
    """

    def __init__(
        self,
        client: Any,
        bucket: str,
        key: str,
        extra_args: dict[str, Any] | None = None,
        schedule: PartSchedule = DEFAULT_SCHEDULE,
    ) -> None:
        super().__init__()
        self.client = client
        self.bucket = bucket
        self.key = key
        self.extra_args = dict(extra_args or {})
        self.schedule = schedule
        self.upload_id: str | None = None
        self.size = 0
        self.peak_buffered = 0
        self._buffer = bytearray()
        self._number = 1
        self._futures: list[Future[dict[str, Any]]] = []
        self._slots = threading.BoundedSemaphore(schedule.in_flight)
        self._buffered = 0
        self._lock = threading.Lock()
        self._error: BaseException | None = None
        self._pool: ThreadPoolExecutor | None = None

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        written = len(view)
        while view:
            self._raise_failure()
            room = self.schedule.part_size(self._number) - len(self._buffer)
            self._buffer += view[:room]
            self._track(len(view[:room]))
            view = view[room:]
            if len(self._buffer) == self.schedule.part_size(self._number):
                self._send_part()
        self.size += written
        return written

    def complete(self) -> None:
        """Upload what is left and make the object visible; raises if any part failed."""
        if self.upload_id is None:
            body = bytes(self._buffer)
            self.client.put_object(
                Bucket=self.bucket, Key=self.key, Body=body, **self.extra_args, **self._md5(body)
            )
            self._buffer = bytearray()
            return
        if self._buffer:
            self._send_part()
        parts = [future.result() for future in self._futures]
        self._shutdown(cancel=False)
        self.client.complete_multipart_upload(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            MultipartUpload={"Parts": parts},
        )

    def abort(self) -> None:
        """Stop the parts under way, then abort the upload so S3 keeps none of them."""
        self._buffer = bytearray()
        self._shutdown(cancel=True)
        if self.upload_id is not None:
            self.client.abort_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=self.upload_id
            )

    # -- internals -----------------------------------------------------------------------

    def _md5(self, body: bytes | bytearray) -> dict[str, str]:
        """S3 refuses a locked object's data without Content-MD5 (or a checksum)."""
        return {"ContentMD5": content_md5(body)} if "ObjectLockMode" in self.extra_args else {}

    def _send_part(self) -> None:
        if self.upload_id is None:
            created = self.client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, **self.extra_args
            )
            self.upload_id = created["UploadId"]
            self._pool = ThreadPoolExecutor(
                self.schedule.in_flight, thread_name_prefix="dbops-part"
            )
        self._slots.acquire()  # at most in_flight parts uploading; a failure releases too
        self._raise_failure(release=True)
        assert self._pool is not None
        body, number = self._buffer, self._number
        self._buffer = bytearray()
        self._number += 1
        future = self._pool.submit(self._upload_part, number, body)
        future.add_done_callback(self._part_done(len(body)))
        self._futures.append(future)

    def _upload_part(self, number: int, body: bytearray) -> dict[str, Any]:
        response = self.client.upload_part(
            Bucket=self.bucket,
            Key=self.key,
            UploadId=self.upload_id,
            PartNumber=number,
            Body=body,
            **self._md5(body),
        )
        # As smart-open and the AWS CLI without a checksum algorithm: the ETag names the part.
        return {"PartNumber": number, "ETag": response["ETag"]}

    def _part_done(self, size: int) -> Callable[[Future[dict[str, Any]]], None]:
        def done(future: Future[dict[str, Any]]) -> None:
            if not future.cancelled() and future.exception() is not None:
                with self._lock:
                    self._error = self._error or future.exception()
            self._track(-size)
            self._slots.release()

        return done

    def _track(self, delta: int) -> None:
        with self._lock:
            self._buffered += delta
            self.peak_buffered = max(self.peak_buffered, self._buffered)

    def _raise_failure(self, release: bool = False) -> None:
        with self._lock:
            error = self._error
        if error is not None:
            if release:
                self._slots.release()
            raise error

    def _shutdown(self, cancel: bool) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=cancel)
            self._pool = None

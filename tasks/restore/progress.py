"""Progress of a restore or restore test: bytes of the stored dump read so far.

The restore reads the dump through its source's destination; `watched` hands it a destination
whose reader of that one object counts, so the restore code itself is unchanged. The count
feeds a Prefect progress artifact (`core/artifacts.py`) and, on a terminal, the CLI's bar.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import IO, Any

from tasks.backup.catalog import BackupSource
from tasks.core.artifacts import ProgressReporter


class CountingReader:
    """A binary stream that reports how many bytes were read through it."""

    def __init__(self, raw: IO[bytes], on_bytes: Callable[[int], None]) -> None:
        self.raw = raw
        self.on_bytes = on_bytes
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.count += len(data)
        self.on_bytes(self.count)
        return data

    def close(self) -> None:
        self.raw.close()

    def __enter__(self) -> CountingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class WatchedDestination:
    """The source's destination, whose readers of `names` count into one total (a parallel
    backup's objects are read by several threads at once); everything else as it was."""

    def __init__(self, inner: Any, names: set[str], on_bytes: Callable[[int], None]) -> None:
        self.inner = inner
        self.names = names
        self.on_bytes = on_bytes
        self.total = 0
        self.lock = threading.Lock()

    def _counter(self) -> Callable[[int], None]:
        last = [0]

        def seen(count: int) -> None:
            with self.lock:
                self.total += count - last[0]
                last[0] = count
                self.on_bytes(self.total)

        return seen

    def open_read(self, name: str) -> Any:
        stream = self.inner.open_read(name)
        return CountingReader(stream, self._counter()) if name in self.names else stream

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.inner, attribute)


def watched(source: BackupSource, description: str) -> tuple[BackupSource, ProgressReporter]:
    """The same source, reporting its stored bytes read (every object) to a progress artifact."""
    manifest = source.manifest
    size = manifest.stored_size if manifest else 0  # a foreign dump: unknown
    names = (
        {source.dump_name, *(obj.name for obj in manifest.objects)}
        if manifest
        else {source.dump_name}
    )
    progress = ProgressReporter(size, description)
    destination = WatchedDestination(source.destination, names, progress)
    return dataclasses.replace(source, destination=destination), progress  # type: ignore[arg-type]

"""Pieces every streaming path shares: the chunk size, a child's stderr tail, a hashing reader.

Backup, restore, restore tests and read-backs all move data in CHUNK_SIZE
pieces, so memory stays a few chunks whatever the size of a dump.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import IO

CHUNK_SIZE = 4 * 1024 * 1024


@dataclass
class StderrTail:
    """Keeps the last lines a child printed, for the error message."""

    stream: IO[bytes]
    lines: deque[str] = field(default_factory=lambda: deque(maxlen=20))

    def __post_init__(self) -> None:
        self.thread = threading.Thread(target=self._pump, daemon=True, name="stderr")
        self.thread.start()

    def _pump(self) -> None:
        for line in self.stream:
            self.lines.append(line.decode(errors="replace").rstrip())

    def last(self, secret: str | None, containing: tuple[str, ...] = ("",)) -> str:
        """The last non-empty line (that contains one of `containing`), secret masked."""
        self.thread.join(timeout=5)
        text = next(
            (
                line
                for line in reversed(self.lines)
                if line.strip() and any(mark in line for mark in containing)
            ),
            "",
        )
        return text.replace(secret, "***") if secret else text


class HashingReader:
    """Counts and hashes what is read through it: the stored bytes, before decompression."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.hasher = hashlib.sha256()
        self.size = 0

    def read(self, size: int) -> bytes:
        data = self.raw.read(size)
        self.hasher.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()

"""A local cache of a destination's small write-once objects (manifests, records), so listing
thousands of backups costs one listing plus the objects new since the last run.

Safe because an entry is found only under the version the listing gives now (the S3 ETag;
a local file's size, mtime and inode): an object deleted and re-created, or changed in any way,
misses and is read from the destination as without a cache. What is stored is the bytes as
read, with the version of exactly those bytes (from the GET itself), never a parsed object:
every reader parses and checks them as it would fresh ones. One JSON-lines file per
destination, replaced atomically (temp file + rename), holding only names still listed; a
cache that cannot be read or written is ignored (logged once at debug), never an error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

from tasks.storage.destinations import Destination, StoredObject

FORMAT = 1
logger = logging.getLogger(__name__)
_told: set[str] = set()  # what was logged already: once per process and kind


def _once(kind: str, message: str, *args: object) -> None:
    if kind not in _told:
        _told.add(kind)
        logger.debug(message, *args)


class MetadataCache:
    """Reads through to the destination; `read_bytes` answers from the cache when the object
    listed now has the version the cached bytes were read at."""

    def __init__(
        self, destination: Destination, listing: Iterable[StoredObject], directory: Path | None
    ) -> None:
        self.destination = destination
        self.listed = {obj.name: obj.version for obj in listing}
        self.path = directory / f"{_file_key(destination.cache_key)}.jsonl" if directory else None
        self.entries: dict[str, tuple[str, str]] = {}  # name -> (version, text)
        self.changed = False
        self.hits = 0
        self.misses = 0
        self._lock = threading.Lock()
        if self.path is not None:
            self._load(self.path)

    def url_for(self, name: str) -> str:
        return self.destination.url_for(name)

    def read_bytes(self, name: str) -> bytes:
        version = self.listed.get(name)
        entry = self.entries.get(name)
        if self.path is None or version is None:
            return self.destination.read_bytes(name)
        if entry is not None and entry[0] == version:
            self.hits += 1
            return entry[1].encode()
        data, read_version = self.destination.read_versioned(name)
        self.misses += 1
        with contextlib.suppress(UnicodeDecodeError):  # not text: not metadata, not kept
            text = data.decode()
            if read_version is not None:
                with self._lock:
                    self.entries[name] = (read_version, text)
                    self.changed = True
        return data

    def save(self) -> None:
        """Write the entries of objects still listed, if anything changed (an entry at another
        version than the listing's is never a hit, and is replaced when read again)."""
        if self.path is None:
            return
        kept = {n: e for n, e in self.entries.items() if n in self.listed}
        if not self.changed and len(kept) == len(self.entries):
            return
        lines = [json.dumps({"format": FORMAT, "destination": self.destination.cache_key})]
        lines += [json.dumps({"name": n, "version": v, "text": t}) for n, (v, t) in kept.items()]
        temp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex}")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with open(fd, "w", encoding="utf-8") as stream:
                stream.write("\n".join(lines) + "\n")
            os.replace(temp, self.path)
        except OSError as exc:
            temp.unlink(missing_ok=True)
            _once("write", "metadata cache %s not written: %s", self.path, exc)
            return
        self.entries, self.changed = kept, False

    def _load(self, path: Path) -> None:
        try:
            with open(path, encoding="utf-8") as stream:
                header = json.loads(stream.readline() or "null")
                if header != {"format": FORMAT, "destination": self.destination.cache_key}:
                    raise ValueError("another format or destination")
                for line in stream:
                    entry = json.loads(line)
                    self.entries[entry["name"]] = (entry["version"], entry["text"])
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _once("read", "metadata cache %s ignored and rebuilt: %s", path, exc)
            self.entries, self.changed = {}, True


@contextlib.contextmanager
def cached_reads(
    destination: Destination, listing: Iterable[StoredObject], directory: Path | None
) -> Iterator[MetadataCache]:
    """A read-through cache for one listing of `destination`, saved when the block ends
    (entries read before a failure are as valid as any)."""
    cache = MetadataCache(destination, listing, directory)
    try:
        yield cache
    finally:
        cache.save()


def _file_key(cache_key: str) -> str:
    return hashlib.sha256(cache_key.encode()).hexdigest()[:32]

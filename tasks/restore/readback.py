"""The one read-back: a stored object read in full, checked against what its manifest says.

Size and SHA-256 of the stored bytes, a full decompression (a truncated or
corrupt stream fails here, not at the first restore), and, for a dump, pg_dump's
own completion mark. Memory stays at a few chunks whatever the object's size.
"""

from __future__ import annotations

from dataclasses import dataclass

from tasks.backup.compression import DecompressingReader
from tasks.backup.encryption import AgeIdentity, decrypting
from tasks.backup.manifest import Manifest, ObjectInfo
from tasks.core.errors import BackupCheck, BackupFaultError
from tasks.core.streams import CHUNK_SIZE, HashingReader
from tasks.storage.destinations import Destination

# The last line pg_dump writes in plain format; a dump cut short has no such line.
PLAIN_DUMP_END = b"PostgreSQL database dump complete"
CUSTOM_DUMP_MAGIC = b"PGDMP"


@dataclass(frozen=True)
class ReadBack:
    """What a full read of an object saw."""

    stored_bytes: int
    raw_bytes: int
    sha256: str
    head: bytes
    tail: bytes


def check_stored(where: str, hashing: HashingReader, info: ObjectInfo, advice: str = "") -> None:
    """Raise BackupFaultError unless the bytes read through `hashing` are the object `info` says."""
    if hashing.size != info.size:
        raise BackupFaultError(
            f"{where} is {hashing.size} bytes but its manifest says {info.size}; the object is "
            f"truncated or replaced{advice}",
            BackupCheck.SHA256,
        )
    if hashing.hexdigest() != info.sha256:
        raise BackupFaultError(
            f"{where} fails its SHA-256 check (corrupt or replaced object){advice}",
            BackupCheck.SHA256,
        )


def read_back(
    destination: Destination,
    info: ObjectInfo,
    compression: str,
    encrypted: bool = False,
    identity: AgeIdentity | None = None,
) -> ReadBack:
    """Read the whole object; raise BackupFaultError unless it decompresses and matches `info`.

    An age-encrypted object is decrypted (and so authenticated) with `identity`."""
    where = destination.url_for(info.name)
    head, tail, raw_size = b"", b"", 0
    with (
        destination.open_read(info.name) as raw,
        decrypting(hashing := HashingReader(raw), identity, encrypted, where) as plain,
    ):
        reader = DecompressingReader(plain, compression)
        try:
            while chunk := reader.read_chunk(CHUNK_SIZE):
                if len(head) < 16:
                    head += chunk[: 16 - len(head)]
                tail = (tail + chunk)[-512:]
                raw_size += len(chunk)
        except BackupFaultError as exc:
            raise BackupFaultError(f"{where}: {exc}", exc.check) from None
    check_stored(where, hashing, info)
    return ReadBack(hashing.size, raw_size, hashing.hexdigest(), head, tail)


def read_back_dump(
    destination: Destination, manifest: Manifest, identity: AgeIdentity | None = None
) -> ReadBack:
    """The dump of a backup, read back in full, including pg_dump's completion mark; for a
    parallel backup also every data object (size, SHA-256, a whole compressed stream). An
    encrypted backup is decrypted with `identity`, which so proves it opens it."""
    archive = manifest.format in ("custom", "parallel")
    compression = "none" if archive else manifest.compression
    encrypted = manifest.encryption is not None
    seen = read_back(destination, manifest.dump, compression, encrypted, identity)
    for obj in manifest.objects:
        read_back(destination, obj, manifest.compression, encrypted, identity)
    complete = seen.head.startswith(CUSTOM_DUMP_MAGIC) if archive else PLAIN_DUMP_END in seen.tail
    if not complete:
        raise BackupFaultError(
            f"{destination.url_for(manifest.dump.name)} is not a complete pg_dump output",
            BackupCheck.ARCHIVE,
        )
    return seen

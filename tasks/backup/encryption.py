"""Client-side encryption with age: the one place backups are encrypted and decrypted.

The format is age's own (`age -d -i key.txt` reads what is stored), so a backup can be
restored with stock tools. The machine that backs up holds only public keys (recipients);
restore, verify and table restore take the identity (the secret key), which is read
in-process and never passed to a child, logged, or stored in a manifest or a parameter.

Two stream stages, used wherever a stored object is written or read:

* `encrypt_chunks(chunks, recipients)`: an iterator of (compressed) chunks in, an iterator
  of age ciphertext out. pyrage's `encrypt_io` pulls from a reader and pushes to a writer,
  so it runs on a thread between two bounded hand-overs: memory stays a few chunks.
* `DecryptingReader(raw, identity, where)`: `read(size)` gives plaintext; a damaged,
  truncated or extended ciphertext raises `BackupFaultError` (age authenticates every
  64 KiB chunk and marks the last one), an identity that is not a recipient `ConfigError`.

The stored SHA-256 is of the ciphertext, so read-backs and copies work unchanged and need
no key. Manifests record only fingerprints of the recipients (`Encryption`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Literal

from pydantic import BaseModel, Field

from tasks.core.errors import BackupCheck, BackupFaultError, ConfigError, ParameterError

AGE_SUFFIX = ".age"
SECRET_PREFIX = "secret://"
SECRET_KEY_PREFIX = "AGE-SECRET-KEY-"
SSH_KEY_TYPES = ("ssh-ed25519", "ssh-rsa")
# Ciphertext handed over at a time, and how many hand-overs wait: memory stays bounded.
HANDOVER_BYTES = 1024 * 1024
HANDOVER_DEPTH = 4
_POLL_SECONDS = 0.2


class Encryption(BaseModel):
    """What a manifest says about encryption: age, to which recipients (fingerprints only)."""

    method: Literal["age"] = "age"
    recipients: list[str] = Field(
        default_factory=list,
        description="sha256: fingerprints of the recipients' public keys; empty when unknown",
    )


def _normal_key(key: str) -> str:
    """An ssh key without its comment; an age key as it is."""
    parts = key.split()
    return " ".join(parts[:2]) if parts and parts[0] in SSH_KEY_TYPES else key.strip()


def fingerprint(key: str) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its SHA-256."""
    return "sha256:" + hashlib.sha256(_normal_key(key).encode()).hexdigest()[:16]


def _recipient(key: str) -> Any:
    import pyrage

    if key.startswith(SSH_KEY_TYPES):
        return pyrage.ssh.Recipient.from_str(_normal_key(key))
    return pyrage.x25519.Recipient.from_str(key)


@dataclass(frozen=True)
class Recipients:
    """Public keys a backup is encrypted to; any one of their identities can decrypt it."""

    keys: tuple[str, ...]

    @property
    def fingerprints(self) -> list[str]:
        return [fingerprint(k) for k in self.keys]

    def encryption(self) -> Encryption:
        return Encryption(recipients=self.fingerprints)

    def objects(self) -> list[Any]:
        return [_recipient(k) for k in self.keys]


def _refuse(parameter: str, problem: str) -> ParameterError:
    return ParameterError(
        parameter,
        f"{problem}; give an age public key (age1...), an ssh-ed25519/ssh-rsa public key, or "
        "a file of them, one per line (`age-keygen -y key.txt` prints the public key)",
    )


def _check_key(key: str, where: str, parameter: str, echo: bool = True) -> str:
    """The key, checked; a line of a file is named by its number, never shown."""
    import pyrage

    if key.startswith(SECRET_KEY_PREFIX):  # never echo a secret key back
        raise ParameterError(
            parameter,
            f"{where + ' is' if where else 'is given'} a secret key (AGE-SECRET-KEY-...); "
            "the backup machine needs only the public key: `age-keygen -y key.txt` prints it",
        )
    try:
        _recipient(key)
    except (pyrage.RecipientError, ValueError, TypeError) as exc:
        shown = key if len(key) <= 80 else key[:77] + "..."
        what = repr(shown) if echo else where
        raise _refuse(parameter, f"{what} is not a valid public key ({exc})") from None
    return key


def _keys_in_file(path: str, parameter: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise _refuse(parameter, f"cannot read recipients file {path} ({exc})") from None
    keys = []
    for number, line in enumerate(lines, 1):
        text = line.strip()
        if text and not text.startswith("#"):
            keys.append(_check_key(text, f"{path} line {number}", parameter, echo=False))
    if not keys:
        raise _refuse(parameter, f"recipients file {path} holds no public key")
    return keys


def parse_recipients(values: Iterable[str], parameter: str = "encrypt_to") -> Recipients | None:
    """Public keys and files of them (like `age -r` and `age -R`); None when none is given.

    A malformed key, a secret key or an unreadable file is a ParameterError naming it."""
    keys: list[str] = []
    for value in values:
        text = value.strip()
        if not text:
            continue
        if text.startswith(("age1", *SSH_KEY_TYPES, SECRET_KEY_PREFIX)):
            keys.append(_check_key(text, "", parameter))
        elif os.path.exists(os.path.expanduser(text)):
            keys += _keys_in_file(os.path.expanduser(text), parameter)
        else:
            shown = text if len(text) <= 80 else text[:77] + "..."
            raise _refuse(parameter, f"{shown!r} is neither a public key nor an existing file")
    unique = tuple(dict.fromkeys(keys))
    return Recipients(unique) if unique else None


def recipients_from_env(text: str | None) -> list[str]:
    """DBOPS_AGE_RECIPIENTS: keys or files, separated by commas."""
    return [part for part in (text or "").split(",") if part.strip()]


def backup_recipients(encrypt_to: list[str] | None, env_value: str | None) -> Recipients | None:
    """Whom a backup is encrypted to: `encrypt_to`, else DBOPS_AGE_RECIPIENTS; None: nobody."""
    if encrypt_to:
        return parse_recipients(encrypt_to)
    return parse_recipients(recipients_from_env(env_value), "DBOPS_AGE_RECIPIENTS")


@dataclass
class AgeIdentity:
    """Secret keys read from a file or a Prefect Secret block; its repr shows only where from."""

    source: str
    objects: list[Any] = field(repr=False)
    public_fingerprints: set[str] | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        return f"AgeIdentity({self.source!r})"

    __str__ = __repr__

    def check_recipient_of(self, encryption: Encryption, where: str) -> None:
        """ConfigError when the identity is known to be none of the backup's recipients."""
        if not encryption.recipients or self.public_fingerprints is None:
            return  # unknown recipients, or ssh identities: decryption itself will tell
        if not self.public_fingerprints & set(encryption.recipients):
            raise ConfigError(
                f"the age identity {self.source} is not a recipient of {where} (encrypted to "
                f"{', '.join(encryption.recipients)}); give the identity of one of them"
            )


def _identity_text(reference: str) -> str:
    if reference.startswith(SECRET_PREFIX):
        from tasks.core.settings import resolve_secret

        return resolve_secret(reference) or ""
    path = os.path.expanduser(reference)
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise ConfigError(
            f"cannot read the age identity file {reference} ({reason}); pass --identity FILE "
            "(as age-keygen writes it) or set DBOPS_AGE_IDENTITY"
        ) from None


def load_identity(reference: str) -> AgeIdentity:
    """The identity in a file (`AGE-SECRET-KEY-1...` lines, or an unencrypted OpenSSH key) or
    in the Prefect Secret block `secret://NAME`. Errors never contain the key."""
    import pyrage

    from tasks.core.settings import reject_inline_key

    reject_inline_key(reference)
    text = _identity_text(reference)
    objects: list[Any] = []
    fingerprints: set[str] | None = set()
    try:
        if "-----BEGIN OPENSSH PRIVATE KEY-----" in text:
            objects.append(pyrage.ssh.Identity.from_buffer(text.encode()))
            fingerprints = None  # pyrage cannot derive an ssh identity's public key
        for number, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if line.startswith(SECRET_KEY_PREFIX):
                try:
                    identity = pyrage.x25519.Identity.from_str(line)
                except (pyrage.IdentityError, ValueError):
                    raise ConfigError(
                        f"the age identity {reference} has a malformed key on line {number}; "
                        "use the file age-keygen wrote"
                    ) from None
                objects.append(identity)
                if fingerprints is not None:
                    fingerprints.add(fingerprint(str(identity.to_public())))
    except (pyrage.IdentityError, ValueError):
        raise ConfigError(
            f"the ssh key in {reference} cannot be used as an age identity (encrypted ssh "
            "keys are not supported); use an age identity from age-keygen"
        ) from None
    if not objects:
        raise ConfigError(
            f"{reference} holds no age identity; give the file age-keygen wrote "
            "(AGE-SECRET-KEY-1... lines)"
        )
    return AgeIdentity(reference, objects, fingerprints)


def require_identity(encryption: Encryption, reference: str | None, where: str) -> AgeIdentity:
    """The identity to read an encrypted backup with, checked against its recipients."""
    if not reference:
        recipients = ", ".join(encryption.recipients) or "unknown recipients"
        raise ConfigError(
            f"{where} is encrypted with age (to {recipients}); pass --identity FILE or set "
            "DBOPS_AGE_IDENTITY (a file or secret://BLOCK)"
        )
    identity = load_identity(reference)
    identity.check_recipient_of(encryption, where)
    return identity


class _Handover:
    """A bounded queue of byte strings between two threads, with an error and a cancel."""

    def __init__(self) -> None:
        self.queue: queue.Queue[bytes | BaseException | None] = queue.Queue(HANDOVER_DEPTH)
        self.cancelled = threading.Event()
        self.pending = bytearray()

    def put(self, item: bytes | BaseException | None) -> None:
        while not self.cancelled.is_set():
            try:
                self.queue.put(item, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue
        raise _Cancelled

    # The file-like side pyrage writes to.
    def write(self, data: bytes) -> int:
        self.pending += data
        if len(self.pending) >= HANDOVER_BYTES:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.pending:
            self.put(bytes(self.pending))
            self.pending.clear()

    def get(self) -> bytes | BaseException | None:
        return self.queue.get()


class _Cancelled(Exception):
    """The consumer went away: the stage thread stops."""


class _IteratorReader:
    """The file-like side pyrage reads from: an iterator of chunks, read in small slices."""

    def __init__(self, chunks: Iterator[bytes], cancelled: threading.Event) -> None:
        self.chunks = chunks
        self.cancelled = cancelled
        self.current = memoryview(b"")
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        if self.cancelled.is_set():
            raise _Cancelled
        if not self.current:
            try:
                self.current = memoryview(next(self.chunks, b""))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer as it was
                self.error = exc
                raise
        size = len(self.current) if size is None or size < 0 else size
        piece, self.current = self.current[:size], self.current[size:]
        return bytes(piece)


def encrypt_chunks(chunks: Iterable[bytes], recipients: Recipients) -> Iterator[bytes]:
    """age ciphertext of the concatenated chunks, as chunks of about HANDOVER_BYTES."""
    import pyrage

    out = _Handover()
    source = _IteratorReader(iter(chunks), out.cancelled)
    keys = recipients.objects()

    def run() -> None:
        try:
            pyrage.encrypt_io(source, out, keys)
            out.flush()
            out.put(None)
        except _Cancelled:
            return
        except BaseException as exc:  # noqa: BLE001 - re-raised by the consumer
            if not out.cancelled.is_set():
                out.put(source.error or exc)

    thread = threading.Thread(target=run, daemon=True, name="age-encrypt")
    thread.start()
    finished = False
    try:
        while True:
            item = out.get()
            if item is None:
                finished = True
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        out.cancelled.set()  # a consumer that stopped early stops the thread at its next step
        if finished:
            thread.join()


class _SliceReader:
    """What pyrage reads ciphertext from: the raw stream, read in big blocks, served in slices
    (pyrage asks for 8 KiB at a time; each read of S3 costs more than a slice)."""

    def __init__(self, raw: IO[bytes], cancelled: threading.Event) -> None:
        self.raw = raw
        self.cancelled = cancelled
        self.current = memoryview(b"")
        self.error: BaseException | None = None

    def read(self, size: int = -1) -> bytes:
        if self.cancelled.is_set():
            raise _Cancelled
        if not self.current:
            try:
                self.current = memoryview(self.raw.read(HANDOVER_BYTES))
            except BaseException as exc:  # noqa: BLE001 - handed to the reader's caller
                self.error = exc
                raise
        size = len(self.current) if size is None or size < 0 else size
        piece, self.current = self.current[:size], self.current[size:]
        return bytes(piece)

    def drain(self) -> int:
        """Read to the end (so a hashing reader beneath saw every byte); returns bytes left."""
        left = len(self.current)
        while block := self.raw.read(HANDOVER_BYTES):
            left += len(block)
        return left


class DecryptingReader:
    """Plaintext of an age stream, `read(size)` at a time; b'' only after an authenticated end.

    `where` names the object in messages. The identity was checked against the manifest's
    recipients before (`require_identity`), so an age header no identity opens is damaged."""

    def __init__(self, raw: IO[bytes], identity: AgeIdentity, where: str) -> None:
        self.where = where
        self.identity = identity
        self.out = _Handover()
        self.source = _SliceReader(raw, self.out.cancelled)
        self.buffer = memoryview(b"")
        self.done = False
        self.thread = threading.Thread(target=self._run, daemon=True, name="age-decrypt")
        self.thread.start()

    def _run(self) -> None:
        import pyrage

        try:
            pyrage.decrypt_io(self.source, self.out, self.identity.objects)
            self.out.flush()
            if self.source.drain():
                raise BackupFaultError(
                    f"{self.where} has data after the end of its age stream", BackupCheck.ARCHIVE
                )
            self.out.put(None)
        except _Cancelled:
            return
        except BaseException as exc:  # noqa: BLE001 - re-raised by read()
            if not self.out.cancelled.is_set():
                self.out.put(self._explain(exc))

    def _explain(self, exc: BaseException) -> BaseException:
        import pyrage

        if self.source.error is not None:
            return self.source.error  # the storage's own error, as it was
        if isinstance(exc, BackupFaultError | ConfigError):
            return exc
        if isinstance(exc, pyrage.DecryptError) and "No matching keys" in str(exc):
            if self.identity.public_fingerprints is None:
                return ConfigError(
                    f"the age identity {self.identity.source} cannot open {self.where} (not one "
                    "of its recipients, or its header is damaged)"
                )
            return BackupFaultError(
                f"{self.where}: its age header does not open with the identity of a recipient "
                "(the header is damaged)",
                BackupCheck.SHA256,
            )
        if isinstance(exc, pyrage.DecryptError):
            return BackupFaultError(
                f"{self.where} is not a valid age file ({exc})", BackupCheck.ARCHIVE
            )
        return BackupFaultError(
            f"{self.where} fails age authentication: the ciphertext is damaged or truncated "
            f"({exc})",
            BackupCheck.SHA256,
        )

    def read(self, size: int = -1) -> bytes:
        while not self.buffer:
            if self.done:
                return b""
            item = self.out.get()
            if item is None:
                self.done = True
                self.thread.join()
                return b""
            if isinstance(item, BaseException):
                self.done = True
                raise item
            self.buffer = memoryview(item)
        size = len(self.buffer) if size is None or size < 0 else size
        piece, self.buffer = self.buffer[:size], self.buffer[size:]
        return bytes(piece)

    def close(self) -> None:
        self.out.cancelled.set()

    def __enter__(self) -> DecryptingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def decrypting(
    raw: IO[bytes], identity: AgeIdentity | None, encrypted: bool, where: str
) -> Iterator[IO[bytes] | DecryptingReader]:
    """`raw` itself for a plain object; its plaintext for an age-encrypted one, whose thread
    stops when the block is left (whatever happened)."""
    if not encrypted:
        yield raw
        return
    if identity is None:
        raise ConfigError(
            f"{where} is encrypted with age; pass --identity FILE or set DBOPS_AGE_IDENTITY"
        )
    with DecryptingReader(raw, identity, where) as plain:
        yield plain

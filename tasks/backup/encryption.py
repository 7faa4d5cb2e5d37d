"""Client-side encryption with age: the one place backups are encrypted and decrypted.

The format is age's own (`age -d -i key.txt` reads what is stored), so a backup can be
restored with stock tools. The machine that backs up holds only public keys (recipients);
restore, verify and table restore take the identity (the secret key), which is read
in-process and never passed to a child, logged, or stored in a manifest or a parameter.

Two stream stages, used wherever a stored object is written or read:

* `encrypt_chunks(chunks, recipients)`: an iterator of (compressed) chunks in, an iterator
  of age ciphertext out. pyrage's `encrypt_io` pulls from a reader and pushes to a writer,
  so it runs on a thread between two hand-overs (`_AgeWorker`) that the caller's thread feeds
  and drains: the upstream iterator, storage reads and progress callbacks stay on the
  caller's thread, and memory stays a few chunks.
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
# Output handed back at a time (and input read at a time when decrypting).
HANDOVER_BYTES = 1024 * 1024
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


def can_open(identity: AgeIdentity, recipients: Recipients) -> bool:
    """Whether `identity` decrypts what is encrypted to `recipients`, before anything is: age
    keys by fingerprint; an ssh identity's public key is unknown, so a few random bytes are
    encrypted to the recipients in memory and decrypted with it."""
    import pyrage

    if identity.public_fingerprints is not None:
        return bool(identity.public_fingerprints & set(recipients.fingerprints))
    probe = os.urandom(16)
    try:
        sealed = pyrage.encrypt(probe, recipients.objects())
        return bool(pyrage.decrypt(sealed, identity.objects) == probe)
    except pyrage.DecryptError:
        return False


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


class _Cancelled(Exception):
    """The caller went away: the worker thread stops."""


_EMPTY = object()


class _AgeWorker:
    """pyrage on its own thread between two queues, fed and drained by the caller's thread.

    pyrage pulls from a reader and pushes to a writer; this object is both. The caller's
    thread keeps everything else (the upstream iterator, storage reads, progress callbacks)
    and feeds input (one piece waits at most) only once it has taken the output there was, so a
    few pieces are in flight: memory stays bounded whatever the object's size."""

    def __init__(self, work: Any, name: str) -> None:
        self.inbox: queue.Queue[bytes | None] = queue.Queue(1)
        self.outbox: queue.Queue[Any] = queue.Queue()  # bounded by the feeding discipline
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.current = memoryview(b"")
        self.pending = bytearray()
        self.thread = threading.Thread(target=self._run, args=(work,), daemon=True, name=name)
        self.thread.start()

    def _run(self, work: Any) -> None:
        try:
            work(self, self)
            self.flush()
            self.outbox.put(None)
        except _Cancelled:
            pass
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self.outbox.put(exc)
        finally:
            self.finished.set()

    # pyrage's side: a file to read from and one to write to.
    def read(self, size: int = -1) -> bytes:
        while not self.current:
            if self.cancelled.is_set():
                raise _Cancelled
            try:
                item = self.inbox.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            if item is None:
                self.inbox.put(None)  # end of input stays the end
                return b""
            self.current = memoryview(item)
        size = len(self.current) if size is None or size < 0 else size
        piece, self.current = self.current[:size], self.current[size:]
        return bytes(piece)

    def write(self, data: bytes) -> int:
        if self.cancelled.is_set():
            raise _Cancelled
        self.pending += data
        if len(self.pending) >= HANDOVER_BYTES:
            self.flush()
        return len(data)

    def flush(self) -> None:
        if self.pending:
            self.outbox.put(bytes(self.pending))
            self.pending.clear()

    # The caller's side.
    def feed(self, data: bytes | None) -> None:
        """Hand over input (None: the end); dropped once the worker stopped (its error waits)."""
        while not self.finished.is_set():
            try:
                self.inbox.put(data, timeout=_POLL_SECONDS)
                return
            except queue.Full:
                continue

    def take(self, wait: bool) -> Any:
        """Output bytes, None at the end, an exception, or _EMPTY (only when not waiting)."""
        try:
            item = self.outbox.get(block=wait)
        except queue.Empty:
            return _EMPTY
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self.cancelled.set()


def encrypt_chunks(chunks: Iterable[bytes], recipients: Recipients) -> Iterator[bytes]:
    """age ciphertext of the concatenated chunks, in pieces of about HANDOVER_BYTES. The
    chunks are pulled on the caller's thread, as without encryption."""
    import pyrage

    keys = recipients.objects()
    worker = _AgeWorker(lambda r, w: pyrage.encrypt_io(r, w, keys), "age-encrypt")
    try:
        for chunk in chunks:
            worker.feed(chunk)
            while (piece := worker.take(wait=False)) is not _EMPTY:
                if piece is not None:
                    yield piece
        worker.feed(None)
        while (piece := worker.take(wait=True)) is not None:
            yield piece
    finally:
        worker.close()


class DecryptingReader:
    """Plaintext of an age stream, `read(size)` at a time; b'' only after an authenticated end
    and the end of `raw` (so a hashing reader beneath saw every byte).

    `where` names the object in messages. The identity was checked against the manifest's
    recipients before (`require_identity`), so an age header no identity opens is damaged."""

    def __init__(self, raw: IO[bytes], identity: AgeIdentity, where: str) -> None:
        import pyrage

        self.raw = raw
        self.where = where
        self.identity = identity
        keys = identity.objects
        self.worker = _AgeWorker(lambda r, w: pyrage.decrypt_io(r, w, keys), "age-decrypt")
        self.buffer = memoryview(b"")
        self.fed_all = False
        self.done = False

    def _explain(self, exc: BaseException) -> BaseException:
        import pyrage

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
            f"{self.where} fails age authentication: the ciphertext is damaged, truncated or "
            f"extended ({exc})",
            BackupCheck.SHA256,
        )

    def _next(self) -> bytes | None:
        """The next plaintext piece, None at the end; feeds ciphertext while there is none.
        A storage error while reading is raised as it is; pyrage's, explained in one line."""
        while True:
            try:
                item = self.worker.take(wait=self.fed_all)
            except Exception as exc:  # noqa: BLE001 - pyrage's error, from its thread
                raise self._explain(exc) from None
            if item is not _EMPTY:
                return item  # type: ignore[no-any-return]
            block = self.raw.read(HANDOVER_BYTES)
            self.worker.feed(block or None)
            self.fed_all = not block

    def read(self, size: int = -1) -> bytes:
        while not self.buffer:
            if self.done:
                return b""
            try:
                piece = self._next()
            except BaseException:
                self.done = True
                raise
            if piece is None:
                self.done = True
                if self.raw.read(HANDOVER_BYTES):
                    raise BackupFaultError(
                        f"{self.where} has data after the end of its age stream",
                        BackupCheck.ARCHIVE,
                    )
                return b""
            self.buffer = memoryview(piece)
        size = len(self.buffer) if size is None or size < 0 else size
        piece_out, self.buffer = self.buffer[:size], self.buffer[size:]
        return bytes(piece_out)

    def close(self) -> None:
        self.worker.close()

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

"""Parameter descriptions for the Prefect UI's run form, written once, beside each parameter.

Prefect 3.9 builds a deployment's parameter schema from the flow's docstring ("Args:") and
ignores `Annotated[..., Field(description=...)]`; `documented` writes the one from the other,
so the descriptions live next to the parameters and still reach the UI.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

from tasks.storage.options import S3Options

F = TypeVar("F", bound=Callable[..., Any])


def _description(annotation: Any) -> str | None:
    if get_origin(annotation) is not Annotated:
        return None
    for extra in get_args(annotation)[1:]:
        if isinstance(extra, FieldInfo) and extra.description:
            return extra.description
    return None


def documented(fn: F) -> F:
    """Append a Google-style Args section built from the Annotated Field descriptions."""
    hints = get_type_hints(fn, include_extras=True)
    lines = []
    for name in inspect.signature(fn).parameters:
        text = _description(hints.get(name))
        if text:
            lines.append(f"    {name}: {text}")
    if lines:
        # A summary line first: inspect.cleandoc would otherwise strip the indentation
        # that makes the Args section parseable.
        doc = inspect.cleandoc(fn.__doc__ or "") or fn.__name__.replace("_", " ").capitalize()
        fn.__doc__ = doc + "\n\nArgs:\n" + "\n".join(lines) + "\n"
    return fn


DatabaseUrl = Annotated[
    str | None,
    Field(description="secret://BLOCK or a URL without password; default DATABASE_URL"),
]
"""The target database of every flow: never a password in a parameter (Prefect stores them)."""

BackupUrl = Annotated[
    str | None, Field(description="s3://bucket/prefix or a directory; default BACKUP_URL")
]
"""Where backups are: S3 or a local directory."""

S3Parameter = Annotated[S3Options | None, Field(description="S3 options; default from AWS_*")]

ObjectLock = Annotated[
    Literal["governance", "compliance"] | None,
    Field(description="S3 Object Lock mode of every object written; needs object_lock_days"),
]
"""Immutability: locked objects cannot be deleted or overwritten until their date."""

ObjectLockDays = Annotated[
    int | None, Field(description="days every object written stays locked (with object_lock)")
]

Retries = Annotated[int, Field(ge=0, le=10, description="retries of transient errors")]

AgeRecipientList = Annotated[
    list[str] | None,
    Field(
        description="age public keys (age1..., ssh-ed25519, ssh-rsa) or files of them to "
        "encrypt to; default DBOPS_AGE_RECIPIENTS, else unencrypted"
    ),
]
"""Public keys only: the machine that backs up never needs a secret key."""

AgeIdentityFile = Annotated[
    str | None,
    Field(
        description="age identity that decrypts an encrypted backup: a file on the worker or "
        "secret://BLOCK, never the key itself; default DBOPS_AGE_IDENTITY"
    ),
]
"""Only a reference: Prefect stores parameters with the run, so the key never is one."""

Jobs = Annotated[
    int,
    Field(
        ge=1,
        le=64,
        description="parallel format: workers (connections) that copy or load tables at once; "
        "at most half the server's free connection slots are used",
    ),
]
"""Backup and restore of the parallel format (backup/parallel.py, restore/parallel_load.py)."""

ChunkMb = Annotated[
    int,
    Field(
        ge=1,
        description="parallel format: a table larger than this on disk (MiB) is stored in "
        "ctid ranges of about this size, one object each, so loaders share it",
    ),
]

SlotWait = Annotated[
    float, Field(gt=0, description="how long to wait for other dbops jobs on this database")
]
"""Every heavy job waits for its database's slot this long (core/slots.py)."""

FromServer = Annotated[
    str | None,
    Field(
        description="with `latest`: the system identifier of the server whose backups; "
        "default DATABASE_URL's server, or the only server with backups"
    ),
]

PingUrl = Annotated[
    str | None,
    Field(
        description="heartbeat pings <url>/start, <url>, <url>/fail (healthchecks.io style); "
        "secret://BLOCK or a URL; default DBOPS_PING_URL"
    ),
]
"""Read by the flow's hooks (tasks/operations/outcomes.py), not by its body."""


def describe(annotation: Any) -> str:
    """The description the Prefect UI shows for a parameter type: the CLI's help text too."""
    return _description(annotation) or ""


def field_help(model: type[BaseModel], name: str) -> str:
    """A pydantic model field's description, for the CLI flag that sets it."""
    return model.model_fields[name].description or ""


MaxLockSeconds = Annotated[
    float,
    Field(
        ge=0,
        le=3600,
        description="rehearsal: a statement holding a lock that blocks writes (SHARE or "
        "stronger) on an existing table longer than this on the copy is red and refuses the "
        "migration",
    ),
]

"""The key a migration's rollback decrypts with, proven before anything is backed up.

With recipients set (`encrypt_to`, DBOPS_AGE_RECIPIENTS) the pre-migration backup is encrypted
like every other backup. A rollback restores it, so a run that could not decrypt it must not
start: the identity is loaded and shown to open what is encrypted to those recipients first.
Plain code (no Prefect): the CLI's preflight and the flow's first task both call it.
"""

from __future__ import annotations

from tasks.backup.encryption import (
    AgeIdentity,
    Recipients,
    backup_recipients,
    can_open,
    load_identity,
)
from tasks.core.errors import ConfigError

_UNTOUCHED = "nothing was backed up or migrated"


def _count(recipients: Recipients) -> str:
    n = len(recipients.keys)
    return f"{n} recipient{'s' if n != 1 else ''}"


def rollback_identity(recipients: Recipients | None, reference: str | None) -> AgeIdentity | None:
    """The identity (a file or secret://BLOCK) that opens a backup encrypted to `recipients`;
    None when the backup is not encrypted. ConfigError, in one line without the key, when
    there is none or it opens none of them."""
    if recipients is None:
        return None
    if not reference:
        raise ConfigError(
            f"the pre-migration backup is encrypted to {_count(recipients)} but no identity can "
            "open it: give --identity or DBOPS_AGE_IDENTITY, a file or secret://BLOCK (the "
            f"rollback must decrypt it); {_UNTOUCHED}"
        )
    identity = load_identity(reference)
    if not can_open(identity, recipients):
        raise ConfigError(
            f"the age identity {identity.source} opens none of the {_count(recipients)} the "
            f"pre-migration backup is encrypted to ({', '.join(recipients.fingerprints)}): give "
            f"the identity of one of them (the rollback must decrypt it); {_UNTOUCHED}"
        )
    return identity


def pre_migration_encryption(
    encrypt_to: list[str] | None,
    identity: str | None,
    env_recipients: str | None,
    env_identity: str | None,
) -> tuple[Recipients | None, AgeIdentity | None]:
    """Whom the pre-migration backup is encrypted to (as a normal backup: `encrypt_to`, else
    DBOPS_AGE_RECIPIENTS) and the identity its rollback decrypts with (`identity`, else
    DBOPS_AGE_IDENTITY), checked."""
    recipients = backup_recipients(encrypt_to, env_recipients)
    return recipients, rollback_identity(recipients, identity or env_identity)

"""Retention meets S3 Object Lock: a locked backup is planned as kept, "locked until ...".

Deleting a locked object version is refused by S3 until its retain-until date, and a
plain DELETE on a versioned bucket would only hide it behind a delete marker while it
still costs storage. So the plan asks the store first and keeps what is locked; should
S3 still refuse a deletion (a lock set after the plan), `inventory.apply_plan` reports
it as locked and goes on with the next backup.
"""

from __future__ import annotations

from datetime import datetime

from tasks.copies.records import records_by_backup
from tasks.retention.inventory import Inventory, backup_object_names
from tasks.retention.plan import RetentionPlan
from tasks.storage.destinations import Destination

LOCK_RULE = "object lock"


def hold_locked(destination: Destination, plan: RetentionPlan, inventory: Inventory) -> int:
    """Turn deletions of still-locked backups into keeps; how many were held."""
    if not plan.delete or not destination.lockable():
        return 0
    by_id = {m.backup_id: m for m in inventory.manifests}
    present = {obj.name for obj in destination.list()}
    copies = records_by_backup(present)
    held = 0
    for item in plan.delete:
        names = [n for n in backup_object_names(by_id[item.backup_id], copies) if n in present]
        dates = [d for d in (destination.locked_until(n) for n in names) if d is not None]
        if not dates:
            continue
        until: datetime = max(dates)
        item.action = "keep"
        item.rules = [LOCK_RULE]
        item.reason = f"locked until {until:%Y-%m-%d %H:%M} UTC (S3 Object Lock)"
        held += 1
    return held

"""clean-up-databases: find (and with confirm, drop) what killed dbops runs left on a server.

A restore or a restore test that was killed leaves a scratch database
(`<db>__dbops_restore_<token>`, `<db>__dbops_verify_<token>`); a kill between the swap and the
drop leaves the replaced database as `<db>__dbops_old_<token>`. Their names cannot be taken for
user databases. Nothing is dropped without `confirm`.
"""

from __future__ import annotations

from typing import Annotated

from prefect import flow
from pydantic import Field

from tasks.core.parameters import DatabaseUrl, documented
from tasks.core.settings import reject_inline_password
from tasks.operations.outcomes import outcome_hooks
from tasks.restore.tasks import LeftoverDatabases, clean_up_leftovers


@flow(name="clean-up-databases", **outcome_hooks("cleanup"))
@documented
def clean_up_databases(
    database_url: DatabaseUrl = None,
    confirm: Annotated[
        bool, Field(description="drop the leftovers; otherwise only list them")
    ] = False,
) -> LeftoverDatabases:
    reject_inline_password(database_url, "database_url")
    return clean_up_leftovers(database_url, confirm)

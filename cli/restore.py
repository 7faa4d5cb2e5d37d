"""`dbops restore` and `dbops verify`: put a backup into a database, or prove it restores."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from cli.app import (
    DatabaseUrl,
    FromServer,
    IdentityOption,
    JobsOption,
    JsonFlag,
    Retries,
    app,
    emit,
    fail,
    run_flow,
    s3_options,
    use_database_url,
)
from cli.application import AppTimeout, StartApp, StopApp, StopAppAt, restore_hooks


@app.command()
def restore(
    source: Annotated[str, typer.Argument(help="`latest`, a backup id, an s3:// URL or a path")],
    database_url: DatabaseUrl = None,
    backups: Annotated[
        str | None, typer.Option("--from", help="where backups are; default $BACKUP_URL")
    ] = None,
    clean: Annotated[bool, typer.Option(help="replace a non-empty target database")] = False,
    from_database: Annotated[
        str | None, typer.Option(help="with `latest`: whose backups (default: the target's)")
    ] = None,
    from_server: FromServer = None,
    table: Annotated[
        list[str] | None,
        typer.Option(
            "--table",
            help="restore only this SCHEMA.TABLE (repeatable), beside what the database has",
        ),
    ] = None,
    schema: Annotated[
        list[str] | None,
        typer.Option("--schema", help="restore only the tables of this schema (repeatable)"),
    ] = None,
    into_schema: Annotated[
        str | None, typer.Option(help="with --table/--schema: into this schema (created)")
    ] = None,
    as_table: Annotated[
        str | None, typer.Option(help="with one --table: the restored table's new name")
    ] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
    retries: Retries = 0,
    stop_app: StopApp = None,
    start_app: StartApp = None,
    stop_app_at: StopAppAt = "swap",
    app_timeout: AppTimeout = 300,
    identity: IdentityOption = None,
    jobs: JobsOption = 2,
    as_json: JsonFlag = False,
) -> None:
    """Restore a backup into a database (created if missing), or only some of its tables."""
    from flows.restore import restore_database

    use_database_url(database_url)
    if table or schema or into_schema or as_table:
        if stop_app or start_app:
            fail("--stop-app/--start-app go with a whole restore; a table restore replaces nothing")
        _restore_tables(
            source,
            backups,
            clean,
            from_database,
            from_server,
            table,
            schema,
            into_schema,
            as_table,
            endpoint_url,
            retries,
            as_json,
            identity,
        )
        return
    result = run_flow(
        restore_database,
        source=source,
        backup_url=backups,
        clean=clean,
        from_database=from_database,
        from_server=from_server,
        s3=s3_options(endpoint_url, None, None, None, None),
        retries=retries,
        application=restore_hooks(stop_app, start_app, stop_app_at, app_timeout),
        identity=identity,
        jobs=jobs,
    )
    human = f"restored {result.source} into {result.target}"
    if result.application and result.application.downtime_seconds is not None:
        human += f"; the application was down {result.application.downtime_seconds:.1f} s"
    emit(result.model_dump(mode="json"), as_json, human)


def _restore_tables(
    source: str,
    backups: str | None,
    clean: bool,
    from_database: str | None,
    from_server: str | None,
    tables: list[str] | None,
    schemas: list[str] | None,
    into_schema: str | None,
    as_table: str | None,
    endpoint_url: str | None,
    retries: int,
    as_json: bool,
    identity: str | None,
) -> None:
    from flows.restore_tables import restore_tables

    if clean:
        fail("--clean replaces a whole database; a table restore never replaces anything")
    if not tables and not schemas:
        fail("--into-schema and --as-table go with --table SCHEMA.TABLE or --schema SCHEMA")
    result = run_flow(
        restore_tables,
        source=source,
        tables=tables or [],
        schemas=schemas or [],
        into_schema=into_schema,
        as_table=as_table,
        backup_url=backups,
        from_database=from_database,
        from_server=from_server,
        s3=s3_options(endpoint_url, None, None, None, None),
        retries=retries,
        identity=identity,
    )
    restored = ", ".join(f"{a} as {b}" for a, b in result.tables.items())
    human = f"restored {restored} from {result.source} into {result.target}"
    if result.left_out:
        human += "\nleft out (refer to tables not restored): " + "; ".join(result.left_out)
    emit(result.model_dump(mode="json"), as_json, human)


@app.command()
def verify(
    source: Annotated[
        str, typer.Argument(help="`latest`, a backup id, an s3:// URL or a path")
    ] = "latest",
    database_url: DatabaseUrl = None,
    verify_database_url: Annotated[
        str | None,
        typer.Option(
            "--verify-database-url",
            help="server for the scratch database; default $VERIFY_DATABASE_URL, "
            "else the $DATABASE_URL server",
            show_default=False,
        ),
    ] = None,
    backups: Annotated[
        str | None, typer.Option("--from", "--to", help="where backups are; default $BACKUP_URL")
    ] = None,
    database: Annotated[
        str | None, typer.Option(help="with `latest`: whose backups (default: DATABASE_URL's)")
    ] = None,
    from_server: FromServer = None,
    smoke: Annotated[
        list[str] | None,
        typer.Option(
            "--smoke",
            help="read-only SQL run in the restored copy; fails on an error, no rows, or a "
            "false/NULL first value (repeatable)",
        ),
    ] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
    retries: Retries = 0,
    identity: IdentityOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Restore a backup into a scratch database, check SHA-256, archive, row counts and smoke
    queries, drop the scratch database and record the result next to the backup."""
    from flows.verify import verify_backup

    use_database_url(database_url)
    if verify_database_url:  # like DATABASE_URL: through the environment, never a parameter
        os.environ["VERIFY_DATABASE_URL"] = verify_database_url
    result = run_flow(
        verify_backup,
        source=source,
        backup_url=backups,
        database=database,
        from_server=from_server,
        smoke_queries=smoke or [],
        s3=s3_options(endpoint_url, None, None, None, None),
        retries=retries,
        identity=identity,
    )
    human = f"backup {result.backup_id} verified: {result.detail}"
    emit(result.model_dump(mode="json"), as_json, human)


@app.command()
def cleanup(
    database_url: DatabaseUrl = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="drop the leftovers (default: only list them)")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """List the scratch databases killed restores and restore tests left; --yes drops them."""
    from flows.cleanup import clean_up_databases

    use_database_url(database_url)
    result = run_flow(clean_up_databases, confirm=yes)
    lines = [
        f"{'dropped' if name in result.dropped else 'leftover'}  {name}" for name in result.found
    ] or [f"no leftover dbops databases on {result.server}"]
    if result.found and not yes:
        lines.append("nothing dropped; pass --yes to drop them")
    emit(result, as_json, "\n".join(lines))

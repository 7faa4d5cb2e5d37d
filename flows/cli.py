"""The `dbops` command line: parses arguments and calls flows, nothing more.

Human output and progress go to stderr; `--json` prints one JSON document on
stdout. The exit code is 0 only when the flow run Completed.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Annotated, Any, Literal

import typer

from tasks.errors import DbopsError

# Without PREFECT_API_URL, Prefect starts a temporary server in this process; its first
# start migrates a fresh database, which can take longer than Prefect's default wait.
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

app = typer.Typer(
    name="dbops",
    help="PostgreSQL backups, restores, migrations and maintenance as Prefect flows.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database-url", help="libpq URI; default $DATABASE_URL", show_default=False),
]
BackupUrl = Annotated[
    str | None,
    typer.Option(
        "--to", help="s3://bucket/prefix or a directory; default $BACKUP_URL or ./backups"
    ),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="print one JSON document on stdout")]
Retries = Annotated[
    int, typer.Option(min=0, max=10, help="retries of transient errors (deployments default to 2)")
]


def say(message: str) -> None:
    typer.echo(message, err=True)


def fail(message: str) -> None:
    say(f"error: {message}")
    raise typer.Exit(1)


def use_database_url(url: str | None) -> None:
    """A URL given on the command line travels in the environment, never as a flow parameter
    (Prefect stores parameters with the run)."""
    if url:
        os.environ["DATABASE_URL"] = url


def run_flow(flow_fn: Any, **parameters: Any) -> Any:
    """Run a flow; on failure print its one-line error and exit 1."""
    try:
        state = flow_fn(**parameters, return_state=True)
    except DbopsError as exc:
        fail(str(exc))
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        message = str(error) if isinstance(error, BaseException) else (state.message or state.name)
        fail(message.strip().splitlines()[0] if message.strip() else state.name)
    return state.result()


def emit(document: Any, as_json: bool, human: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    else:
        say(human)


def s3_options(
    endpoint_url: str | None,
    sse: str | None,
    sse_kms_key_id: str | None,
    storage_class: str | None,
    tags: list[str] | None,
):
    from tasks.settings import S3Options, parse_tags

    return S3Options.from_env().merged(
        endpoint_url=endpoint_url,
        sse=sse,
        sse_kms_key_id=sse_kms_key_id,
        storage_class=storage_class,
        tags=parse_tags(",".join(tags or [])),
    )


@app.command()
def backup(
    database_url: DatabaseUrl = None,
    to: BackupUrl = None,
    format: Annotated[Literal["plain", "custom"], typer.Option(help="pg_dump format")] = "plain",
    compression: Annotated[
        Literal["gzip", "zstd", "none"], typer.Option(help="compression of the dump")
    ] = "gzip",
    level: Annotated[int | None, typer.Option(help="compression level")] = None,
    label: Annotated[list[str] | None, typer.Option(help="label the backup (repeatable)")] = None,
    globals_: Annotated[
        bool, typer.Option("--globals", help="also dump roles and tablespaces")
    ] = False,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
    sse: Annotated[
        Literal["AES256", "aws:kms"] | None, typer.Option(help="server-side encryption")
    ] = None,
    sse_kms_key_id: Annotated[str | None, typer.Option(help="KMS key id for aws:kms")] = None,
    storage_class: Annotated[str | None, typer.Option(help="S3 storage class")] = None,
    tag: Annotated[list[str] | None, typer.Option(help="S3 object tag KEY=VALUE")] = None,
    retries: Retries = 0,
    as_json: JsonFlag = False,
) -> None:
    """Back up a database: pg_dump | compress | checksum | upload, then a manifest."""
    from flows.backup import backup_database

    use_database_url(database_url)
    try:
        s3 = s3_options(endpoint_url, sse, sse_kms_key_id, storage_class, tag)
    except DbopsError as exc:
        fail(str(exc))
    manifest = run_flow(
        backup_database,
        backup_url=to,
        format=format,
        compression=compression,
        level=level,
        labels=label or [],
        include_globals=globals_,
        s3=s3,
        retries=retries,
    )
    emit(manifest, as_json, f"backup {manifest['backup_id']} stored: {manifest['dump']['name']}")


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
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
    retries: Retries = 0,
    as_json: JsonFlag = False,
) -> None:
    """Restore a backup into a database (created if missing)."""
    from flows.restore import restore_database

    use_database_url(database_url)
    result = run_flow(
        restore_database,
        source=source,
        backup_url=backups,
        clean=clean,
        from_database=from_database,
        s3=s3_options(endpoint_url, None, None, None, None),
        retries=retries,
    )
    emit(result, as_json, f"restored {result['source']} into {result['target']}")


@app.command("list")
def list_backups(
    to: BackupUrl = None,
    database: Annotated[str | None, typer.Option(help="only this database's backups")] = None,
    endpoint_url: Annotated[str | None, typer.Option(help="S3-compatible endpoint")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List the backups under BACKUP_URL, newest first (reads only; runs no flow)."""
    from tasks.manifest import list_manifests
    from tasks.settings import Settings
    from tasks.storage import Destination

    try:
        settings = Settings.load(None, to, s3_options(endpoint_url, None, None, None, None))
        manifests = list_manifests(Destination.from_url(settings.backup_url, settings.s3), database)
    except DbopsError as exc:
        fail(str(exc))
    rows = [
        {
            "backup_id": m.backup_id,
            "database": m.database,
            "started_at": m.started_at.isoformat(),
            "format": m.format,
            "compression": m.compression,
            "size": m.dump.size,
            "dump": m.dump.name,
            "labels": m.labels,
            "verified": m.verification.ok if m.verification else None,
        }
        for m in manifests
    ]
    if as_json:
        emit(rows, True, "")
        return
    if not rows:
        say(f"no backups under {settings.backup_url}")
        return
    for row in rows:
        labels = ",".join(row["labels"])
        say(f"{row['backup_id']:<40} {row['size']:>14,d}  {row['dump']}  {labels}")


@app.command()
def demo(
    workdir: Annotated[str, typer.Option("--dir", help="where backups go")] = "dbops-demo",
    size_mb: Annotated[float, typer.Option(help="approximate dump size in MB")] = 20.0,
    as_json: JsonFlag = False,
) -> None:
    """Start an embedded PostgreSQL with a guide-shaped ai_saas database, back it up,
    restore it into a second database and check the row counts match."""
    from flows.demo import demo as demo_flow

    summary = run_flow(demo_flow, workdir=workdir, size_mb=size_mb)
    lines = [
        "dbops demo: embedded PostgreSQL, database ai_saas (User, Conversation, Message)",
        f"  backed up   {summary['dump_mb']} MB of SQL -> {summary['stored_mb']} MB gzip "
        f"in {summary['backup_seconds']} s",
        f"  backup      {summary['backup']}",
        f"  manifest    {summary['manifest']}",
        f"  restored    into ai_saas_restored in {summary['restore_seconds']} s, "
        f"SHA-256 verified: {summary['checksum_verified']}",
    ]
    lines += [
        f"  {table:<22} {counts[0]:>9} rows, restored {counts[1]}"
        for table, counts in summary["row_counts"].items()
    ]
    lines.append("  row counts match. Try: gunzip -c " + summary["backup"] + " | head")
    emit(summary, as_json, "\n".join(lines))


@app.command()
def serve(
    only: Annotated[
        list[str] | None, typer.Option(help="only this deployment, e.g. backup-database/nightly")
    ] = None,
) -> None:
    """Serve every deployment of prefect.yaml, schedules included, from this process
    (one machine, no work pool). Needs PREFECT_API_URL or a local `prefect server start`."""
    from deployments.serve import serve_all

    try:
        serve_all(only)
    except DbopsError as exc:
        fail(str(exc))


def main() -> None:
    app()


if __name__ == "__main__":
    main()

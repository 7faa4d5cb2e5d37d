"""`dbops demo`: the main job on an embedded PostgreSQL, nothing to configure."""

from __future__ import annotations

from typing import Annotated

import typer

from cli.app import JsonFlag, app, emit, run_flow


@app.command()
def demo(
    directory: Annotated[
        str, typer.Option("--dir", help="where backups go (created when missing)")
    ] = "dbops-demo",
    size_mb: Annotated[float, typer.Option(help="approximate dump size in MB")] = 20.0,
    as_json: JsonFlag = False,
) -> None:
    """Start an embedded PostgreSQL with a guide-shaped ai_saas database, back it up,
    restore it into a second database and check the row counts match."""
    from flows.demo import demo as demo_flow

    summary = run_flow(demo_flow, workdir=directory, size_mb=size_mb)
    lines = [
        "dbops demo: embedded PostgreSQL, database ai_saas (User, Conversation, Message)",
        f"  backed up   {summary.dump_mb} MB of SQL -> {summary.stored_mb} MB gzip "
        f"in {summary.backup_seconds} s",
        f"  backup      {summary.backup}",
        f"  manifest    {summary.manifest}",
        f"  restored    into ai_saas_restored in {summary.restore_seconds} s, "
        f"SHA-256 verified: {summary.checksum_verified}",
    ]
    lines += [
        f"  {table:<22} {counts[0]:>9} rows, restored {counts[1]}"
        for table, counts in summary.row_counts.items()
    ]
    lines.append("  row counts match. Try: gunzip -c " + summary.backup + " | head")
    emit(summary.model_dump(mode="json"), as_json, "\n".join(lines))

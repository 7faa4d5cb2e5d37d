"""Row counts from the dump stream: the same numbers as count(*) in the catalog, any chunking."""

from __future__ import annotations

import subprocess

import pytest

from tasks.backup.row_counts import CopyRowCounter, table_row_counts
from tasks.core.client_tools import find_client_tool
from tasks.core.postgres import ConnInfo, server_version


@pytest.mark.parametrize("chunk", [1, 7, 4096, 4 * 1024 * 1024])
def test_counts_from_a_real_plain_dump_match_the_database(rich_db, chunk):
    info = ConnInfo.parse(rich_db)
    with info.connect() as conn:
        major, _ = server_version(conn)
    pg_dump = find_client_tool("pg_dump", major)
    dump = subprocess.run(
        [pg_dump.path, "--no-password"], env=info.child_env(), capture_output=True, check=True
    ).stdout
    counter = CopyRowCounter()
    for start in range(0, len(dump), chunk):
        counter.feed(dump[start : start + chunk])
    with info.connect() as conn:
        expected = table_row_counts(conn)
    assert {t: counter.counts.get(t) for t in expected} == expected
    assert expected["Odd Schema.Weird Table"] == 30 and expected["billing.event"] == 2

"""What a table restore asks of a backup format: every definition, and the chosen tables' rows.

`TableSource.load` puts them into an empty scratch database, with the backup's checksums
checked on the way; the rest of a table restore (row counts, names, the move into the
target) is the same for every format. Plain dumps stream through `sql_filter.TableFilter`
into psql; custom archives are turned back into the same SQL by `pg_restore -f -` and take
the same filter, so both formats select tables by the same exact, quoted names. A format
that stores each table's rows as its own objects (the parallel format, `ParallelTables`)
restores its schema archive through the same filter and reads only the chosen tables' objects.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from dataclasses import dataclass, field
from typing import IO, Protocol

from tasks.backup.catalog import BackupSource
from tasks.backup.manifest import DataObject
from tasks.core.children import spawn
from tasks.core.errors import DbopsError, ParameterError
from tasks.core.postgres import ConnInfo
from tasks.core.streams import CHUNK_SIZE, StderrTail
from tasks.restore.parallel_load import load_data
from tasks.restore.sql_filter import Selection, TableFilter
from tasks.restore.streaming import psql_command, restore_command, stream_into, tool_failure


@dataclass(frozen=True)
class Loaded:
    """What reading the backup saw."""

    bytes_read: int
    sha256: str
    checksum_verified: bool
    left_out: list[str] = field(default_factory=list)  # foreign keys to tables not restored


class TableSource(Protocol):
    """Load every definition of a backup and the rows of `selection` into an empty database.

    The contract a format's implementation keeps (the rest of a table restore relies on it):
    every definition of the backup is created in `into`; rows are loaded for exactly the
    tables `selection.wants` picks (a partitioned parent's partitions included) and no others;
    every stored object read is checked against its manifest's size and SHA-256
    (`BackupFaultError`); a named table missing from the definitions is a
    `ParameterError("tables", ...)` naming the closest ones; foreign keys from chosen tables to
    tables not chosen are not created and are listed in `Loaded.left_out`. A parallel backup
    can keep it by sending its schema archive through `pg_restore -f -` and `TableFilter` (no
    COPY blocks there) and then loading only the chosen tables' data objects.
    """

    def load(self, selection: Selection, into: ConnInfo, secret: str | None) -> Loaded: ...


def table_source(source: BackupSource, major: int) -> TableSource:
    """The loader for this backup's format."""
    if source.manifest is None:
        raise ParameterError(
            "tables",
            f"needs a dbops backup with a manifest (its row counts check the restored tables); "
            f"{source.url} has none: restore it whole into another database instead",
        )
    if source.format in ("plain", "custom"):
        return DumpTables(source, major)
    if source.format == "parallel":
        return ParallelTables(source, major)
    raise ParameterError(
        "tables", f"cannot restore single tables from a {source.format!r} backup yet"
    )


@dataclass
class DumpTables:
    """A plain dump or a custom archive: one pass over the object, filtered as SQL."""

    source: BackupSource
    major: int

    def load(self, selection: Selection, into: ConnInfo, secret: str | None) -> Loaded:
        known = sorted(self.source.manifest.row_counts) if self.source.manifest else []
        sql_filter = TableFilter(selection, known)
        psql = [part.replace("{dbname}", into.dbname) for part in psql_command(self.major)]
        if self.source.format == "plain":
            reader, verified = stream_into(self.source, psql, into.child_env(), secret, sql_filter)
        else:
            reader, verified = self._through_pg_restore(psql, sql_filter, into, secret)
        return Loaded(reader.size, reader.hexdigest(), verified, sql_filter.left_out)

    def _through_pg_restore(
        self,
        psql: list[str],
        sql_filter: TableFilter,
        into: ConnInfo,
        secret: str | None,
        options: tuple[str, ...] = (),
    ):
        """backup -> pg_restore -f - -> filter -> psql; the first failure is the one reported."""
        to_sql = restore_command(self.source, self.major)[:-2] + ["--file", "-", *options]
        env = into.child_env()
        loader = spawn(
            psql, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
        )
        assert loader.stdin is not None and loader.stderr is not None
        tail = StderrTail(loader.stderr)
        read_end, write_end = os.pipe()
        pump = _Pump(os.fdopen(read_end, "rb"), sql_filter, loader.stdin)
        pump.start()
        try:
            try:
                result = stream_into(self.source, to_sql, env, secret, stdout=write_end)
            finally:
                os.close(write_end)
                pump.join()
            if pump.error is not None:
                raise pump.error
            if loader.wait() != 0:
                raise tool_failure("psql", loader.returncode, tail, secret)
            return result
        except DbopsError:
            if pump.error is not None:
                raise pump.error from None
            if loader.poll() not in (None, 0):
                raise tool_failure("psql", loader.returncode, tail, secret) from None
            raise
        finally:
            if loader.poll() is None:
                loader.kill()
                loader.wait()


@dataclass
class ParallelTables:
    """A parallel backup: its schema archive as SQL through the same filter (pre-data, then
    post-data), and between them only the chosen tables' data objects, by `jobs` loaders, and
    the sequence values of the rest of the data section (large objects left out)."""

    source: BackupSource
    major: int
    jobs: int = 2

    def load(self, selection: Selection, into: ConnInfo, secret: str | None) -> Loaded:
        manifest = self.source.manifest
        assert manifest is not None  # table_source refuses a backup without one
        sql_filter = TableFilter(selection, sorted(manifest.row_counts))
        psql = [part.replace("{dbname}", into.dbname) for part in psql_command(self.major)]
        schema = DumpTables(self.source, self.major)
        reader, verified = schema._through_pg_restore(
            psql, sql_filter, into, secret, ("--section=pre-data",)
        )

        def picked(relation: list[str]) -> bool:
            return selection.wants((relation[0], relation[1]), sql_filter.parents)

        def wanted(obj: DataObject) -> bool:  # a batch: read only if it holds a chosen table
            if obj.tables:
                return any(picked(entry.relation) for entry in obj.tables)
            if obj.relation is None:
                return True  # sequence values pass the filter; large objects do not
            return picked(obj.relation)

        sql_filter.next_stream()
        data = load_data(
            self.source, into, self.major, secret, self.jobs, wanted, sql_filter, picked
        )
        sql_filter.next_stream()
        schema._through_pg_restore(psql, sql_filter, into, secret, ("--section=post-data",))
        return Loaded(
            reader.size + data.bytes_read, reader.hexdigest(), verified, sql_filter.left_out
        )


class _Pump(threading.Thread):
    """Moves pg_restore's SQL through the filter into psql; stops reading on the first fault,
    so pg_restore stops too."""

    def __init__(self, stream: IO[bytes], sql_filter: TableFilter, sink: IO[bytes]) -> None:
        super().__init__(daemon=True, name="table-filter")
        self.stream, self.sql_filter, self.sink = stream, sql_filter, sink
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            with self.stream:
                while chunk := self.stream.read(CHUNK_SIZE):
                    self.sink.write(self.sql_filter.feed(chunk))
                self.sink.write(self.sql_filter.finish())
        except BrokenPipeError:
            pass  # psql stopped; its own error is reported
        except Exception as exc:  # noqa: BLE001 - handed to the caller
            self.error = exc
        finally:
            with contextlib.suppress(BrokenPipeError):
                self.sink.close()

"""A streaming filter over pg_dump's SQL: every definition, the rows of the chosen tables only.

pg_dump's plain output (and what `pg_restore -f -` writes from a custom archive) is regular:
each object is a section under a `-- Name: X; Type: T; Schema: S; Owner: O` header, and a
table's rows are one `COPY s.t (cols) FROM stdin;` block ending with a `\\.` line. The filter
keeps every definition (so the chosen tables' types, functions and sequences exist in the
scratch database) and drops the COPY blocks of other tables, large objects and materialized
view refreshes. Tables are recognised by the quoted names of the COPY statement, never by the
unquoted header, so odd identifiers match exactly; partitions are found from the
`ATTACH PARTITION` statements, which come before any data.

Lines are parsed only outside COPY blocks; inside one, the terminator is found with
bytes.find at C speed, so memory stays a chunk and a line whatever the table's size. Outside
them, the filter follows literals, quoted identifiers, dollar-quoted function bodies and
comments across lines (`scan_quotes`), so a function body or a comment that contains a line
shaped like a section header or a COPY statement is passed through as text, never obeyed.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field

from tasks.core.errors import ParameterError
from tasks.core.sql_text import scan_quotes

_IDENT = rb'(?:"(?:[^"]|"")+"|[^\s."(]+)'
_QUALIFIED = rb"(" + _IDENT + rb")\.(" + _IDENT + rb")"
HEADER = re.compile(rb"^-- (?:Data for )?Name: (?P<name>.*); Type: (?P<type>[A-Z ]+); Schema: ")
COPY = re.compile(rb"^COPY " + _QUALIFIED + rb" +(?:\(.*\) +)?FROM stdin;\n$")
CREATE_TABLE = re.compile(rb"^CREATE (?:UNLOGGED |FOREIGN )?TABLE " + _QUALIFIED + rb" ")
ATTACH = re.compile(rb"^ALTER TABLE (?:ONLY )?" + _QUALIFIED + rb" ATTACH PARTITION " + _QUALIFIED)
FOREIGN_KEY = re.compile(
    rb"^ALTER TABLE (?:ONLY )?" + _QUALIFIED + rb"\s+ADD CONSTRAINT (" + _IDENT + rb") FOREIGN KEY "
    rb".*? REFERENCES " + _QUALIFIED + rb"\(",
    re.M | re.S,
)
TERMINATOR = b"\\.\n"
# Sections a table restore never needs: large objects, and refreshes of materialized views
# over tables that are mostly empty in the scratch database.
DROPPED_TYPES = {b"BLOB", b"BLOB METADATA", b"BLOBS", b"LARGE OBJECT", b"MATERIALIZED VIEW DATA"}
DATA_TYPES = {b"TABLE DATA", b"BLOBS", b"MATERIALIZED VIEW DATA", b"SEQUENCE SET"}

Table = tuple[str, str]


def unquote(ident: bytes) -> str:
    text = ident.decode()
    if text.startswith('"'):
        return text[1:-1].replace('""', '"')
    return text


def qualified(schema: str, table: str) -> str:
    """The manifest's spelling of a table: `schema.table`, unquoted."""
    return f"{schema}.{table}"


def closest(name: str, known: list[str]) -> str:
    found = difflib.get_close_matches(name, known, n=3, cutoff=0.5) or sorted(known)[:3]
    return ", ".join(found) if found else "none"


@dataclass
class Selection:
    """Which tables to restore: named ones (with their partitions) and whole schemas."""

    tables: set[Table] = field(default_factory=set)
    schemas: set[str] = field(default_factory=set)

    def wants(self, table: Table, parents: dict[Table, Table]) -> bool:
        seen: set[Table] = set()
        current: Table | None = table
        while current is not None and current not in seen:
            if current in self.tables or current[0] in self.schemas:
                return True
            seen.add(current)
            current = parents.get(current)
        return False


class TableFilter:
    """feed() chunks of SQL in, get the filtered SQL out; finish() at the end of the input."""

    def __init__(self, selection: Selection, known: list[str]) -> None:
        self.selection = selection
        self.known = known  # the manifest's table names, for the unknown-table message
        self.created: set[Table] = set()
        self.parents: dict[Table, Table] = {}
        self.kept: set[Table] = set()
        self._carry = b""
        self._dropping = False  # inside a section that is left out
        self._copy: bool | None = None  # inside a COPY block: keep it or not
        self._checked = False
        self._foreign_key: list[bytes] | None = None  # a FK CONSTRAINT section, held back
        self._quote: bytes | None = None  # inside a literal or function body spanning lines
        self.left_out: list[str] = []  # foreign keys of chosen tables to tables not chosen

    def feed(self, chunk: bytes) -> bytes:
        data = self._carry + chunk
        out: list[bytes] = []
        pos = 0
        while pos < len(data):
            if self._copy is not None:
                pos = self._copy_data(data, pos, out)
                if self._copy is not None:  # the block goes on in the next chunk
                    break
                continue
            end = data.find(b"\n", pos)
            if end < 0:
                break
            line = data[pos : end + 1]
            pos = end + 1
            out.append(self._line(line))
        self._carry = data[pos:]
        return b"".join(out)

    def finish(self) -> bytes:
        rest = self._carry
        self._carry = b""
        self._check_names()
        if not self._dropping and self._copy in (None, True):
            return self._release_foreign_key(rest)
        return self._release_foreign_key(b"")

    def next_stream(self) -> None:
        """Another pg_dump output follows (a parallel backup's sections and data, filtered as
        one): it starts outside any section, literal or COPY block, as the first did."""
        self._carry, self._dropping, self._copy, self._quote = b"", False, None, None

    def _copy_data(self, data: bytes, pos: int, out: list[bytes]) -> int:
        if data.startswith(TERMINATOR, pos):
            end = pos + len(TERMINATOR)
        else:
            found = data.find(b"\n" + TERMINATOR, pos)
            if found < 0:
                last = data.rfind(b"\n", pos)
                if last < 0:
                    return pos
                if self._copy:
                    out.append(data[pos : last + 1])
                return last + 1
            end = found + 1 + len(TERMINATOR)
        if self._copy:
            out.append(data[pos:end])
        self._copy = None
        return end

    def _line(self, line: bytes) -> bytes:
        """Track the line's meaning; returns what goes out. A line inside a literal or a
        function body is never taken for a header or a statement, whatever it says."""
        if self._quote is not None:
            self._quote = scan_quotes(line, self._quote)
            return self._statement_line(line)
        header = HEADER.match(line)
        if header is None and self._foreign_key is not None:
            self._quote = scan_quotes(line, None)
            self._foreign_key.append(line)
            return b""
        if header:
            held = self._release_foreign_key(b"")
            kind = header.group("type")
            if kind == b"FK CONSTRAINT":
                self._foreign_key = [line]
                return held
            if kind in DATA_TYPES:
                self._check_names()
            self._dropping = kind in DROPPED_TYPES or (
                kind in (b"COMMENT", b"ACL", b"SECURITY LABEL")
                and header.group("name").startswith(b"LARGE OBJECT ")
            )
            return held + (b"" if self._dropping else line)
        copy = COPY.match(line)
        if copy is None:
            self._quote = scan_quotes(line, None)
        if copy:
            table = (unquote(copy.group(1)), unquote(copy.group(2)))
            self._copy = not self._dropping and self.selection.wants(table, self.parents)
            if self._copy:
                self.kept.add(table)
            return line if self._copy else b""
        if self._dropping:
            return b""
        created = CREATE_TABLE.match(line)
        if created:
            self.created.add((unquote(created.group(1)), unquote(created.group(2))))
        attach = ATTACH.match(line)
        if attach:
            parent = (unquote(attach.group(1)), unquote(attach.group(2)))
            self.parents[(unquote(attach.group(3)), unquote(attach.group(4)))] = parent
        return line

    def _statement_line(self, line: bytes) -> bytes:
        """A line inside a literal or body goes where its section goes."""
        if self._foreign_key is not None:
            self._foreign_key.append(line)
            return b""
        return b"" if self._dropping else line

    def _release_foreign_key(self, after: bytes) -> bytes:
        """A held FK section goes out unless it ties a chosen table to one not restored:
        its check would fail in the scratch database, where that table has no rows."""
        if self._foreign_key is None:
            return after
        section = b"".join(self._foreign_key)
        self._foreign_key = None
        key = FOREIGN_KEY.search(section)
        if key:
            table = (unquote(key.group(1)), unquote(key.group(2)))
            refers = (unquote(key.group(4)), unquote(key.group(5)))
            if self._has_chosen_rows(table) and not self.selection.wants(refers, self.parents):
                self.left_out.append(
                    f"{qualified(*table)} {key.group(3).decode()} -> {qualified(*refers)}"
                )
                return after
        return section + after

    def _has_chosen_rows(self, table: Table) -> bool:
        """The table is chosen, or one of its partitions is."""
        if self.selection.wants(table, self.parents):
            return True
        for child in self.parents:
            ancestor = self.parents.get(child)
            while ancestor is not None and ancestor != table:
                ancestor = self.parents.get(ancestor)
            if ancestor == table and self.selection.wants(child, self.parents):
                return True
        return False

    def _check_names(self) -> None:
        """Once the definitions are through: every named table must be one of them."""
        if self._checked:
            return
        self._checked = True
        for schema, table in sorted(self.selection.tables):
            if (schema, table) not in self.created:
                name = qualified(schema, table)
                raise ParameterError(
                    "tables",
                    f"{name} is not a table in this backup; closest: {closest(name, self.known)}",
                )

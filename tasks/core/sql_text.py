"""Following pg_dump's SQL text line by line: where literals and function bodies open and close.

A line inside a string literal, a quoted name, a dollar-quoted function body or a block comment
is text, whatever it looks like; the readers of pg_dump's plain output (row counts on the
backup side, the table filter on the restore side) take statements only from lines outside.
"""

from __future__ import annotations

import re

# What opens a literal, a quoted identifier, a dollar-quoted body or a comment in DDL.
_OPENING = re.compile(rb"--|/\*|'|\"|\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$")
_IDENT_CHAR = re.compile(rb"[A-Za-z0-9_$\x80-\xff]")


def scan_quotes(line: bytes, quote: bytes | None) -> bytes | None:
    """The quote still open at the end of `line` (b"'", b'"', a dollar tag, b"*/"), or None.

    pg_dump writes standard_conforming_strings = on, so '...' has no backslash escapes.
    """
    pos = 0
    while True:
        if quote is None:
            found = _OPENING.search(line, pos)
            if found is None or found.group() == b"--":
                return None
            start, token = found.start(), found.group()
            if token.startswith(b"$") and start and _IDENT_CHAR.match(line, start - 1):
                pos = start + 1  # a $ inside an identifier such as a$b$
                continue
            quote, pos = (b"*/" if token == b"/*" else token), found.end()
            continue
        end = line.find(quote, pos)
        if end < 0:
            return quote
        if quote in (b"'", b'"') and line[end + 1 : end + 2] == quote:
            pos = end + 2  # a doubled quote inside
            continue
        quote, pos = None, end + len(quote)

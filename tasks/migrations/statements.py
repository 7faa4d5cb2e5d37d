"""SQL text split into statements the way psql does, so a migration runs as its author wrote it.

Semicolons inside strings, quoted identifiers, dollar quotes, comments,
parentheses and SQL-standard function bodies (BEGIN ATOMIC ... END) do not end
a statement. Each statement keeps the line it starts on, for error messages.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Statement:
    sql: str
    line: int

    @property
    def summary(self) -> str:
        first = self.sql.strip().splitlines()[0] if self.sql.strip() else ""
        return first if len(first) <= 80 else first[:77] + "..."

    @property
    def first_word(self) -> str:
        found = re.match(r"\s*([A-Za-z_]+)", _strip_leading_comments(self.sql))
        return found.group(1).lower() if found else ""


def _strip_leading_comments(text: str) -> str:
    while True:
        text = text.lstrip()
        if text.startswith("--"):
            text = text.split("\n", 1)[1] if "\n" in text else ""
        elif text.startswith("/*") and "*/" in text:
            text = text.split("*/", 1)[1]
        else:
            return text


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\x80-\uffff][A-Za-z0-9_\x80-\uffff]*)?\$")


def split_statements(text: str) -> list[Statement]:
    """Split on top-level semicolons, skipping strings, quoted identifiers, dollar quotes,
    comments, parentheses and SQL-standard function bodies (BEGIN ATOMIC ... END), with
    psql's rule: BEGIN or CASE after a statement's first word opens a block, END closes it."""
    statements: list[Statement] = []
    i, n = 0, len(text)
    start = None  # offset of the statement's first token
    paren = begin_depth = words = 0

    def finish(end: int) -> None:
        nonlocal start, paren, begin_depth, words
        if start is not None:
            body = text[start:end].strip()
            statements.append(Statement(body, text.count("\n", 0, start) + 1))
        start, paren, begin_depth, words = None, 0, 0, 0

    while i < n:
        c = text[i]
        if c.isspace():
            i += 1
            continue
        if text.startswith("--", i):
            end = text.find("\n", i)
            i = n if end < 0 else end + 1
            continue
        if text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            continue
        if c == ";":
            if paren == 0 and begin_depth == 0:
                finish(i)
            i += 1
            continue
        if start is None:
            start = i
        if c == "'":
            i = _skip_quoted(text, i, "'", backslashes=False)
        elif c == '"':
            i = _skip_quoted(text, i, '"', backslashes=False)
        elif c == "$" and (tag := _DOLLAR_TAG.match(text, i)):
            end = text.find(tag.group(0), tag.end())
            i = n if end < 0 else end + len(tag.group(0))
        elif c.isalpha() or c == "_" or ord(c) >= 0x80:
            j = i + 1
            while j < n and (text[j].isalnum() or text[j] in "_$" or ord(text[j]) >= 0x80):
                j += 1
            word = text[i:j].lower()
            if word == "e" and j < n and text[j] == "'":  # E'...' understands backslashes
                i = _skip_quoted(text, j, "'", backslashes=True)
                continue
            words += 1
            if word in ("begin", "case") and words > 1:
                begin_depth += 1
            elif word == "end" and begin_depth > 0:
                begin_depth -= 1
            i = j
        else:
            if c == "(":
                paren += 1
            elif c == ")" and paren > 0:
                paren -= 1
            i += 1
    finish(n)
    return statements


def _skip_quoted(text: str, i: int, quote: str, backslashes: bool) -> int:
    """Offset just past the quoted string starting at text[i]; a doubled quote is literal."""
    i += 1
    n = len(text)
    while i < n:
        c = text[i]
        if backslashes and c == "\\":
            i += 2
            continue
        if c == quote:
            if i + 1 < n and text[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return n

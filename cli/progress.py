"""A progress bar on the terminal while a backup, restore or restore test moves bytes.

Only when stderr is a terminal and the output is not `--json`: a pipe, a log file or a CI
job gets no control characters. The bar listens to the same progress the flows publish as
Prefect progress artifacts (`tasks/core/artifacts.py`).
"""

from __future__ import annotations

import shutil
import sys
from typing import TextIO

WIDTH = 30


def _size(n: int) -> str:
    return f"{n / 2**20:,.1f} MB"


class TerminalBar:
    """`\\r<what> [#####.....]  45%  12.3 MB / 27.0 MB`, redrawn in place; a newline when done."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def __call__(self, what: str, done: int, expected: int, finished: bool) -> None:
        if expected:
            fraction = min(1.0, done / expected)
            filled = int(WIDTH * fraction)
            bar = "#" * filled + "." * (WIDTH - filled)
            line = f"{what} [{bar}] {100 * fraction:3.0f}%  {_size(done)} / {_size(expected)}"
        else:
            line = f"{what}  {_size(done)}"
        columns = shutil.get_terminal_size((80, 24)).columns
        self.stream.write("\r" + line[: columns - 1].ljust(columns - 1))
        if finished:
            self.stream.write("\n")
        self.stream.flush()


def show_progress(as_json: bool, stream: TextIO | None = None) -> bool:
    """Listen to progress with a bar when `stream` (stderr) is a terminal and not `--json`."""
    stream = stream or sys.stderr
    if as_json or not stream.isatty():
        return False
    from tasks.core.artifacts import LISTENERS  # imports Prefect: the flow does anyway

    LISTENERS.append(TerminalBar(stream))
    return True

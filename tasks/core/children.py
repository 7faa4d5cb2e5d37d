"""Child processes (pg_dump, psql, pg_restore) die with dbops.

A dbops killed by the OOM killer or `kill -9` cannot clean up, so its children must not go
on writing a half restore or a half dump: on Linux each child asks the kernel for SIGKILL
when its parent dies (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from typing import Any

PR_SET_PDEATHSIG = 1


def _die_with(parent: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the request took effect
        os._exit(1)


def spawn(command: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
    """subprocess.Popen whose child is killed when this process dies."""
    if sys.platform.startswith("linux"):
        parent = os.getpid()
        kwargs["preexec_fn"] = lambda: _die_with(parent)
    return subprocess.Popen(command, **kwargs)  # noqa: S603 - argv list, no shell

"""Heartbeat pings in the healthchecks.io style, so a monitor outside Prefect notices silence.

A run pings `<url>/start` when it starts, `<url>` when it completed and `<url>/fail` when it
failed or crashed (healthchecks.io, Uptime Kuma push monitors and Cronitor read these). The
monitor alerts when the success ping does not come: it notices a dead worker or Prefect
server too, which nothing inside Prefect can. A ping that cannot be sent is logged, never
raised: a monitor's outage must not fail a backup.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from enum import StrEnum
from typing import Any

from tasks.core.errors import ConfigError

PING_ENV = "DBOPS_PING_URL"


class Ping(StrEnum):
    START = "start"
    SUCCESS = "success"
    FAIL = "fail"


def ping_address(url: str, kind: Ping) -> str:
    """`<url>/start`, `<url>` or `<url>/fail`; a query string stays at the end."""
    if not url.startswith(("https://", "http://")):
        raise ConfigError(f"{PING_ENV} / --ping-url must be an http(s) URL or secret://BLOCK")
    base, sep, query = url.partition("?")
    base = base.rstrip("/")
    if kind is not Ping.SUCCESS:
        base += f"/{kind.value}"
    return base + sep + query


def send_ping(url: str, kind: Ping, body: str = "", timeout: float = 10.0) -> int:
    """POST the ping (a short text body: what happened); returns the HTTP status."""
    request = urllib.request.Request(
        ping_address(url, kind),
        data=body.encode()[:10_000],
        method="POST",
        headers={"Content-Type": "text/plain; charset=utf-8", "User-Agent": "dbops"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        return int(response.status)


def ping(url: str | None, kind: Ping, body: str = "", logger: Any = None) -> bool:
    """Send one ping when a URL is configured; False (and a warning) when it could not be sent.

    `url` may be `secret://BLOCK`: ping URLs carry a monitor's private key. The URL itself is
    never logged. Pass the run's logger so a warning reaches the Prefect server.
    """
    if not url:
        return False
    from prefect.logging import get_logger

    from tasks.core.notify import clean
    from tasks.core.settings import resolve_secret

    logger = logger or get_logger("dbops.ping")
    try:
        resolved = resolve_secret(url) or ""
        status = send_ping(resolved, kind, body)
    except (urllib.error.URLError, TimeoutError, OSError, ConfigError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "code", None) or exc
        logger.warning("could not send the %s ping: %s", kind.value, clean(str(reason)))
        return False
    except Exception as exc:  # noqa: BLE001 - e.g. a missing Secret block: never fail the run
        logger.warning("could not send the %s ping: %s", kind.value, clean(str(exc)))
        return False
    logger.info("%s ping sent (HTTP %s)", kind.value, status)
    return True

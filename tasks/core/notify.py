"""Failure notifications: a short Slack-style message to a webhook when a configured flow fails.

Configured by environment (a deployment's job_variables.env):
DBOPS_WEBHOOK_URL is the webhook (or secret://BLOCK naming a Prefect Secret
that holds it: Slack webhook URLs are secrets), DBOPS_NOTIFY_FLOWS the
comma-separated flow names to report ("*" or unset: every flow that carries
the hook). A notification that cannot be sent is logged, never raised: it
must not hide the failure it reports.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

from tasks.core.errors import ConfigError, TransientError

WEBHOOK_ENV = "DBOPS_WEBHOOK_URL"
FLOWS_ENV = "DBOPS_NOTIFY_FLOWS"
MAX_CHARS = 400
_CREDENTIALS = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")
_PASSWORD = re.compile(r"(password\s*[=:]\s*)\S+", re.I)


def post_webhook(url: str, text: str, timeout: float = 10.0) -> int:
    """POST {"text": ...} as JSON (Slack, Mattermost, Teams workflows, Discord /slack)."""
    if not url.startswith(("https://", "http://")):
        raise ConfigError(f"{WEBHOOK_ENV} must be an http(s) URL or secret://BLOCK")
    body = json.dumps({"text": text}).encode()
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return int(response.status)
    except urllib.error.HTTPError as exc:
        raise ConfigError(f"webhook answered HTTP {exc.code}; check the webhook URL") from None
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransientError(f"webhook unreachable ({reason})") from None


def selected(flow_name: str, wanted: str | None) -> bool:
    names = {n.strip() for n in (wanted or "*").split(",") if n.strip()}
    return not names or "*" in names or flow_name in names


def clean(text: str) -> str:
    """One short line with no credentials, whatever the failure message contained."""
    text = _PASSWORD.sub(r"\1***", _CREDENTIALS.sub(r"\1***@", " ".join(text.split())))
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


def failure_text(flow_name: str, run_name: str, state_name: str, message: str, link: str) -> str:
    text = f":red_circle: dbops `{flow_name}` run `{run_name}` {state_name}: {clean(message)}"
    return text + (f" <{link}|open run>" if link else "")


def _run_link(flow_run: Any, ui_url: str | None) -> str:
    ui = ui_url or ""
    if not ui:
        from prefect.settings import PREFECT_UI_URL

        ui = PREFECT_UI_URL.value() or ""
    return f"{ui.rstrip('/')}/runs/flow-run/{flow_run.id}" if ui else ""


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect on_failure / on_crashed hook."""
    from tasks.core.settings import Settings

    settings = Settings.from_env()
    if not selected(flow.name, settings.notify_flows):
        return
    send(
        lambda: failure_text(
            flow.name,
            flow_run.name,
            state.name,
            state.message or state.name,
            _run_link(flow_run, settings.ui_url),
        ),
        f"failure of {flow.name}",
    )


def send(text: Callable[[], str], what: str) -> bool:
    """Post to DBOPS_WEBHOOK_URL when one is configured; logged, never raised."""
    from prefect.logging import get_logger

    from tasks.core.settings import Settings, resolve_secret

    logger = get_logger("dbops.notify")
    try:
        url = resolve_secret(Settings.from_env().webhook_url)
        if not url:
            return False
        post_webhook(url, text())
        logger.info("%s reported to the webhook", what)
        return True
    except Exception as exc:  # noqa: BLE001 - a notification must never hide the failure
        logger.warning("could not send the notification of %s: %s", what, clean(str(exc)))
        return False


def wants_success(notify_on: str | None) -> bool:
    """DBOPS_NOTIFY_ON lists when to notify: `failure` (the default), `success`, or both."""
    return "success" in {w.strip().lower() for w in (notify_on or "failure").split(",")}


def notify_success(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect on_completion hook: a green line when DBOPS_NOTIFY_ON asks for successes."""
    from prefect.logging import get_logger

    from tasks.core.settings import Settings, resolve_secret

    settings = Settings.from_env()
    if not wants_success(settings.notify_on) or not selected(flow.name, settings.notify_flows):
        return
    try:
        url = resolve_secret(settings.webhook_url)
        if url:
            link = _run_link(flow_run, settings.ui_url)
            text = f":large_green_circle: dbops `{flow.name}` run `{flow_run.name}` completed"
            post_webhook(url, text + (f" <{link}|open run>" if link else ""))
    except Exception as exc:  # noqa: BLE001 - a notification never fails a run that worked
        get_logger("dbops.notify").warning("could not send the notification: %s", clean(str(exc)))


FAILURE_HOOKS: dict[str, list[Any]] = {
    "on_failure": [notify_failure],
    "on_crashed": [notify_failure],
}

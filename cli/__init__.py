"""The `dbops` command line: parses arguments and calls flows, nothing more.

One module per domain, as Prefect's own CLI is laid out; each registers its
commands on the one Typer app of `cli.app`. Human output and progress go to
stderr; `--json` prints one JSON document on stdout. The exit code is 0 only
when the flow run Completed.
"""

# Importing a module registers its commands; this order is the order of `dbops --help`.
# isort: off
from cli import backup, copies, restore, retention, migrations  # noqa: F401
from cli import maintenance, health, security, demo, deployments  # noqa: F401
from cli import metrics, terminal  # noqa: F401  (terminal: --version, --verbose)

# isort: on
from cli.app import app
from cli.preflight import install

install(app)  # bad input is refused before a command imports Prefect

__all__ = ["app", "main"]


def main() -> None:
    app()


if __name__ == "__main__":
    main()

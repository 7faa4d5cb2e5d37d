"""How fast `dbops` refuses bad input, against `python -c pass` and `import prefect` in the same run.

Each command runs as a fresh process, interleaved, `--repeat` times; the report gives medians and
ratios to the bare interpreter. Bad input (no database URL, a malformed URL, a missing file, an
unknown option value) must be answered before Prefect is imported: the `import prefect` and
`import flows.backup` rows show what every one of them would cost otherwise.

    uv run python benchmarks/cli_startup.py                 # 7 repeats
    uv run python benchmarks/cli_startup.py --repeat 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
DBOPS = str(BIN / "dbops")

COMMANDS: dict[str, list[str]] = {
    "python -c pass (baseline)": [sys.executable, "-c", "pass"],
    "dbops --version": [DBOPS, "--version"],
    "dbops backup (no DATABASE_URL)": [DBOPS, "backup"],
    "dbops backup --database-url (malformed)": [
        DBOPS,
        "backup",
        "--database-url",
        "postgresql://u@h:port/d",
    ],
    "dbops backup --format tar": [DBOPS, "backup", "--format", "tar"],
    "dbops restore ./missing.sql.gz": [
        DBOPS,
        "restore",
        "./missing.sql.gz",
        "--database-url",
        "postgresql://u@h/d",
    ],
    "python -c 'import prefect'": [sys.executable, "-c", "import prefect"],
    "python -c 'import flows.backup'": [sys.executable, "-c", "import flows.backup"],
}


def run_once(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(argv, cwd=REPO, env=env, capture_output=True, check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PREFECT_API_URL")}
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.repeat):  # interleaved: a busy moment hits every command alike
        for name, argv in COMMANDS.items():
            times[name].append(run_once(argv, env))
    base = statistics.median(times["python -c pass (baseline)"])
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    )
    print(f"repeats: {args.repeat} (interleaved), median wall time of a fresh process\n")
    print("| command | median s | min s | x baseline |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.3f} | {min(values):.3f} | {median / base:.1f} |")


if __name__ == "__main__":
    main()

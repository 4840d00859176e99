"""Sync mode: every decorated call runs inline in the caller's thread, as plain Python would.

This is what `PYNENC__DEV_MODE_FORCE_SYNC_TASKS=True` gives a pynenc_lite program: no runner,
no database file, the same values and exceptions (arguments and results still make the pickle
round trip, so what would fail on a worker fails here too). Use it in tests and while writing
the code.

    python samples/direct_task_demo/sample_sync.py     # Sync mode: 5 reports in 2.50s
"""

from __future__ import annotations

# Runnable from the repo root or from this folder without installing anything: put this
# folder (for `tasks`) and the repo root (for `pynenc_lite`) on the import path.
import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
for _path in (str(_HERE.parents[1]), str(_HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import time  # noqa: E402
from typing import Any  # noqa: E402

from demo_output import print_reports  # noqa: E402
from tasks import PERIODS, app, generate_report  # noqa: E402


def run_sync() -> tuple[float, list[dict[str, Any]]]:
    """Call `generate_report` for every period in a loop; returns (seconds, reports)."""
    start = time.perf_counter()
    reports = [generate_report(period) for period in PERIODS]
    return time.perf_counter() - start, reports


def main() -> None:
    # The same as PYNENC__DEV_MODE_FORCE_SYNC_TASKS=True, set by assignment (the
    # highest-precedence source) so that this script runs in sync mode whatever the
    # environment says.
    app.conf.dev_mode_force_sync_tasks = True
    seconds, reports = run_sync()
    print_reports("Sync mode", seconds, reports)


if __name__ == "__main__":
    main()

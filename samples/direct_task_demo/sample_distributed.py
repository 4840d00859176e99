"""Distributed mode with the runner in this process: `with app.runner:` starts a ThreadRunner
in a background thread, and each `generate_report(period)` call becomes an invocation that a
runner thread claims, runs and completes.

- Sequential calls: the loop is unchanged, so each call still waits for the previous one:
  5 x 0.5 s = 2.5 s. The runner gives nothing here; it shows the call costs almost nothing.
- Concurrent caller threads: five callers (ThreadPoolExecutor(5).map) each wait for their own
  report while the runner runs all five at once: 0.5 s.

    python samples/direct_task_demo/sample_distributed.py
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
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from typing import Any  # noqa: E402

from demo_output import print_reports  # noqa: E402
from tasks import PERIODS, app, generate_report  # noqa: E402


def run_sequential() -> tuple[float, list[dict[str, Any]]]:
    """The original loop, one blocking call after another (needs a running runner)."""
    start = time.perf_counter()
    reports = [generate_report(period) for period in PERIODS]
    return time.perf_counter() - start, reports


def run_concurrent_callers() -> tuple[float, list[dict[str, Any]]]:
    """One caller thread per period, each making the same blocking call (needs a runner)."""
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=len(PERIODS)) as pool:
        reports = list(pool.map(generate_report, PERIODS))
    return time.perf_counter() - start, reports


def main() -> None:
    # Distributed whatever PYNENC__DEV_MODE_FORCE_SYNC_TASKS says: assignment beats the
    # environment.
    app.conf.dev_mode_force_sync_tasks = False
    with app.runner:  # a ThreadRunner in a background thread; stopped at the end of the block
        print_reports("Sequential calls on runner", *run_sequential())
        print_reports("Concurrent caller threads", *run_concurrent_callers())


if __name__ == "__main__":
    main()

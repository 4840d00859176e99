"""Parallel fan-out: ONE call, `generate_reports(periods=PERIODS)`, runs as one invocation per
period on the runner (from `parallel_func`), and `aggregate_func` joins the parts' results in
input order. The caller stays a single blocking call: 0.5 s for 5 reports.

    python samples/direct_task_demo/sample_parallel.py
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
from tasks import PERIODS, app, generate_reports  # noqa: E402


def run_parallel_fanout() -> tuple[float, list[dict[str, Any]]]:
    """One call that fans out over the runner's threads (needs a running runner)."""
    start = time.perf_counter()
    reports = generate_reports(periods=PERIODS)
    return time.perf_counter() - start, reports


def main() -> None:
    # Distributed whatever PYNENC__DEV_MODE_FORCE_SYNC_TASKS says: assignment beats the
    # environment.
    app.conf.dev_mode_force_sync_tasks = False
    with app.runner:  # a ThreadRunner in a background thread; stopped at the end of the block
        print_reports("Parallel fan-out", *run_parallel_fanout())


if __name__ == "__main__":
    main()

"""The demo's tasks: `tasks_original.py` with pynenc_lite added.

What changed, and nothing else did:
- `from pynenc_lite import Pynenc` and `app = Pynenc("direct_task_demo", ...)`;
- `@app.direct_task` on `generate_report`: `generate_report("2024-01")` still blocks and
  returns the report (or raises the task's exception), but the work runs on the app's runner;
- `@app.direct_task(parallel_func=..., aggregate_func=...)` on `generate_reports`: one call
  fans out into one invocation per period, and the results come back in input order.

The database is a new file per run in the temp folder (see `demo_db.py`); a real project
would write just `app = Pynenc("direct_task_demo")`.
"""

from __future__ import annotations

import time
from typing import Any

import demo_db

from pynenc_lite import Pynenc

PERIODS = ["2024-01", "2024-02", "2024-03", "2024-04", "2024-05"]
REPORT_SECONDS = 0.5  # how long one report takes: the slow part of the story

DB_PATH = demo_db.temporary_db_path("direct_task_demo")
app = Pynenc("direct_task_demo", config_values={"sqlite_db_path": DB_PATH})
demo_db.remove_at_exit(app, DB_PATH)


def _build_report(period: str) -> dict[str, Any]:
    """The sales figures of one month ("2024-03"), the same every time for the same month."""
    time.sleep(REPORT_SECONDS)  # stands in for the slow part: a database query, an API call
    year, month = (int(part) for part in period.split("-"))
    orders = 800 + 37 * month + 3 * (year % 100)
    revenue = round(orders * (42.5 + 1.75 * month), 2)
    return {
        "period": period,
        "revenue": revenue,
        "orders": orders,
        "aov": round(revenue / orders, 2),  # average order value
    }


@app.direct_task
def generate_report(period: str) -> dict[str, Any]:
    """The sales report of one month."""
    return _build_report(period)


def _per_period(args: dict[str, Any]) -> list[tuple[list[str]]]:
    """parallel_func: the arguments of each part; `args` holds the call's arguments by name.
    Each part is `generate_reports([period])`, run as its own invocation."""
    return [([period],) for period in args["periods"]]


def _flatten(chunks: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """aggregate_func: the parts' results (lists of one report), in input order, as one list."""
    return [report for chunk in chunks for report in chunk]


@app.direct_task(parallel_func=_per_period, aggregate_func=_flatten)
def generate_reports(periods: list[str]) -> list[dict[str, Any]]:
    """The reports of several months, in the order given.

    It calls the plain `_build_report`, not the `generate_report` task, so a part running on
    a worker thread never blocks that thread waiting for another task.
    """
    return [_build_report(period) for period in periods]

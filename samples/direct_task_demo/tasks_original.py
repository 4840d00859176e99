"""The demo's starting point: plain Python, no pynenc_lite.

A slow `generate_report(period)` called in a loop. `tasks.py` is this file with pynenc_lite
added: one import, `app = Pynenc(...)`, and a decorator on each function; no call site changes.

    python tasks_original.py      # Plain Python: 5 reports in 2.50s
"""

from __future__ import annotations

import time
from typing import Any

PERIODS = ["2024-01", "2024-02", "2024-03", "2024-04", "2024-05"]
REPORT_SECONDS = 0.5  # how long one report takes: the slow part of the story


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


def generate_report(period: str) -> dict[str, Any]:
    """The sales report of one month."""
    return _build_report(period)


def generate_reports(periods: list[str]) -> list[dict[str, Any]]:
    """The reports of several months, in the order given."""
    return [_build_report(period) for period in periods]


if __name__ == "__main__":
    from demo_output import print_reports

    start = time.perf_counter()
    reports = [generate_report(period) for period in PERIODS]
    print_reports("Plain Python", time.perf_counter() - start, reports)

"""How every script of the demo prints a run: the same lines whatever the mode.

    Sync mode: 5 reports in 2.50s
      2024-01: revenue 40,223.25, orders 909, AOV 44.25
      ...
"""

from __future__ import annotations

from typing import Any


def format_report(report: dict[str, Any]) -> str:
    """One report as one line: period, revenue, orders and average order value."""
    return (
        f"  {report['period']}: revenue {report['revenue']:,.2f}, "
        f"orders {report['orders']:,}, AOV {report['aov']:,.2f}"
    )


def print_reports(mode: str, seconds: float, reports: list[dict[str, Any]]) -> None:
    """Print `<mode>: N reports in X.XXs`, then one line per report."""
    print(f"{mode}: {len(reports)} reports in {seconds:.2f}s")
    for report in reports:
        print(format_report(report))

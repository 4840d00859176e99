"""Core benchmark of pynenc_lite with an in-process ThreadRunner, in one run so the figures
sit side by side:

1. the seed scenarios: 5 slow reports (0.5 s each) in sync mode, sequentially on the runner,
   from 5 caller threads, and as one parallel fan-out; time and ratio to the ideal;
2. round-trip latency of a blocking no-op `direct_task` call (p50, p99);
3. throughput of no-op tasks end to end (`task.parallelize` then the results), next to
   `concurrent.futures.ThreadPoolExecutor` doing the same work in the same run.

    python benchmarks/bench_core.py            # about 10 s
    python benchmarks/bench_core.py --quick    # about 3 s: 0.1 s reports, fewer calls

Targets are printed beside the figures, never asserted: this is a benchmark, not a test.
Each section is a function `Settings -> Section`; a later file (worker processes, TCP) can
reuse `_util` and this file's SECTIONS pattern.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import logging
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

# _util first: it puts the repo root on sys.path, so that pynenc_lite imports from a checkout.
import _util
from _util import Section, format_rate, format_seconds, make_app, median, percentile

from pynenc_lite import Pynenc

PERIODS = ["2024-01", "2024-02", "2024-03", "2024-04", "2024-05"]


@dataclasses.dataclass(frozen=True)
class Settings:
    """How big a run is (see `--quick`)."""

    report_seconds: float = 0.5  # the seed's slow report
    latency_calls: int = 2000
    warmup_calls: int = 200
    throughput_tasks: int = 2000
    repeats: int = 5  # throughput runs; the median is reported
    threads: int = 16  # runner threads, and the ThreadPoolExecutor's workers
    scratch: str = ""  # folder for this run's SQLite files


FULL = Settings()
QUICK = Settings(report_seconds=0.1, latency_calls=500, warmup_calls=100,
                 throughput_tasks=1000, repeats=3)


# -- task functions (module level, so their names resolve like real tasks) -----------------


def slow_report(period: str, seconds: float) -> str:
    """The seed's report: slow, then a value that depends on the argument."""
    time.sleep(seconds)
    return f"report {period}"


def slow_reports(periods: list[str], seconds: float) -> list[str]:
    """Several reports; with `_per_period` one call fans out into one part per period."""
    return [slow_report(period, seconds) for period in periods]


def _per_period(args: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [([period], args["seconds"]) for period in args["periods"]]


def _flatten(chunks: list[list[str]]) -> list[str]:
    return [report for chunk in chunks for report in chunk]


def echo(value: int) -> int:
    """The latency probe: returns its argument."""
    return value


def noop(value: int) -> int:
    """The throughput unit of work: returns its argument."""
    return value


# -- sections -----------------------------------------------------------------------------


def _ideal_row(section: Section, figure: str, seconds: float, ideal: float) -> None:
    over = seconds / ideal - 1.0
    verdict = "meets" if over <= 0.02 else "misses"
    section.add(
        figure,
        format_seconds(seconds),
        f"ideal {ideal:.2f} s, <= +2%",
        f"x{seconds / ideal:.3f} of ideal ({over:+.1%}): {verdict}",
    )


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = call()
    return time.perf_counter() - start, value


def bench_seed_scenarios(s: Settings) -> Section:
    """The four scenarios of the seed issue: 5 slow reports, four ways."""
    section = Section(f"seed scenarios: 5 reports of {s.report_seconds} s")
    n, one = len(PERIODS), s.report_seconds
    expected = [f"report {period}" for period in PERIODS]

    with contextlib.closing(make_app("bench_seed_sync", sync=True)) as sync_app:
        sync_report = sync_app.direct_task(slow_report)
        seconds, reports = _timed(lambda: [sync_report(p, one) for p in PERIODS])
    assert reports == expected, reports
    _ideal_row(section, "sync mode: loop of 5 calls, inline", seconds, n * one)

    db = os.path.join(s.scratch, "seed.sqlite3")
    with contextlib.closing(make_app("bench_seed", db, max_threads=s.threads)) as app:
        _seed_on_runner(app, s, section)
    return section


def _seed_on_runner(app: Pynenc, s: Settings, section: Section) -> None:
    n, one = len(PERIODS), s.report_seconds
    expected = [f"report {period}" for period in PERIODS]
    report = app.direct_task(slow_report)
    reports_task = app.direct_task(parallel_func=_per_period, aggregate_func=_flatten)(
        slow_reports
    )
    with app.runner:
        report("warm-up", 0.0)  # opens the database and starts the threads
        seconds, reports = _timed(lambda: [report(p, one) for p in PERIODS])
        assert reports == expected, reports
        _ideal_row(section, "sequential calls on runner", seconds, n * one)

        with ThreadPoolExecutor(max_workers=n) as callers:
            callers.submit(lambda: None).result()  # start a caller thread outside the timing
            seconds, reports = _timed(
                lambda: list(callers.map(lambda p: report(p, one), PERIODS))
            )
        assert reports == expected, reports
        _ideal_row(section, f"{n} concurrent caller threads", seconds, one)

        seconds, reports = _timed(lambda: reports_task(periods=PERIODS, seconds=one))
        assert reports == expected, reports
        _ideal_row(section, "parallel fan-out (parallel_func)", seconds, one)


def bench_latency(s: Settings) -> Section:
    """Blocking round trip of a no-op direct_task with the runner in this process."""
    section = Section("round trip: blocking no-op direct_task, runner in this process")
    app = make_app("bench_latency", os.path.join(s.scratch, "latency.sqlite3"),
                   max_threads=s.threads)
    probe = app.direct_task(echo)
    samples = []
    with contextlib.closing(app), app.runner:
        for i in range(s.warmup_calls):
            probe(i)
        gc.collect()
        for i in range(s.latency_calls):
            start = time.perf_counter()
            value = probe(i)
            samples.append(time.perf_counter() - start)
            assert value == i
    calls = f"{s.latency_calls:,} calls after {s.warmup_calls} warm-up"
    p50 = percentile(samples, 0.5)
    section.add("p50", format_seconds(p50), "<= 1 ms", f"{calls}: " +
                ("meets" if p50 <= 0.001 else "misses"))
    section.add("p99", format_seconds(percentile(samples, 0.99)))
    section.add("mean", format_seconds(sum(samples) / len(samples)))
    section.add("max", format_seconds(max(samples)))
    return section


def bench_throughput(s: Settings) -> Section:
    """No-op tasks end to end through in-process threads, against ThreadPoolExecutor."""
    n = s.throughput_tasks
    section = Section(f"throughput: {n:,} no-op tasks end to end, {s.threads} threads")
    app = make_app("bench_throughput", os.path.join(s.scratch, "throughput.sqlite3"),
                   max_threads=s.threads)
    task = app.task(noop)
    expected = list(range(n))
    ours, theirs = [], []
    with contextlib.closing(app), app.runner, ThreadPoolExecutor(s.threads) as pool:
        task.parallelize([(i,) for i in range(100)]).get_results()  # warm-up
        list(pool.map(noop, range(10 * s.threads)))  # start every pool thread
        for _ in range(s.repeats):
            gc.collect()
            seconds, results = _timed(
                lambda: task.parallelize([(i,) for i in range(n)]).get_results()
            )
            assert results == expected
            ours.append(n / seconds)
            gc.collect()
            seconds, results = _timed(
                lambda: [f.result() for f in [pool.submit(noop, i) for i in range(n)]]
            )
            assert results == expected
            theirs.append(n / seconds)
    ours_median, theirs_median = median(ours), median(theirs)
    runs = ", ".join(f"{rate / 1000:.1f}k" for rate in ours)
    section.add(
        "pynenc_lite: parallelize + get_results",
        format_rate(ours_median),
        ">= 10,000 tasks/s",
        f"median of {s.repeats} ({runs}): " + ("meets" if ours_median >= 10_000 else "misses"),
    )
    runs = ", ".join(f"{rate / 1000:.0f}k" for rate in theirs)
    section.add(
        "ThreadPoolExecutor: submit + result",
        format_rate(theirs_median),
        "",
        f"median of {s.repeats} ({runs})",
    )
    section.add(
        "pynenc_lite / ThreadPoolExecutor",
        f"{ours_median / theirs_median:.3f}",
        "",
        "the price of storing every call and outcome in SQLite",
    )
    return section


SECTIONS: list[Callable[[Settings], Section]] = [
    bench_seed_scenarios,
    bench_latency,
    bench_throughput,
]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Core benchmark of pynenc_lite with an in-process ThreadRunner."
    )
    parser.add_argument("--quick", action="store_true",
                        help="a smaller run: 0.1 s reports, fewer calls and repeats")
    parser.add_argument("--log-tasks", action="store_true",
                        help="keep the library's default INFO output (two lines per task)")
    parser.add_argument("--section-timeout", type=float, default=120.0, metavar="SECONDS",
                        help="print every thread's stack and exit 1 if a section takes longer "
                             "(default 120)")
    options = parser.parse_args(argv)
    # A program that configures its own logging, as services do: the library's default
    # output (pynenc's INFO line per task start and finish, on stderr) would otherwise be
    # measured too. Run with --log-tasks to see its price.
    if not options.log_tasks:
        logging.basicConfig(level=logging.WARNING)
    print(f"pynenc_lite core benchmark, {datetime.date.today().isoformat()}"
          f"{' (--quick)' if options.quick else ''}")
    for line in _util.machine_lines():
        print(line)
    print(flush=True)
    sections = []
    started = time.perf_counter()
    with _util.scratch_dir("pynenc-lite-bench-") as scratch:
        settings = dataclasses.replace(QUICK if options.quick else FULL, scratch=scratch)
        print(f"scratch folder: {scratch} (removed when the run ends normally)", file=sys.stderr)
        for bench in SECTIONS:
            print(f"running: {bench.__doc__}", file=sys.stderr, flush=True)
            with _util.watchdog(options.section_timeout):
                sections.append(bench(settings))
    print(_util.render_table(sections))
    print(f"\n(total {time.perf_counter() - started:.1f} s; at the end, {_util.load_average()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

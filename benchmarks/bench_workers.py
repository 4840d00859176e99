"""Worker processes on one host: round trip, throughput and idle cost.

    python benchmarks/bench_workers.py [--quick]

Starts `python -m pynenc_lite.worker worker_tasks:app` as real worker processes sharing one
SQLite file with this caller process, and measures, in one run:
  1. blocking no-op round trip (direct_task) with the worker in another process: p50/p99;
  2. 2,000 no-op tasks end to end through 2 worker processes, next to
     multiprocessing.Pool(2) doing the same 2,000 calls (apply_async + get);
  3. CPU used by an idle worker (supervisor + its processes) over 10 s, once the load has
     settled (CPU time is counted in 10 ms ticks, so shorter windows are coarse).
Targets on a 2-core machine: p50 <= 3 ms, >= 8,000 tasks/s, idle <= 1 % of a core.
Prints a table; asserts nothing (speed is measured here, not in tests).
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # run from anywhere: the tasks and the package

import worker_tasks  # noqa: E402
from _util import percentile, stop_process_group  # noqa: E402


def start_worker(db: str, processes: int, threads: int) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYNENC__")}
    env.update(PYNENC__SQLITE_DB_PATH=db, PYTHONPATH=f"{HERE}{os.pathsep}{ROOT}")
    return subprocess.Popen(
        [sys.executable, "-m", "pynenc_lite.worker", "worker_tasks:app",
         "--processes", str(processes), "--threads", str(threads), "--log-level", "WARNING"],
        cwd=HERE, env=env, start_new_session=True,
    )


def wait_for_workers(db: str, count: int, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with contextlib.closing(sqlite3.connect(db)) as conn:
                pids = [r[0] for r in conn.execute("SELECT pid FROM workers")]
            if len(pids) >= count:
                return pids
        except sqlite3.Error:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{count} worker processes did not start within {timeout}s")


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def round_trip(calls: int) -> tuple[float, float]:
    for i in range(200):  # warm up connections and the worker's wake-up
        worker_tasks.echo(i)
    samples = []
    for i in range(calls):
        start = time.perf_counter()
        worker_tasks.echo(i)
        samples.append(time.perf_counter() - start)
    return percentile(samples, 0.5) * 1e3, percentile(samples, 0.99) * 1e3


def throughput(count: int) -> float:
    start = time.perf_counter()
    group = worker_tasks.noop.parallelize([(i,) for i in range(count)])
    results = group.get_results(timeout=120)
    elapsed = time.perf_counter() - start
    assert results == list(range(count))
    return count / elapsed


def pool_throughput(count: int) -> float:
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        pool.apply(worker_tasks.plain_noop, (0,))  # processes up before timing
        start = time.perf_counter()
        pending = [pool.apply_async(worker_tasks.plain_noop, (i,)) for i in range(count)]
        results = [p.get(timeout=120) for p in pending]
        elapsed = time.perf_counter() - start
    assert results == list(range(count))
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    args = parser.parse_args()
    calls, repeats, idle_seconds = (300, 1, 2.0) if args.quick else (2000, 3, 10.0)
    print(f"# {platform.python_implementation()} {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, {platform.machine()}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        db = os.path.join(tmp, "bench.sqlite3")
        worker_tasks.app.conf.sqlite_db_path = db
        worker = start_worker(db, processes=2, threads=8)
        try:
            wait_for_workers(db, 2)
            p50, p99 = round_trip(calls)
            rows.append(("round trip, worker in another process: p50", f"{p50:.2f} ms", "<= 3 ms"))
            rows.append(("round trip, worker in another process: p99", f"{p99:.2f} ms", ""))
            ours = statistics.median(throughput(2000) for _ in range(repeats))
            pool = statistics.median(pool_throughput(2000) for _ in range(repeats))
            rows.append(("2,000 no-ops, 2 worker processes", f"{ours:,.0f} tasks/s", ">= 8,000"))
            rows.append(("2,000 no-ops, multiprocessing.Pool(2)", f"{pool:,.0f} tasks/s", ""))
            rows.append(("  ratio pynenc_lite / Pool", f"{ours / pool:.2f}x", ""))
            pids = [worker.pid, *wait_for_workers(db, 2)]
            # Let the load above settle (its last checkpoint copies the WAL back, heartbeats
            # reset the back-off) before measuring what an idle worker costs.
            time.sleep(3.0)
            before = sum(cpu_seconds(p) for p in pids)
            time.sleep(idle_seconds)  # measuring idleness: nothing to wait for
            used = sum(cpu_seconds(p) for p in pids) - before
            rows.append((f"idle worker CPU over {idle_seconds:.0f} s (3 processes)",
                         f"{100 * used / idle_seconds:.2f} % of a core", "<= 1 %"))
        finally:
            stop_process_group(worker)
            worker_tasks.app.close()
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>18}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>18}  {target}")


if __name__ == "__main__":
    main()

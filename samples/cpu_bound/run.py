"""CPU-bound work scales with worker processes, not with threads.

    python3 samples/cpu_bound/run.py

Runs the same batch of CPU-bound tasks three ways and prints the times: plain Python in a
loop, a ThreadRunner (threads in this process: the GIL lets one run at a time), and a
ProcessRunner with one single-threaded worker process per CPU (the command-line
equivalent: `python3 -m pynenc_lite.worker cpu_tasks:app --processes 2 --threads 1`). On a
2-core machine the process runner should take about half the time of the others.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

# Runnable from anywhere without installing: this folder (for cpu_tasks, which worker
# processes import too) and the repository root (for pynenc_lite).
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

from cpu_tasks import app, count_primes, primes_below  # noqa: E402

from pynenc_lite import ProcessRunner, ThreadRunner  # noqa: E402

LIMITS = [150_000] * 8


def timed(label: str, run: object) -> float:
    start = time.perf_counter()
    results = run()  # type: ignore[operator]
    seconds = time.perf_counter() - start
    assert results == [count_primes(LIMITS[0])] * len(LIMITS) or label == "plain", results
    print(f"{label:<34} {seconds:6.2f} s")
    return seconds


def main() -> None:
    cpus = os.cpu_count() or 1
    print(f"{len(LIMITS)} tasks counting primes below {LIMITS[0]:,}, {cpus} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        app.conf.sqlite_db_path = os.path.join(tmp, "cpu.sqlite3")
        app.conf.dev_mode_force_sync_tasks = False
        plain = timed("plain Python loop", lambda: [count_primes(n) for n in LIMITS])

        def through(runner: object) -> list[int]:
            with runner:  # type: ignore[attr-defined]
                return primes_below.parallelize([(n,) for n in LIMITS]).get_results(timeout=300)

        timed("ThreadRunner, 8 threads", lambda: through(ThreadRunner(app, threads=8)))
        # One thread per process: a CPU-bound task keeps its process's GIL busy, and idle
        # threads would only make one process claim work the others could run.
        procs = timed(
            f"ProcessRunner, {cpus} processes x 1 thread",
            lambda: through(ProcessRunner(app, processes=cpus, threads=1)),
        )
        app.close()
    print(f"speed-up of worker processes over the plain loop: {plain / procs:.2f}x")


if __name__ == "__main__":
    main()

"""The TCP server and the tcp:// backend next to SQLite direct, in one run.

    python benchmarks/bench_tcp.py [--quick]

For each way to reach the queue — the SQLite file directly, and `python -m pynenc_lite.server`
over loopback TCP — and each place the work runs — a ThreadRunner in the caller's process,
and 2 worker processes (`python -m pynenc_lite.worker worker_tasks:app --processes 2`) — it
measures:
  1. blocking no-op round trip (a direct_task call): p50 / p99;
  2. 2,000 no-op tasks end to end (`parallelize` then the results): tasks/s, median of runs.
Targets for TCP on a 2-core machine: p50 <= 5 ms; >= 3,000 tasks/s. Prints a table and
asserts nothing.

Every measurement runs in a fresh caller process (this script with `--phase`), so each one
gets an app configured only by environment variables, as a user's would be.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import secrets
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Iterator

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]  # run from anywhere: the tasks and the package

from _util import percentile, stop_process_group  # noqa: E402

_URL_LINE = re.compile(r"PYNENC__BROKER_URL=(\S+)")


# -- one measurement, in its own process -------------------------------------------------------


def run_phase(args: argparse.Namespace) -> dict[str, Any]:
    """Measure with `worker_tasks.app` configured by the environment; returns the figures."""
    import worker_tasks

    app = worker_tasks.app
    runner = app.runner if args.in_process else nullcontext()
    samples, rates = [], []
    with runner:
        if not args.in_process:
            deadline = time.monotonic() + 60
            while app.backend.count_live_workers(app.app_id, time.time() - 10) < args.workers:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{args.workers} workers did not show up within 60 s")
                time.sleep(0.05)  # waiting for other processes to start
        for i in range(200):  # warm up connections, threads and wake-ups
            worker_tasks.echo(i)
        for i in range(args.calls):
            start = time.perf_counter()
            assert worker_tasks.echo(i) == i
            samples.append(time.perf_counter() - start)
        worker_tasks.noop.parallelize([(i,) for i in range(100)]).get_results(timeout=120)
        for _ in range(args.repeats):
            start = time.perf_counter()
            results = worker_tasks.noop.parallelize([(i,) for i in range(args.tasks)]).get_results(
                timeout=120
            )
            rates.append(args.tasks / (time.perf_counter() - start))
            assert results == list(range(args.tasks))
    return {
        "p50_ms": percentile(samples, 0.5) * 1e3 if samples else 0.0,
        "p99_ms": percentile(samples, 0.99) * 1e3 if samples else 0.0,
        "rate": statistics.median(rates),
        "rates": rates,
    }


# -- the parent: servers, workers, phases ------------------------------------------------------


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYNENC__")}
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT)])
    env.update(extra)
    return env


def start_server(tmp: str) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """A server on a free loopback port; returns it and the client settings it printed."""
    secret_file = os.path.join(tmp, "secret")
    with open(os.open(secret_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
        f.write(secrets.token_urlsafe(32))
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pynenc_lite.server",
            "--db",
            os.path.join(tmp, "server.sqlite3"),
            "--bind",
            "127.0.0.1:0",
            "--secret-file",
            secret_file,
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.PIPE,
        env=child_env({}),
        start_new_session=True,
    )
    assert proc.stdout is not None
    text = ""
    while not _URL_LINE.search(text):
        line = proc.stdout.readline().decode()
        if not line:
            raise RuntimeError(f"the server did not start:\n{text}")
        text += line
    url = _URL_LINE.search(text).group(1)  # type: ignore[union-attr]
    return proc, {"PYNENC__BROKER_URL": url, "PYNENC__BROKER_SECRET_FILE": secret_file}


def start_workers(env: dict[str, str], processes: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pynenc_lite.worker",
            "worker_tasks:app",
            "--processes",
            str(processes),
            "--threads",
            "8",
            "--log-level",
            "WARNING",
        ],
        cwd=HERE,
        env=child_env(env),
        start_new_session=True,
    )


def measure(env: dict[str, str], args: argparse.Namespace, in_process: bool) -> dict[str, Any]:
    command = [sys.executable, __file__, "--phase", "--calls", str(args.calls)]
    command += ["--tasks", str(args.tasks), "--repeats", str(args.repeats), "--workers", "2"]
    command += ["--in-process"] * in_process
    out = subprocess.run(
        command, env=child_env(env), cwd=HERE, check=True, timeout=600, stdout=subprocess.PIPE
    ).stdout
    return json.loads(out.decode().strip().splitlines()[-1])  # type: ignore[no-any-return]


def scenarios(tmp: str) -> Iterator[tuple[str, dict[str, str]]]:
    yield "SQLite direct", {"PYNENC__SQLITE_DB_PATH": os.path.join(tmp, "direct.sqlite3")}
    server, env = start_server(tmp)
    try:
        yield "TCP server", env
    finally:
        stop_process_group(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and repeats")
    parser.add_argument("--phase", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--in-process", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--calls", type=int, default=2000, help=argparse.SUPPRESS)
    parser.add_argument("--tasks", type=int, default=2000, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    # A program that configures its own logging, as services do (see bench_core): the
    # library's default per-task INFO lines would otherwise be measured with the runner in
    # the caller's process.
    logging.basicConfig(level=logging.WARNING)
    if args.phase:
        print(json.dumps(run_phase(args)))
        return
    if args.quick:
        args.calls, args.repeats = 300, 1
    print(
        f"# {platform.python_implementation()} {platform.python_version()}, "
        f"SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, {platform.machine()}"
    )
    rows: list[tuple[str, str, str]] = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for name, env in scenarios(tmp):
            tcp = name.startswith("TCP")
            for in_process in (True, False):
                where = "runner in the caller" if in_process else "2 worker processes"
                print(f"running: {name}, {where}", file=sys.stderr, flush=True)
                workers = None if in_process else start_workers(env, 2)
                try:
                    f = measure(env, args, in_process)
                finally:
                    stop_process_group(workers)
                label = f"{name}, {where}"
                rows.append(
                    (f"{label}: round trip p50", f"{f['p50_ms']:.2f} ms", "<= 5 ms" if tcp else "")
                )
                rows.append((f"{label}: round trip p99", f"{f['p99_ms']:.2f} ms", ""))
                runs = ", ".join(f"{r:,.0f}" for r in f["rates"])
                rows.append(
                    (
                        f"{label}: {args.tasks:,} no-ops",
                        f"{f['rate']:,.0f} tasks/s",
                        (">= 3,000  " if tcp else "") + f"(runs: {runs})",
                    )
                )
    width = max(len(r[0]) for r in rows)
    print(f"{'measure':<{width}}  {'value':>16}  target")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>16}  {target}")
    print(f"(total {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()

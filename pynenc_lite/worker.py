"""`python -m pynenc_lite.worker TARGET`: run an app's tasks in worker processes.

    python -m pynenc_lite.worker tasks:app --processes 4 --threads 8

Start it in one or more terminals (on one host they share the SQLite file; on other hosts
set PYNENC__BROKER_URL to a pynenc_lite server). SIGINT/SIGTERM stop it gracefully: running
tasks get `shutdown_grace_seconds`, unfinished work is handed back, and it exits 0; a second
signal stops at once (the work is then recovered through its lease).

Before starting anything it checks that the storage answers (over TCP, it keeps trying for
`broker_retry_seconds`). Storage that cannot be used at start ends the command with one line
saying what to fix; so does a worker process that cannot use it as it starts (it is not
started again and again). Storage that fails later, while tasks run, is retried.

Without --processes it follows the app's configuration, as pynenc's `runner start` does:
`runner_cls = "ProcessRunner"` (or pynenc's process runner names) starts `runner_processes`
processes (0: one per CPU), a `runner_cls` set to "ThreadRunner" runs threads in this
process, and with neither set it supervises one worker process.

An app whose module defines no task is served all the same (with a warning): a task is
found by its name, `module.function`, by importing its module when its first invocation
arrives, as pynenc finds tasks.

Exit codes: 0 after a clean stop (or a drained queue with --burst); 2 for a bad target, a
module that does not import, or storage that cannot be used at start
(a database that cannot be opened, a server that cannot be reached) by the command or by a
worker process.
"""

from __future__ import annotations

import signal

if __name__ == "__main__" and hasattr(signal, "pthread_sigmask"):
    # First thing, before the imports below: a stop asked for while they run stays pending
    # until the runner's handlers are in place (see `main`), instead of killing the command.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})

import argparse  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from typing import Optional, Sequence  # noqa: E402

from pynenc_lite.conf import PynencConfig  # noqa: E402
from pynenc_lite.errors import BackendError, PynencError  # noqa: E402
from pynenc_lite.loading import load_app  # noqa: E402
from pynenc_lite.runner import ProcessRunner, ThreadRunner  # noqa: E402
from pynenc_lite.runner.base import block_stop_signals, storage_problem, unblock_stop_signals  # noqa: E402
from pynenc_lite.runtime import runtime_of  # noqa: E402

logger = logging.getLogger("pynenc_lite.worker")


def build_parser() -> argparse.ArgumentParser:
    """The command line of the worker (also used for --help)."""
    parser = argparse.ArgumentParser(
        prog="python -m pynenc_lite.worker",
        description="Run the tasks of a pynenc_lite app until stopped (Ctrl-C or SIGTERM).",
        epilog="Exit codes: 0 after a clean stop; 2 for a bad target "
        "or storage that cannot be used at start (a database that cannot be opened, a "
        "server that cannot be reached), one line saying what to fix.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "target",
        help="the app: module:attr, a module holding exactly one Pynenc app, or a path to a "
        ".py file (optionally file.py:attr)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=None,
        help="worker processes to start and supervise (a dead one is replaced); 0 runs the "
        "threads in this process, unsupervised (default: from the app's runner_cls and "
        "runner_processes settings, else 1)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads per process (default: the app's max_threads setting)",
    )
    parser.add_argument(
        "--db",
        default=None,
        help="SQLite database file (default: the app's sqlite_db_path setting, else "
        "<app_id>.pynenc.sqlite3 in the current folder)",
    )
    parser.add_argument(
        "--burst",
        action="store_true",
        help="run what is queued now, then exit 0 instead of waiting for more",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default: the app's logging_level setting, INFO unless "
        "configured; DEBUG also shows tracebacks of failed imports)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the worker command line; returns the exit code."""
    # SIGINT/SIGTERM wait (blocked, so pending) until the runner has installed its handlers:
    # a stop asked for while the app is still importing is then a clean stop, not a kill.
    block_stop_signals()
    try:
        return _main(argv)
    finally:
        unblock_stop_signals()


def _main(argv: Optional[Sequence[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level or "INFO",  # until the app's own setting is known
        format="%(asctime)s %(levelname)s [%(processName)s] %(name)s: %(message)s",
    )
    if (args.processes is not None and args.processes < 0) or (
        args.threads is not None and args.threads < 1
    ):
        parser.error("--processes must be >= 0 and --threads >= 1")
    try:
        app, target = load_app(args.target)
        if args.log_level is None:
            logging.getLogger().setLevel(app.conf.logging_level)
        if args.db:
            app.conf.sqlite_db_path = args.db
            if app.conf.broker_url:
                # An explicit file beats a server named by the environment, as in the admin
                # command: the user typed it on this very command line.
                logger.info("--db %s given: not using broker_url %s", args.db, app.conf.broker_url)
                app.conf.broker_url = None
        if not app.tasks:
            logger.warning(
                "app %r (%s) has no tasks in its module; each task's module is imported by "
                "name when its first invocation arrives (a module that does not import on "
                "this worker fails that invocation, saying so)",
                app.app_id,
                target,
            )
        # A queue in this process's memory (pynenc's Mem* components) is empty for any
        # other process: a worker command, supervising or not, has nothing to serve.
        runtime_of(app).require_shared_storage("the worker command")
        processes = _processes(args.processes, app.conf)
        backend = app.backend
        problem = storage_problem(runtime_of(app))  # opens (creates) the database now
        if problem is not None:
            raise BackendError(problem)
    except PynencError as exc:
        return _fail(exc)
    threads = args.threads or app.conf.max_threads
    logger.info(
        "worker for app %r (%s) on %r; tasks: %s; %s x %d threads",
        app.app_id,
        target,
        backend,
        ", ".join(sorted(app.tasks)),
        f"{processes} processes" if processes else "this process",
        threads,
    )
    try:
        if processes == 0:
            ThreadRunner(app, threads=threads).run(burst=args.burst)
        else:
            ProcessRunner(app, processes=processes, threads=threads, target=target).run(
                burst=args.burst
            )
    except BackendError as exc:  # a worker process could not use the storage at its start
        return _fail(exc)
    return 0


def _processes(given: Optional[int], conf: PynencConfig) -> int:
    """Worker processes to start: --processes, else what the configuration says (see the
    module docstring)."""
    if given is not None:
        return given
    if conf.runner_cls == "ProcessRunner" and conf.source_of("runner_cls") != "default":
        return conf.runner_processes or (os.cpu_count() or 1)
    if conf.source_of("runner_cls") != "default":
        return 0  # a thread runner was asked for: threads in this process
    if conf.source_of("runner_processes") != "default" and conf.runner_processes:
        return conf.runner_processes
    return 1


def _fail(exc: PynencError) -> int:
    """Say in one line what stopped the command (DEBUG adds the traceback); returns 2."""
    logger.debug("the worker command stopped", exc_info=True)
    print(f"pynenc_lite.worker: error: {exc}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())

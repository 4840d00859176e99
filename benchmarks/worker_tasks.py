"""Tasks for bench_workers.py, importable by worker processes as `worker_tasks`."""

from __future__ import annotations

from pynenc_lite import Pynenc

app = Pynenc("bench_workers")


@app.direct_task
def echo(x: int) -> int:
    return x


@app.task
def noop(x: int) -> int:
    return x


def plain_noop(x: int) -> int:
    """The same work for multiprocessing.Pool, which needs a plain picklable function."""
    return x

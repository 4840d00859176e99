"""Small helpers shared by the benchmark scripts: statistics, the results table, the machine
header, scratch folders, and apps configured so that the environment cannot change them.

Stdlib only. It measures nothing itself; each `bench_*.py` file does, section by section.
"""

from __future__ import annotations

import contextlib
import dataclasses
import faulthandler
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    # Runnable from a checkout without installing: `python benchmarks/bench_core.py`.
    sys.path.insert(0, str(REPO_ROOT))

from pynenc_lite import Pynenc  # noqa: E402

# -- statistics ---------------------------------------------------------------------------


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of `values` (`fraction` 0.5 is the median, 0.99 is p99).

    Raises:
        ValueError: `values` is empty or `fraction` is outside [0, 1].
    """
    if not values:
        raise ValueError("percentile of no values")
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be within [0, 1], got {fraction}")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * fraction // 1))  # ceil(n * fraction), at least 1
    return ordered[int(rank) - 1]


def stop_process_group(process: Optional[subprocess.Popen[bytes]]) -> None:
    """SIGTERM a process started with `start_new_session=True` and its children (a worker
    and its worker processes, a server); SIGKILL them if they are not gone in 30 s."""
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def median(values: Sequence[float]) -> float:
    """The median of `values` (the mean of the two middle ones for an even count)."""
    return statistics.median(values)


# -- formatting ---------------------------------------------------------------------------


def format_seconds(seconds: float) -> str:
    """`2.503 s` for seconds, `0.412 ms` below a tenth of a second."""
    if seconds >= 0.1:
        return f"{seconds:.3f} s"
    return f"{seconds * 1000:.3f} ms"


def format_rate(per_second: float, unit: str = "tasks/s") -> str:
    """`12,345 tasks/s`."""
    return f"{per_second:,.0f} {unit}"


@dataclasses.dataclass
class Row:
    """One figure of a results table: what, how much, what it should be, and a remark."""

    figure: str
    measured: str
    target: str = ""
    note: str = ""


@dataclasses.dataclass
class Section:
    """A titled group of rows; each benchmark section returns one."""

    title: str
    rows: list[Row] = dataclasses.field(default_factory=list)

    def add(self, figure: str, measured: str, target: str = "", note: str = "") -> None:
        self.rows.append(Row(figure, measured, target, note))


HEADERS = ("figure", "measured", "target", "note")


def render_table(sections: Sequence[Section]) -> str:
    """All sections as one plain-text table, the figures side by side, a title per section."""
    cells = [HEADERS] + [
        (row.figure, row.measured, row.target, row.note)
        for section in sections
        for row in section.rows
    ]
    widths = [max(len(cell[i]) for cell in cells) for i in range(len(HEADERS))]
    rule = "  ".join("-" * width for width in widths)

    def line(cell: Sequence[str]) -> str:
        text = (
            f"{cell[0]:<{widths[0]}}  {cell[1]:>{widths[1]}}  "
            f"{cell[2]:<{widths[2]}}  {cell[3]}"
        )
        return text.rstrip()

    out = [line(HEADERS), rule]
    for section in sections:
        out.append(f"[{section.title}]")
        out.extend(line((r.figure, r.measured, r.target, r.note)) for r in section.rows)
    return "\n".join(out)


# -- the machine --------------------------------------------------------------------------


def machine_lines() -> list[str]:
    """What the figures were measured on: CPUs, Python, SQLite, OS, and any PYNENC__ settings
    in the environment (the benchmarks override the ones that matter, but they are shown)."""
    pynenc_env = sorted(name for name in os.environ if name.startswith("PYNENC__"))
    return [
        library_line(),
        f"cpus: {os.cpu_count()}   python: {platform.python_implementation()} "
        f"{platform.python_version()}   sqlite: {sqlite3.sqlite_version}",
        f"os: {platform.platform()}   {load_average()}",
        f"PYNENC__ variables in the environment: {', '.join(pynenc_env) or 'none'}",
    ]


def library_line() -> str:
    """Which pynenc_lite is measured: its version, folder and, in a git checkout, the commit
    (read-only git commands; "+ uncommitted changes" when pynenc_lite/ differs from it)."""
    import pynenc_lite

    folder = Path(pynenc_lite.__file__).resolve().parent
    line = f"pynenc_lite {pynenc_lite.__version__} from {folder}"
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True,
            text=True, timeout=10, check=True,
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "."], cwd=folder, capture_output=True,
            text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return line  # not a git checkout, or no git
    return f"{line} (git {commit}{' + uncommitted changes' if changed else ''})"


def load_average() -> str:
    """`load average: 0.31 0.25 0.20` where the OS tells it: other work on the machine
    (a load near or above the CPU count) makes every figure here worse and noisier."""
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):  # not on Windows
        return "load average: unknown"
    return f"load average: {one:.2f} {five:.2f} {fifteen:.2f}"


# -- scratch space and apps ---------------------------------------------------------------


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """If the block takes more than `seconds`, print every thread's stack and exit (status 1),
    so that a hang in the library shows where it is instead of stalling the run."""
    faulthandler.dump_traceback_later(seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[str]:
    """A new folder in the temp folder, removed with everything in it afterwards."""
    path = tempfile.mkdtemp(prefix=prefix)
    try:
        yield path
    finally:
        # ignore_errors: where an open file cannot be deleted, a stray file in the temp
        # folder is not a reason to lose the printed results.
        shutil.rmtree(path, ignore_errors=True)


def make_app(
    app_id: str, db_path: Optional[str] = None, *, sync: bool = False, max_threads: int = 16
) -> Pynenc:
    """An app whose benchmark-relevant settings are fixed by assignment, the source that
    beats the environment, so a stray PYNENC__... variable cannot change what is measured.

    Args:
        app_id: the app's name (one per app, so registries never mix).
        db_path: its SQLite file; required unless `sync`.
        sync: run every call inline (dev_mode_force_sync_tasks).
        max_threads: threads of its ThreadRunner.

    Raises:
        ValueError: no `db_path` for an app that is not sync.
    """
    if db_path is None and not sync:
        raise ValueError(f"make_app({app_id!r}): db_path is needed unless sync=True")
    app = Pynenc(app_id)  # use it as `with contextlib.closing(make_app(...)) as app:`
    app.conf.dev_mode_force_sync_tasks = sync
    app.conf.max_threads = max_threads
    if db_path is not None:
        app.conf.sqlite_db_path = db_path
    return app


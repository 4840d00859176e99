"""Runners: what claims stored invocations and runs them.

`ThreadRunner` runs them on threads of the current process; `ProcessRunner` supervises
worker processes that each run a `ThreadRunner`.
"""

from typing import Any

from pynenc_lite.execution import RunningInvocation, current_invocation
from pynenc_lite.runner.process_runner import ProcessRunner
from pynenc_lite.runner.thread_runner import ThreadRunner

# pynenc's names: its process-based runners are one ProcessRunner here.
MultiThreadRunner = PersistentProcessRunner = ProcessRunner

__all__ = [
    "MultiThreadRunner",
    "PersistentProcessRunner",
    "ProcessRunner",
    "RunningInvocation",
    "ThreadRunner",
    "current_invocation",
]


def __getattr__(name: str) -> Any:
    # pynenc's submodule paths under this module (see pynenc_lite.pynenc_paths).
    from pynenc_lite import pynenc_paths

    return pynenc_paths.submodule(__name__, name)

"""Runners: what claims stored invocations and runs them.

`ThreadRunner` runs them on threads of the current process; `ProcessRunner` supervises
worker processes that each run a `ThreadRunner`.
"""

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

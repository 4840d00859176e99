"""Runners: what claims stored invocations and runs them.

`ThreadRunner` runs them on threads of the current process; `ProcessRunner` supervises
worker processes that each run a `ThreadRunner`.
"""

from pynenc_lite.execution import RunningInvocation, current_invocation
from pynenc_lite.runner.process_runner import ProcessRunner
from pynenc_lite.runner.thread_runner import ThreadRunner

__all__ = ["ProcessRunner", "RunningInvocation", "ThreadRunner", "current_invocation"]

"""Runners: what claims stored invocations and runs them.

`ThreadRunner` runs them on threads of the current process.
"""

from pynenc_lite.runner.execution import RunningInvocation, current_invocation
from pynenc_lite.runner.thread_runner import ThreadRunner

__all__ = ["RunningInvocation", "ThreadRunner", "current_invocation"]

"""pynenc_lite: run slow Python functions on workers with one decorator, on the standard
library alone.

    from pynenc_lite import Pynenc
    app = Pynenc()

    @app.direct_task
    def generate_report(period): ...   # call sites unchanged: blocks, returns the value
"""

import importlib
from typing import TYPE_CHECKING, Any

from pynenc_lite import pynenc_paths

# The public names, imported on first use (PEP 562), so that `import pynenc_lite` costs
# almost nothing: a command line such as `python -m pynenc_lite.worker` then takes over its
# signals before the heavy imports, and a program pays only for what it uses.
_EXPORTS = {
    "Pynenc": "pynenc_lite.app",
    "PynencBuilder": "pynenc_lite.builder",
    "PynencConfig": "pynenc_lite.conf",
    "CronSchedule": "pynenc_lite.cron",
    "Invocation": "pynenc_lite.invocation",
    "InvocationGroup": "pynenc_lite.invocation",
    "ConcurrencyControlType": "pynenc_lite.options",
    "TaskOptions": "pynenc_lite.options",
    "ProcessRunner": "pynenc_lite.runner",
    "ThreadRunner": "pynenc_lite.runner",
    "RunningInvocation": "pynenc_lite.execution",
    "current_invocation": "pynenc_lite.execution",
    "InvocationStatus": "pynenc_lite.status",
    "DirectTask": "pynenc_lite.task",
    "Task": "pynenc_lite.task",
    **{
        name: "pynenc_lite.errors"
        for name in (
            "BackendError", "ConcurrencyControlledError", "ConfigError", "CronError",
            "InvocationCancelledError", "InvocationNotFoundError", "InvocationTimeoutError",
            "PynencError", "RemoteTaskError", "RetryError", "SerializationError",
            "TaskNotFoundError", "TaskTimeLimitError", "WorkerLostError",
        )
    },
}

if TYPE_CHECKING:  # what type checkers and readers see
    from pynenc_lite.app import Pynenc
    from pynenc_lite.builder import PynencBuilder
    from pynenc_lite.conf import PynencConfig
    from pynenc_lite.cron import CronSchedule
    from pynenc_lite.errors import (
        BackendError,
        ConcurrencyControlledError,
        ConfigError,
        CronError,
        InvocationCancelledError,
        InvocationNotFoundError,
        InvocationTimeoutError,
        PynencError,
        RemoteTaskError,
        RetryError,
        SerializationError,
        TaskNotFoundError,
        TaskTimeLimitError,
        WorkerLostError,
    )
    from pynenc_lite.execution import RunningInvocation, current_invocation
    from pynenc_lite.invocation import Invocation, InvocationGroup
    from pynenc_lite.options import ConcurrencyControlType, TaskOptions
    from pynenc_lite.runner import ProcessRunner, ThreadRunner
    from pynenc_lite.status import InvocationStatus
    from pynenc_lite.task import DirectTask, Task

__version__ = "0.1.0"

pynenc_paths.install()  # pynenc's import paths (pynenc_lite.conf.config_task, ...)


def __getattr__(name: str) -> Any:
    module_name = _EXPORTS.get(name)
    if module_name is None:
        return pynenc_paths.submodule(__name__, name)  # pynenc's paths, or AttributeError
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value  # next time without this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


__all__ = [
    "BackendError",
    "ConcurrencyControlType",
    "ConcurrencyControlledError",
    "ConfigError",
    "CronError",
    "CronSchedule",
    "DirectTask",
    "Invocation",
    "InvocationCancelledError",
    "InvocationGroup",
    "InvocationNotFoundError",
    "InvocationStatus",
    "InvocationTimeoutError",
    "ProcessRunner",
    "Pynenc",
    "PynencBuilder",
    "PynencConfig",
    "PynencError",
    "RemoteTaskError",
    "RetryError",
    "RunningInvocation",
    "SerializationError",
    "Task",
    "TaskNotFoundError",
    "TaskOptions",
    "TaskTimeLimitError",
    "ThreadRunner",
    "WorkerLostError",
    "current_invocation",
]

"""pynenc_lite: run slow Python functions on workers with one decorator, on the standard
library alone.

    from pynenc_lite import Pynenc
    app = Pynenc()

    @app.direct_task
    def generate_report(period): ...   # call sites unchanged: blocks, returns the value
"""

from pynenc_lite import pynenc_paths
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
from pynenc_lite.invocation import Invocation, InvocationGroup
from pynenc_lite.options import ConcurrencyControlType, TaskOptions
from pynenc_lite.runner import (
    ProcessRunner,
    RunningInvocation,
    ThreadRunner,
    current_invocation,
)
from pynenc_lite.status import InvocationStatus
from pynenc_lite.task import DirectTask, Task

__version__ = "0.1.0"

pynenc_paths.register()  # pynenc's import paths (pynenc_lite.conf.config_task, ...)

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

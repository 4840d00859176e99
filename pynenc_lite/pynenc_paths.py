"""pynenc's import paths under `pynenc_lite`, for programs that change only the module name.

    from pynenc_lite.conf.config_task import ConcurrencyControlType
    from pynenc_lite.invocation.status import InvocationStatus
    from pynenc_lite.invocation import DistributedInvocation
    from pynenc_lite.builder import PynencBuilder

Some of pynenc's paths run through a module of ours (`conf`, `invocation`, `runner`) that is
not a package, so they cannot be files; each is a thin module made here and registered in
`sys.modules` under its pynenc name, holding only re-exports of our own objects (`PATHS`
lists them all; a test imports every one). pynenc's class names that name our classes
differently (`DistributedInvocation` for `Invocation`, `PersistentProcessRunner` for
`ProcessRunner`) are listed here too, as aliases.

Nothing here has behaviour: it is names. The package's `__init__` registers them on import.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from pynenc_lite import errors
from pynenc_lite.invocation import Invocation, InvocationGroup
from pynenc_lite.options import ConcurrencyControlType, TaskOptions
from pynenc_lite.runner import ProcessRunner, ThreadRunner
from pynenc_lite.status import InvocationStatus
from pynenc_lite.task import Arguments, DirectTask, Task

# pynenc module path (under pynenc_lite) -> the names it exports here.
PATHS: dict[str, dict[str, Any]] = {
    "pynenc_lite.conf.config_task": {
        "ConcurrencyControlType": ConcurrencyControlType,
        "ConfigTask": TaskOptions,
    },
    "pynenc_lite.invocation.status": {"InvocationStatus": InvocationStatus},
    "pynenc_lite.invocation.dist_invocation": {
        "DistributedInvocation": Invocation,
        "DistributedInvocationGroup": InvocationGroup,
    },
    "pynenc_lite.invocation.conc_invocation": {
        "ConcurrentInvocation": Invocation,
        "ConcurrentInvocationGroup": InvocationGroup,
    },
    "pynenc_lite.invocation.base_invocation": {
        "BaseInvocation": Invocation,
        "BaseInvocationGroup": InvocationGroup,
    },
    "pynenc_lite.runner.thread_runner": {"ThreadRunner": ThreadRunner},
    "pynenc_lite.runner.process_runner": {"ProcessRunner": ProcessRunner},
    "pynenc_lite.runner.multi_thread_runner": {"MultiThreadRunner": ProcessRunner},
    "pynenc_lite.runner.persistent_process_runner": {"PersistentProcessRunner": ProcessRunner},
    "pynenc_lite.arguments": {"Arguments": Arguments},
    "pynenc_lite.exceptions": {
        "PynencError": errors.PynencError,
        "RetryError": errors.RetryError,
        "ConfigError": errors.ConfigError,
        "InvocationNotFoundError": errors.InvocationNotFoundError,
        "SerializationError": errors.SerializationError,
        "ConcurrencyControlledError": errors.ConcurrencyControlledError,
    },
}
# Names added to our own modules that pynenc programs import from them.
ALIASES: dict[str, dict[str, Any]] = {
    "pynenc_lite.invocation": {
        "DistributedInvocation": Invocation,
        "DistributedInvocationGroup": InvocationGroup,
        "ConcurrentInvocation": Invocation,
        "ConcurrentInvocationGroup": InvocationGroup,
        "BaseInvocation": Invocation,
        "BaseInvocationGroup": InvocationGroup,
    },
    "pynenc_lite.runner": {
        "MultiThreadRunner": ProcessRunner,
        "PersistentProcessRunner": ProcessRunner,
    },
    "pynenc_lite.task": {"Task": Task, "DirectTask": DirectTask},
}


def register() -> None:
    """Make every path in `PATHS` importable and every name in `ALIASES` present
    (idempotent; a real module of ours is never replaced)."""
    for path, names in PATHS.items():
        module = sys.modules.get(path)
        if module is None:
            module = types.ModuleType(path, f"pynenc's {path.split('.', 1)[1]}: re-exports")
            module.__dict__.update(names)
            module.__all__ = sorted(names)  # type: ignore[attr-defined]
            sys.modules[path] = module
        else:
            for name, value in names.items():
                setattr(module, name, value)
    for path, names in ALIASES.items():
        module = sys.modules[path]
        for name, value in names.items():
            if getattr(module, name, value) is not value:
                raise RuntimeError(f"{path}.{name} exists already; not aliasing it")
            setattr(module, name, value)

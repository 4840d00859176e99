"""pynenc's import paths under `pynenc_lite`, for programs that change only the module name.

    from pynenc_lite.conf.config_task import ConcurrencyControlType
    from pynenc_lite.invocation.status import InvocationStatus
    from pynenc_lite.exceptions import RetryError

Some of pynenc's paths run through a module of ours (`conf`, `invocation`) that is not a
package, so they cannot be files. Each is a small module registered in `sys.modules` when the
package is imported (`install()`), holding only re-exports of our own objects, looked up on
first use: `PATHS` lists every path and name, and a test imports each one in a fresh
interpreter. Names that live in
our real modules under pynenc's spelling (`DistributedInvocation` in `invocation`,
`PersistentProcessRunner` in `runner`) are plain aliases there.

Nothing here has behaviour, and nothing is imported before a pynenc path is: importing
`pynenc_lite` stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
from typing import Any

# pynenc module path (under pynenc_lite) -> name -> where the object is ("module:attr").
PATHS: dict[str, dict[str, str]] = {
    "pynenc_lite.conf.config_task": {
        "ConcurrencyControlType": "pynenc_lite.options:ConcurrencyControlType",
        "ConfigTask": "pynenc_lite.options:TaskOptions",
    },
    "pynenc_lite.invocation.status": {"InvocationStatus": "pynenc_lite.status:InvocationStatus"},
    "pynenc_lite.invocation.dist_invocation": {
        "DistributedInvocation": "pynenc_lite.invocation:Invocation",
        "DistributedInvocationGroup": "pynenc_lite.invocation:InvocationGroup",
    },
    "pynenc_lite.invocation.conc_invocation": {
        "ConcurrentInvocation": "pynenc_lite.invocation:Invocation",
        "ConcurrentInvocationGroup": "pynenc_lite.invocation:InvocationGroup",
    },
    "pynenc_lite.invocation.base_invocation": {
        "BaseInvocation": "pynenc_lite.invocation:Invocation",
        "BaseInvocationGroup": "pynenc_lite.invocation:InvocationGroup",
    },
    "pynenc_lite.runner.multi_thread_runner": {
        "MultiThreadRunner": "pynenc_lite.runner:ProcessRunner",
    },
    "pynenc_lite.runner.persistent_process_runner": {
        "PersistentProcessRunner": "pynenc_lite.runner:ProcessRunner",
    },
    "pynenc_lite.arguments": {"Arguments": "pynenc_lite.task:Arguments"},
    "pynenc_lite.exceptions": {
        name: f"pynenc_lite.errors:{name}"
        for name in ("PynencError", "RetryError", "ConfigError", "InvocationNotFoundError",
                     "SerializationError", "ConcurrencyControlledError")
    },
}


def _module_for(path: str) -> types.ModuleType:
    """A module whose names are looked up on first use (PEP 562), so registering it imports
    nothing."""
    names = PATHS[path]
    module = types.ModuleType(path, f"pynenc's {path.split('.', 1)[1]}: re-exports")

    def lookup(name: str) -> Any:
        where = names.get(name)
        if where is None:
            raise AttributeError(f"module {path!r} has no attribute {name!r}")
        module_name, _, attr = where.partition(":")
        value = getattr(importlib.import_module(module_name), attr)
        setattr(module, name, value)
        return value

    module.__getattr__ = lookup  # type: ignore[method-assign]
    module.__all__ = sorted(names)  # type: ignore[attr-defined]
    module.__spec__ = importlib.machinery.ModuleSpec(path, None, origin=__name__)
    return module


def submodule(parent: str, name: str) -> types.ModuleType:
    """`parent.name` when it is one of pynenc's paths, for the parent's module `__getattr__`
    (so `import pynenc_lite.conf.config_task` followed by the dotted access works).

    Raises:
        AttributeError: it is not.
    """
    path = f"{parent}.{name}"
    if path not in PATHS:
        raise AttributeError(f"module {parent!r} has no attribute {name!r}")
    install()
    return sys.modules[path]


def install() -> None:
    """Make every path in `PATHS` importable (idempotent; a module already there, ours or
    the user's, is left alone)."""
    for path in PATHS:
        if path not in sys.modules:
            sys.modules[path] = _module_for(path)

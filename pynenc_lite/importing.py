"""Finding an object by its dotted name, and the name by which another process finds an
object: the one importer behind task names, `retry_for` names, pickled task references and
worker processes' app targets.

    "pkg.module.func"         the longest prefix that imports as a module, then attributes
    "pkg.module:Outer.func"   an explicit split: module before the colon, attributes after

It only imports and looks up attributes. What a missing object means (a task a worker cannot
find, a bad `retry_for` name) is for the caller to say, with its own error.
"""

from __future__ import annotations

import builtins
import importlib
import sys
from typing import Any

from pynenc_lite.errors import TargetError


class ImportObjectError(ImportError):
    """A dotted name does not lead to an object; the message says which part failed."""


def import_object(path: str) -> Any:
    """The object a dotted name leads to.

    A name without a module part (`"ConnectionError"`) is looked up in `builtins`.

    Raises:
        ImportObjectError: no prefix of the name imports, or an attribute is missing.
            A module that exists but fails while importing raises its own error instead,
            so the caller sees the real cause (`__cause__` of a wrapping error).
    """
    if ":" in path:
        module_name, _, attrs = path.partition(":")
        return _attributes(_import_module(module_name, path), attrs.split("."), path)
    parts = path.split(".")
    if len(parts) == 1:
        return _attributes(builtins, parts, path)
    for cut in range(len(parts) - 1, 0, -1):
        module_name = ".".join(parts[:cut])
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                continue  # this prefix is not a module; try a shorter one
            raise
        return _attributes(module, parts[cut:], path)
    raise ImportObjectError(f"{path!r}: no part of it is an importable module")


def _import_module(module_name: str, path: str) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and module_name.startswith(exc.name):
            raise ImportObjectError(f"{path!r}: no module named {module_name!r}") from exc
        raise


def _attributes(obj: Any, attrs: list[str], path: str) -> Any:
    for attr in attrs:
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise ImportObjectError(
                f"{path!r}: {getattr(obj, '__name__', type(obj).__name__)} has no attribute "
                f"{attr!r}"
            ) from None
    return obj


def find_target(obj: object) -> str:
    """The `module:attr` under which `obj` (an app) can be imported by another process.

    Raises:
        TargetError: it is not a module-level attribute of any imported module.
    """
    found = []
    for name, module in list(sys.modules.items()):
        for attr, value in list(getattr(module, "__dict__", {}).items()):
            if value is obj:
                found.append(("__main__" if name == "__mp_main__" else name, attr))
    # Prefer the module that defines the app over a script that imported it.
    found.sort(key=lambda name_attr: name_attr[0] == "__main__")
    if found:
        return f"{found[0][0]}:{found[0][1]}"
    raise TargetError(
        f"{obj!r} is not a module-level variable of any imported module, so worker "
        "processes cannot import it; define it at module level (app = Pynenc(...))"
    )

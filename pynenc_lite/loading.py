"""Finding an app from a command-line target, and naming an app so another process can find
it again (worker processes are started with `spawn` and import the app themselves).

Targets: `module:attr`, `module` (holding exactly one `Pynenc`), pynenc's `module.attr`
(when no module has the whole dotted name), or `path/to/file.py`
(optionally `path/to/file.py:attr`). A file's folder is put first on `sys.path`, so its
tasks are importable by module name, in this process and in its worker processes.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from typing import Any

from pynenc_lite.app import Pynenc
from pynenc_lite.errors import TargetError

__all__ = ["TargetError", "load_app"]


def load_app(target: str) -> tuple[Pynenc, str]:
    """Import the app a target names.

    Returns:
        the app, and the canonical `module:attr` target another process can load.

    Raises:
        TargetError: bad syntax, the module does not import, or no single app is there.
    """
    if not target or target.count(":") > 1:
        raise TargetError(f"{target!r} is not a target; use module:attr, module, or file.py")
    module_part, _, attr = target.partition(":")
    if module_part.endswith(".py") or os.sep in module_part:
        module_name = _add_file_to_path(module_part)
    else:
        module_name = module_part
    if not attr and "." in module_name and _is_missing_module(module_name):
        # pynenc's form: `module.app` names the attribute after the last dot.
        module_name, _, attr = module_name.rpartition(".")
    module = _import(module_name)
    if attr:
        app = getattr(module, attr, None)
        if not isinstance(app, Pynenc):
            found = type(app).__name__ if app is not None else "nothing"
            raise TargetError(
                f"{module_name}:{attr} is {found}, not a Pynenc app; "
                f"apps in {module_name}: {_apps_in(module) or 'none'}"
            )
        return app, f"{module_name}:{attr}"
    apps = _apps_in(module)
    if len(apps) != 1:
        raise TargetError(
            f"{module_name} holds {len(apps)} Pynenc apps ({', '.join(apps) or 'none'}); "
            f"name one as {module_name}:<attr>"
        )
    return getattr(module, apps[0]), f"{module_name}:{apps[0]}"


def _add_file_to_path(path: str) -> str:
    if not os.path.isfile(path):
        raise TargetError(f"{path}: no such file")
    folder, filename = os.path.split(os.path.abspath(path))
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return os.path.splitext(filename)[0]


def _import(module_name: str) -> Any:
    if module_name == "__main__" and "__mp_main__" in sys.modules:
        return sys.modules["__mp_main__"]  # a spawned child: the parent's script
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like `python -m`: the current folder is importable
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name or module_name.startswith(f"{exc.name}."):
            raise TargetError(
                f"no module named {module_name!r} (searched from {os.getcwd()}); run from the "
                "folder that holds it, or add that folder to PYTHONPATH"
            ) from exc
        raise TargetError(_import_failure(module_name, exc)) from exc
    except Exception as exc:
        raise TargetError(_import_failure(module_name, exc)) from exc


def _is_missing_module(module_name: str) -> bool:
    """True when no module has this dotted name (its parent may exist)."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.util.find_spec(module_name) is None
    except Exception:
        # The parent is not a package, does not exist, or fails to import: importing it
        # next says which.
        return True


def _import_failure(module_name: str, exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:]
    where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
    return f"importing {module_name} failed{where}: {type(exc).__name__}: {exc}"


def _apps_in(module: Any) -> list[str]:
    return sorted(k for k, v in vars(module).items() if isinstance(v, Pynenc))

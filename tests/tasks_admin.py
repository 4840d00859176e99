"""Tasks for the admin CLI tests (tests/test_admin_cli.py), importable as
`tests.tasks_admin` by the CLI subprocess: `--app tests.tasks_admin:app` loads the app, and
`inspect` imports this module when it unpickles arguments that use `Unloadable`."""

from __future__ import annotations

from typing import Any, NoReturn

from pynenc_lite import Pynenc

app = Pynenc("admin_tests")


@app.task
def add(a: Any, b: Any) -> Any:
    return a + b


@app.task
def fail(message: str) -> NoReturn:
    raise ValueError(message)


def refuse_to_load(note: str) -> NoReturn:
    raise RuntimeError(f"this argument refuses to be unpickled ({note})")


class Unloadable:
    """Pickles fine, but unpickling it raises: what `inspect` meets when an argument's class
    changed or is missing where the CLI runs."""

    def __reduce__(self) -> tuple[Any, ...]:
        return refuse_to_load, ("made by tests",)

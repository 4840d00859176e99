"""The facade: `Pynenc`, the object a program makes and decorates its functions with.

    f(x) ──► Task/DirectTask ──► invoke ──► pickle args ──► backend.submit ──► hub
                                   │ (sync mode)
                                   └──► execution.run_inline in the caller's thread

`Pynenc` holds a `Runtime` (configuration, task registry, lazy backend and hub) and adds what
only the facade knows: the decorators and the choice of runner. Nothing below this module
imports it; tasks, invocations and runners take the runtime. The backend, hub and runner are
made on first use, so an app that only runs in sync mode never opens a database. Change
`conf` before the first distributed call.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Iterable, Optional, TypeVar, Union, overload

from pynenc_lite import logs
from pynenc_lite.backend.base import Backend
from pynenc_lite.conf import PynencConfig
from pynenc_lite.errors import InvocationNotFoundError
from pynenc_lite.invocation import Invocation
from pynenc_lite.invoke import Call, invoke
from pynenc_lite.runner import ProcessRunner, ThreadRunner
from pynenc_lite.runtime import RegisteredTask, Runtime
from pynenc_lite.task import DirectTask, Task
from pynenc_lite.waiting import Hub

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")


class Pynenc:
    """A pynenc_lite application.

    Args:
        app_id: the app's name (default from configuration, else "pynenc"); tasks, data and
            the default database file are per app.
        config_values: configuration fields given in code (see `conf.describe()`).
        config_filepath: a JSON or TOML configuration file.
    """

    def __init__(
        self,
        app_id: Optional[str] = None,
        *,
        config_values: Optional[dict[str, Any]] = None,
        config_filepath: Optional[str] = None,
    ) -> None:
        conf = PynencConfig(
            app_id=app_id, config_values=config_values, config_filepath=config_filepath
        )
        self.runtime = Runtime(conf, owner=self)
        # Guards the lazy creation of _runner.
        self._lock = threading.RLock()
        self._runner: Optional[Union[ThreadRunner, ProcessRunner]] = None

    def __repr__(self) -> str:
        return f"<Pynenc {self.app_id!r}>"

    @property
    def conf(self) -> PynencConfig:
        """The configuration (assignable; see `conf.describe()` for every field)."""
        return self.runtime.conf

    @conf.setter
    def conf(self, conf: PynencConfig) -> None:
        self.runtime.conf = conf

    @property
    def app_id(self) -> str:
        """The app's name."""
        return self.runtime.app_id

    @property
    def tasks(self) -> dict[str, RegisteredTask]:
        """The registered tasks by name (a copy)."""
        return dict(self.runtime.tasks)

    # -- decorators -------------------------------------------------------------------------

    @overload
    def task(self, func: Callable[..., R]) -> Task[R]: ...

    @overload
    def task(self, func: None = None, **options: Any) -> Callable[[Callable[..., R]], Task[R]]: ...

    def task(self, func: Optional[Callable[..., Any]] = None, **options: Any) -> Any:
        """Register a function; calling it returns an `Invocation` at once.

        Usable bare (`@app.task`) or with options (`@app.task(max_retries=3)`).
        """

        def decorate(f: Callable[..., Any]) -> Task[Any]:
            return self._register(Task(self.runtime, f, options))

        return decorate if func is None else decorate(func)

    @overload
    def direct_task(self, func: F) -> F: ...

    @overload
    def direct_task(
        self,
        func: None = None,
        *,
        parallel_func: Optional[Callable[[dict[str, Any]], Iterable[Any]]] = None,
        aggregate_func: Optional[Callable[[list[Any]], Any]] = None,
        **options: Any,
    ) -> Callable[[F], F]: ...

    def direct_task(
        self,
        func: Optional[Callable[..., Any]] = None,
        *,
        parallel_func: Optional[Callable[[dict[str, Any]], Iterable[Any]]] = None,
        aggregate_func: Optional[Callable[[list[Any]], Any]] = None,
        **options: Any,
    ) -> Any:
        """Register a function that keeps its call shape: `f(x)` blocks, returns the value,
        and re-raises the task's own exception with its original type.

        Args:
            parallel_func: `f(arguments_by_name) -> iterable of tuples or dicts`; each item
                becomes one invocation of this function, run in parallel.
            aggregate_func: `f(results_in_input_order) -> value` returned to the caller.
                Required with parallel_func.

        Raises:
            ValueError: parallel_func without aggregate_func (at decoration time).
        """

        def decorate(f: Callable[..., Any]) -> Any:
            task: DirectTask[Any] = DirectTask(
                self.runtime, f, options, parallel_func, aggregate_func
            )
            return self._register(task)

        return decorate if func is None else decorate(func)

    def _register(self, task: Task[R]) -> Task[R]:
        self.runtime.register(task)
        return task

    # -- lazily made parts ------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        """Where invocations are stored (made on first use from the configuration)."""
        return self.runtime.backend

    @property
    def sqlite_db_path(self) -> str:
        """The SQLite file this app uses: `sqlite_db_path`, else `<app_id>.pynenc.sqlite3`
        in the current folder (so processes started in one folder share it)."""
        return self.runtime.sqlite_db_path

    @property
    def hub(self) -> Hub:
        """This process's meeting point for results and work of this app."""
        return self.runtime.hub

    @property
    def runner(self) -> Union[ThreadRunner, ProcessRunner]:
        """The runner chosen by `runner_cls` (ThreadRunner by default): `app.runner.run()`
        works through this app's tasks until `app.runner.stop_runner_loop()`."""
        if self._runner is None:
            with self._lock:
                if self._runner is None:
                    self.conf.reload_if_env_changed()  # the runner reads it as it is now
                    # pynenc prints its runners' INFO lines without any setup; so do we,
                    # unless the program configured logging itself (see `logs`).
                    logs.install_default_handler(self.conf.logging_level, self.conf.log_stream)
                    if self.conf.runner_cls == "ProcessRunner":
                        self._runner = ProcessRunner(self)
                    else:
                        self._runner = ThreadRunner(self)
        return self._runner

    def close(self) -> None:
        """Stop `app.runner` if it runs, stop the watcher, and close database connections
        (in that order, so no thread is left using a closed connection). The app can be used
        again afterwards: the parts are made anew on first use."""
        runner = self._runner
        if runner is not None and runner.is_running:
            runner.stop_runner_loop()
            wait = self.conf.shutdown_grace_seconds + 5.0
            if not runner.wait_until_stopped(wait):
                logger.warning(
                    "%r did not stop within %.0fs; closing its backend anyway", runner, wait
                )
        self.runtime.close()

    # -- calls ------------------------------------------------------------------------------

    def invoke(
        self,
        task: RegisteredTask,
        calls: list[Call],
        *,
        awaited: bool,
        run_at: Optional[float] = None,
    ) -> list[Invocation[Any]]:
        """Turn calls of `task` into invocations (see `invoke.invoke`)."""
        return invoke(self.runtime, task, calls, awaited=awaited, run_at=run_at)

    def purge(self) -> int:
        """Delete everything stored for this app: invocations, results, history, cron state.

        Returns how many invocations were deleted.
        """
        return self.backend.purge(self.app_id)

    def get_invocation(self, invocation_id: str) -> Invocation[Any]:
        """A handle on a stored invocation, by id (for example from another process).

        Raises:
            InvocationNotFoundError: (a LookupError) no such invocation is stored.
        """
        record = self.backend.get_invocation(invocation_id)
        if record is None:
            raise InvocationNotFoundError(self.runtime.not_found_message(invocation_id))
        return Invocation(self.runtime, record.task_name, invocation_id)

    def resolve_task(self, task_name: str) -> RegisteredTask:
        """The task behind a name (see `Runtime.resolve_task`).

        Raises:
            TaskNotFoundError: it cannot be found in this process; the message says why.
        """
        return self.runtime.resolve_task(task_name)

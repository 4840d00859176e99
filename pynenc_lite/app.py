"""The app: configuration, the task registry, the decorators, and the way from a Python call
to a stored invocation (or, in sync mode, to an inline run).

    f(x) ──► Task/DirectTask ──► Pynenc.invoke ──► pickle args ──► backend.submit ──► hub
                                      │ (sync mode)
                                      └──► run inline in the caller's thread, same pickling

The backend, hub and runner are made on first use, so an app that only runs in sync mode
never opens a database. Those lazy parts read the configuration when they are made; change
`conf` before the first distributed call.
"""

from __future__ import annotations

import concurrent.futures
import importlib
import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, TypeVar, Union, overload

from pynenc_lite import serializer
from pynenc_lite.backend.base import Backend, NewInvocation
from pynenc_lite.conf import PynencConfig
from pynenc_lite.errors import InvocationNotFoundError, TaskNotFoundError
from pynenc_lite.invocation import Invocation, LocalOutcome
from pynenc_lite.runner.execution import RunningInvocation, run_coroutine_blocking, running_as
from pynenc_lite.task import Call, DirectTask, Task
from pynenc_lite.waiting import Hub

if TYPE_CHECKING:
    from pynenc_lite.runner import ProcessRunner, ThreadRunner

logger = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])
R = TypeVar("R")


def new_invocation_id() -> str:
    """A fresh, unique invocation id (128 random bits, hex; like uuid4().hex, cheaper)."""
    return os.urandom(16).hex()


class Pynenc:
    """A pynenc_lite application.

    Args:
        app_id: the app's name (default from configuration, else "pynenc"); tasks, data and
            the default database file are per app.
        config_values: configuration fields given in code (see `conf.describe()`).
        config_filepath: a JSON (or, on Python 3.11+, TOML) configuration file.
    """

    def __init__(
        self,
        app_id: Optional[str] = None,
        *,
        config_values: Optional[dict[str, Any]] = None,
        config_filepath: Optional[str] = None,
    ) -> None:
        self.conf = PynencConfig(
            app_id=app_id, config_values=config_values, config_filepath=config_filepath
        )
        self._tasks: dict[str, Task[Any]] = {}
        # Guards the lazy creation of _backend, _hub and _runner.
        self._lock = threading.RLock()
        self._backend: Optional[Backend] = None
        self._hub: Optional[Hub] = None
        self._runner: Optional[Union[ThreadRunner, ProcessRunner]] = None

    def __repr__(self) -> str:
        return f"<Pynenc {self.app_id!r}>"

    @property
    def app_id(self) -> str:
        """The app's name."""
        return str(self.conf.app_id)

    @property
    def tasks(self) -> dict[str, Task[Any]]:
        """The registered tasks by name (a copy)."""
        return dict(self._tasks)

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
            return self._register(Task(self, f, options))

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
            return self._register(DirectTask(self, f, options, parallel_func, aggregate_func))

        return decorate if func is None else decorate(func)

    def _register(self, task: Task[R]) -> Task[R]:
        if task.name in self._tasks:
            logger.debug("task %s registered again; the newest definition wins", task.name)
        self._tasks[task.name] = task
        return task

    # -- lazily made parts ------------------------------------------------------------------

    @property
    def backend(self) -> Backend:
        """Where invocations are stored (made on first use from the configuration)."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = self._make_backend()
        return self._backend

    def _make_backend(self) -> Backend:
        from pynenc_lite.backend.sqlite import SQLiteBackend

        c = self.conf
        if c.broker_url:
            from pynenc_lite.backend.tcp import client as remote

            return remote.backend_from_config(c)
        return SQLiteBackend(
            self.sqlite_db_path,
            synchronous=c.sqlite_synchronous,
            busy_timeout_seconds=c.sqlite_busy_timeout_seconds,
            poll_min_seconds=c.poll_min_seconds,
            poll_max_seconds=c.poll_max_seconds,
        )

    @property
    def sqlite_db_path(self) -> str:
        """The SQLite file this app uses: `sqlite_db_path`, else `<app_id>.pynenc.sqlite3`
        in the current folder (so processes started in one folder share it)."""
        configured = self.conf.sqlite_db_path
        return configured or os.path.join(os.getcwd(), f"{self.app_id}.pynenc.sqlite3")

    @property
    def hub(self) -> Hub:
        """This process's meeting point for results and work of this app."""
        if self._hub is None:
            with self._lock:
                if self._hub is None:
                    self._hub = Hub(self.backend)
        return self._hub

    @property
    def runner(self) -> Union[ThreadRunner, ProcessRunner]:
        """The runner chosen by `runner_cls` (ThreadRunner by default): `app.runner.run()`
        works through this app's tasks until `app.runner.stop_runner_loop()`."""
        if self._runner is None:
            with self._lock:
                if self._runner is None:
                    from pynenc_lite import runner

                    if self.conf.runner_cls == "ProcessRunner":
                        self._runner = runner.ProcessRunner(self)
                    else:
                        self._runner = runner.ThreadRunner(self)
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
        with self._lock:
            if self._hub is not None:
                self._hub.close()
            if self._backend is not None:
                self._backend.close()
            self._hub = None
            self._backend = None

    # -- calls ------------------------------------------------------------------------------

    def invoke(
        self,
        task: Task[R],
        calls: list[Call],
        *,
        awaited: bool,
        run_at: Optional[float] = None,
    ) -> list[Invocation[R]]:
        """Turn calls of `task` into invocations: stored for workers, or run inline in sync
        mode. `awaited=True` registers for the results before storing (the caller will wait).
        `run_at` (epoch seconds) delays the start; sync mode runs at once regardless.

        Raises:
            SerializationError: an argument cannot be pickled (nothing is stored then).
        """
        if self.conf.dev_mode_force_sync_tasks:
            return [self._run_inline(task, args, kwargs) for args, kwargs in calls]
        now = time.time()
        records = [
            self._new_invocation(task, args, kwargs, now, now if run_at is None else run_at)
            for args, kwargs in calls
        ]
        hub = self.hub
        # Registered before storing, so that no outcome can arrive unseen; kept here, since
        # a fast worker may resolve (and the hub forget) them before submit() returns.
        futures: list[Optional[concurrent.futures.Future[Any]]] = [None] * len(records)
        if awaited:
            ids = [r.invocation_id for r in records]
            futures = list(hub.futures_for(ids, check_stored=False))
        try:
            ids = self.backend.submit(records)
        except BaseException:
            for r in records:
                hub.forget(r.invocation_id)
            raise
        hub.notify_work()
        invocations: list[Invocation[R]] = []
        for record, invocation_id, future in zip(records, ids, futures):
            if future is not None and invocation_id != record.invocation_id:
                # Registration concurrency: an equal call is already waiting; share it.
                hub.forget(record.invocation_id)
                future = hub.future_for(invocation_id)
            invocations.append(Invocation(self, task.name, invocation_id, future))
        return invocations

    def _new_invocation(
        self,
        task: Task[Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        now: float,
        run_at: float,
    ) -> NewInvocation:
        options = task.options
        registration_key = running_key = None
        if options.uses_concurrency_control:
            arguments = task.arguments_by_name(args, kwargs)
            registration_key = options.concurrency_key(
                options.registration_concurrency, task.name, arguments
            )
            running_key = options.concurrency_key(options.running_concurrency, task.name, arguments)
        return NewInvocation(
            new_invocation_id(),
            self.app_id,
            task.name,
            serializer.dumps_call(task.name, args, kwargs),
            run_at,
            now,
            registration_key,
            running_key,
            options.running_concurrency_limit,
        )

    def _run_inline(
        self, task: Task[R], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Invocation[R]:
        round_trip = self.conf.dev_mode_pickle_round_trip
        if round_trip:
            data = serializer.dumps_call(task.name, args, kwargs)
            args, kwargs = serializer.loads_call(task.name, data)
        invocation_id = new_invocation_id()
        retries = 0
        while True:
            running = RunningInvocation(invocation_id, task.name, retries + 1, retries, "inline")
            try:
                with running_as(running):
                    value = task.func(*args, **kwargs)
                    if task.is_async:
                        value = run_coroutine_blocking(value)
                if round_trip:
                    value = serializer.loads_value(
                        task.name, serializer.dumps_value(task.name, value)
                    )
                outcome = LocalOutcome(invocation_id, value=value)
            except Exception as exc:
                if task.options.should_retry(exc, retries):
                    retries += 1  # sync mode retries at once: tests should not sleep
                    logger.info("sync call of %s failed (%r); retry %d", task.name, exc, retries)
                    continue
                error = serializer.round_trip_exception(exc) if round_trip else exc
                outcome = LocalOutcome(invocation_id, exception=error)
            break
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        future.set_result(outcome)
        return Invocation(self, task.name, invocation_id, future)

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
            raise InvocationNotFoundError(self._not_found(invocation_id))
        return Invocation(self, record.task_name, invocation_id)

    def _not_found(self, invocation_id: str) -> str:
        return (
            f"invocation {invocation_id} is not stored in {self.backend!r}: it finished more "
            f"than result_ttl_seconds ({self.conf.result_ttl_seconds:g}s) ago and was deleted, "
            "the app's data was purged, or the id is wrong"
        )

    # -- for runners ------------------------------------------------------------------------

    def resolve_task(self, task_name: str) -> Task[Any]:
        """The task behind a name: registered here, or found by importing its module.

        Raises:
            TaskNotFoundError: it cannot be found in this process; the message says why.
        """
        task = self._tasks.get(task_name)
        if task is not None:
            return task
        if task_name.startswith("__main__."):
            raise TaskNotFoundError(
                f"task {task_name} was defined in the caller's __main__ script, which a worker "
                "in another process cannot import. Move the task into an importable module "
                "(e.g. tasks.py) and import it from the script."
            )
        parts = task_name.split(".")
        for cut in range(len(parts) - 1, 0, -1):
            module_name = ".".join(parts[:cut])
            try:
                obj: Any = importlib.import_module(module_name)
            except ModuleNotFoundError as exc:
                if exc.name and module_name.startswith(exc.name):
                    continue  # this prefix is not a module; try a shorter one
                raise TaskNotFoundError(
                    f"importing {module_name} for task {task_name} failed: {exc}"
                ) from exc
            except Exception as exc:
                raise TaskNotFoundError(
                    f"importing {module_name} for task {task_name} failed: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            try:
                for attr in parts[cut:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                break
            if isinstance(obj, Task):
                return obj
            break
        raise TaskNotFoundError(
            f"task {task_name} cannot be found on this worker: its module does not import "
            "here or does not define it as a task. Start the worker from the project folder "
            "(or set PYTHONPATH) so that the same code is importable."
        )

    def warn_if_no_worker(self, invocation: Invocation[Any], waited_seconds: float) -> bool:
        """Log a warning when a caller waits and no worker of this app is alive.

        Returns True when it warned (callers warn once per wait).
        """
        c = self.conf
        window = max(3 * c.heartbeat_interval_seconds, c.no_worker_warning_seconds)
        if self.backend.count_live_workers(self.app_id, time.time() - window) > 0:
            return False
        logger.warning(
            "%s has waited %.1fs for %s and no worker of app %r has been seen in the last "
            "%.0fs. Start one: app.runner.run() in this process (or `with app.runner:`), or "
            "`python -m pynenc_lite.worker <module>:<app>` in a terminal; or set "
            "PYNENC__DEV_MODE_FORCE_SYNC_TASKS=True to run calls inline.",
            invocation,
            waited_seconds,
            invocation.task_name,
            self.app_id,
            window,
        )
        return True

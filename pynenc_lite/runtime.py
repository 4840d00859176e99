"""The runtime: what every layer above storage shares for one app in one process.

    Runtime ─ conf            the app's configuration (PynencConfig)
            ─ tasks           the task registry: task name -> registered task
            ─ backend         made on first use from conf (SQLite file, TCP server, or
                              SQLite in this process's memory for pynenc's Mem* components)
            ─ hub             made on first use: where this process waits for outcomes/work

Calls (`invoke`, `Task`, `Invocation`) and runners take a `Runtime`, never the `Pynenc`
facade, so the layers import one way: facade -> runners -> calls -> runtime -> storage.
A registered task is seen here only through the small `RegisteredTask` protocol.

It does not decorate functions, start runners or parse command lines (those are the facade's
and the command lines' jobs). The backend and hub read the configuration when they are made;
change `conf` before the first distributed call.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Any, Callable, Optional, Protocol, Union

from pynenc_lite.backend.base import Backend
from pynenc_lite.conf import PynencConfig
from pynenc_lite.errors import ConfigError, TaskNotFoundError
from pynenc_lite.importing import ImportObjectError, import_object
from pynenc_lite.options import TaskOptions
from pynenc_lite.waiting import Hub

logger = logging.getLogger(__name__)

_SYNC_ENV = "PYNENC__DEV_MODE_FORCE_SYNC_TASKS"
# pynenc's component settings; any of them naming a Mem* class keeps the queue in memory.
_MEMORY_COMPONENTS = {
    "orchestrator_cls": "MemOrchestrator",
    "broker_cls": "MemBroker",
    "state_backend_cls": "MemStateBackend",
}


class RegisteredTask(Protocol):
    """What the runtime and the runners need of a task (`task.Task` is one)."""

    name: str
    func: Callable[..., Any]
    options: TaskOptions

    def arguments_by_name(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]: ...


# Every runtime made in this process, oldest first (weak: a dropped app is forgotten): the one
# registry that pickling across processes needs (an invocation passed as an argument is
# unpickled on the worker by its app's id). Guarded by _registry_lock.
_live_runtimes: list[weakref.ref[Runtime]] = []
_registry_lock = threading.Lock()


def _remember(runtime: Runtime) -> None:
    with _registry_lock:
        _live_runtimes[:] = [ref for ref in _live_runtimes if ref() is not None]
        _live_runtimes.append(weakref.ref(runtime))


def find_runtime(app_id: str) -> Runtime:
    """The live runtime of the app named `app_id` in this process (the newest if several).

    Raises:
        LookupError: no app of that name exists here; the message says what to import.
    """
    with _registry_lock:
        alive = [rt for rt in (ref() for ref in _live_runtimes) if rt is not None]
    found = [rt for rt in alive if rt.app_id == app_id]
    if not found:
        raise LookupError(
            f"no app {app_id!r} exists in this process, so an invocation of it cannot be "
            "used here: import the module that makes it (the tasks' module) first"
        )
    return found[-1]


def _is_task(obj: object) -> bool:
    return isinstance(getattr(obj, "options", None), TaskOptions) and callable(
        getattr(obj, "func", None)
    )


class Runtime:
    """The shared parts of one app in this process.

    Args:
        conf: the configuration (it may be replaced later by assigning `conf`).
        owner: the object users reach as `task.app` / `invocation.app` (the facade); the
            runtime never looks at it.
    """

    def __init__(self, conf: PynencConfig, owner: Any = None) -> None:
        self.conf = conf
        self.owner = owner
        self.tasks: dict[str, RegisteredTask] = {}
        # Guards the lazy creation (and the closing) of _backend and _hub.
        self._lock = threading.RLock()
        self._backend: Optional[Backend] = None
        self._hub: Optional[Hub] = None
        _remember(self)

    def __repr__(self) -> str:
        return f"<Runtime {self.app_id!r}>"

    @property
    def app_id(self) -> str:
        """The app's name."""
        return str(self.conf.app_id)

    @property
    def is_sync(self) -> bool:
        """True when calls run inline in the caller's thread (`dev_mode_force_sync_tasks`).

        Read on every call, as pynenc programs expect: a test that sets
        PYNENC__DEV_MODE_FORCE_SYNC_TASKS after the app was made sees it. The check costs one
        environment lookup; the configuration is read again only when that variable changed.
        """
        conf = self.conf
        if os.environ.get(_SYNC_ENV) != conf.env_value_seen(_SYNC_ENV):
            conf.reload_if_env_changed()
        return bool(conf.dev_mode_force_sync_tasks)

    # -- tasks ------------------------------------------------------------------------------

    def register(self, task: RegisteredTask) -> None:
        """Add a task to the registry (a newer definition of the same name wins)."""
        if task.name in self.tasks:
            logger.debug("task %s registered again; the newest definition wins", task.name)
        self.tasks[task.name] = task

    def resolve_task(self, task_name: str) -> RegisteredTask:
        """The task behind a name: registered here, or found by importing its module.

        Raises:
            TaskNotFoundError: it cannot be found in this process; the message says why.
        """
        task = self.tasks.get(task_name)
        if task is not None:
            return task
        if task_name.startswith("__main__."):
            raise TaskNotFoundError(
                f"task {task_name} was defined in the caller's __main__ script, which a worker "
                "in another process cannot import. Move the task into an importable module "
                "(e.g. tasks.py) and import it from the script."
            )
        try:
            found = import_object(task_name)
        except (ImportObjectError, AttributeError):
            found = None
        except Exception as exc:
            raise TaskNotFoundError(
                f"importing the module of task {task_name} failed: {type(exc).__name__}: {exc}"
            ) from exc
        task = self.tasks.get(task_name)  # importing the module may have registered it here
        if task is not None:
            return task
        if found is not None and _is_task(found):
            return found  # type: ignore[no-any-return]
        raise TaskNotFoundError(
            f"task {task_name} cannot be found on this worker: its module does not import "
            "here or does not define it as a task. Start the worker from the project folder "
            "(or set PYTHONPATH) so that the same code is importable."
        )

    # -- storage ----------------------------------------------------------------------------

    @property
    def sqlite_db_path(self) -> str:
        """The SQLite file this app uses: `sqlite_db_path`, else `<app_id>.pynenc.sqlite3`
        in the current folder (so processes started in one folder share it)."""
        configured = self.conf.sqlite_db_path
        return configured or os.path.join(os.getcwd(), f"{self.app_id}.pynenc.sqlite3")

    @property
    def storage_location(self) -> str:
        """Where this app's invocations are stored, for messages: the server URL, the
        SQLite file's absolute path, or this process's memory."""
        if self.is_in_memory:
            return f"the memory of process {os.getpid()}"
        url = self.conf.broker_url
        return str(url) if url else os.path.abspath(self.sqlite_db_path)

    @property
    def is_in_memory(self) -> bool:
        """True when the configuration keeps the queue in this process's memory (any of
        pynenc's Mem* components, e.g. `PynencBuilder().memory()`)."""
        c = self.conf
        return any(getattr(c, name) == mem for name, mem in _MEMORY_COMPONENTS.items())

    def require_shared_storage(self, user: str) -> None:
        """Refuse `user` (what would need the queue from another process) when the queue
        lives in this process's memory.

        Raises:
            ConfigError: the app keeps its queue in memory; the message says what to use.
        """
        if self.is_in_memory:
            chosen = ", ".join(
                f"{name} = {getattr(self.conf, name)!r}" for name in _MEMORY_COMPONENTS
                if getattr(self.conf, name) == _MEMORY_COMPONENTS[name]
            )
            raise ConfigError(
                f"{user} cannot serve app {self.app_id!r}: its queue lives in the memory of "
                f"this process ({chosen}; pynenc's in-memory components), which worker "
                "processes cannot reach. Use a ThreadRunner (app.runner with runner_cls = "
                '"ThreadRunner"), or keep the queue in a SQLite file (the SQLite components, '
                "e.g. PynencBuilder().sqlite(path)) to run worker processes"
            )

    @property
    def backend(self) -> Backend:
        """Where invocations are stored (made on first use from the configuration)."""
        if self._backend is None:
            with self._lock:
                if self._backend is None:
                    self._backend = self._make_backend()
        return self._backend

    @backend.setter
    def backend(self, backend: Backend) -> None:
        # For tests and embedders that bring their own backend object.
        with self._lock:
            self._backend = backend

    def _make_backend(self) -> Backend:
        self.conf.reload_if_env_changed()  # made from the configuration as it is now
        c = self.conf
        if self.is_in_memory:
            return self._make_memory_backend()
        if c.broker_url:
            from pynenc_lite.backend.tcp.client import backend_from_config

            return backend_from_config(c)
        from pynenc_lite.backend.sqlite import SQLiteBackend

        return SQLiteBackend(
            self.sqlite_db_path,
            synchronous=c.sqlite_synchronous,
            busy_timeout_seconds=c.sqlite_busy_timeout_seconds,
            poll_min_seconds=c.poll_min_seconds,
            poll_max_seconds=c.poll_max_seconds,
        )

    def _make_memory_backend(self) -> Backend:
        """A SQLite database in this process's memory, under a name no other app or earlier
        backend of this one has (closing the app frees it; the next use starts empty)."""
        from pynenc_lite.backend.sqlite import SQLiteBackend

        c = self.conf
        for ignored in ("broker_url", "sqlite_db_path"):
            if getattr(c, ignored):
                logger.warning(
                    "app %r keeps its queue in memory (pynenc's Mem* components), so its "
                    "%s %r is not used", self.app_id, ignored, getattr(c, ignored),
                )
        return SQLiteBackend(
            f"pynenc-lite-{self.app_id}-{os.urandom(8).hex()}",
            busy_timeout_seconds=c.sqlite_busy_timeout_seconds,
            poll_min_seconds=c.poll_min_seconds,
            poll_max_seconds=c.poll_max_seconds,
            memory=True,
        )

    @property
    def hub(self) -> Hub:
        """This process's meeting point for results and work of this app."""
        if self._hub is None:
            with self._lock:
                if self._hub is None:
                    self._hub = Hub(self.backend)
        return self._hub

    def was_closed(self, backend: Backend) -> bool:
        """True when `backend` is no longer this runtime's (it was closed by `close()`), so a
        failure on it says nothing about the storage: ask `backend` again."""
        return self._backend is not backend

    @property
    def has_hub(self) -> bool:
        """True when the hub was made (nobody can be waiting on a hub that does not exist)."""
        return self._hub is not None

    def close(self) -> None:
        """Stop the hub's watcher, then close the backend's connections (in that order, so no
        thread is left using a closed connection). Both are made anew on next use."""
        with self._lock:
            # Forgotten first, so `was_closed` is true as soon as the closing starts; new
            # parts are made only once this lock is free again.
            hub, backend = self._hub, self._backend
            self._hub = self._backend = None
            if hub is not None:
                hub.close()
            if backend is not None:
                backend.close()

    # -- messages ---------------------------------------------------------------------------

    def not_found_message(self, invocation_id: str) -> str:
        """Why an invocation may be missing, for `InvocationNotFoundError`."""
        return (
            f"invocation {invocation_id} is not stored in {self.backend!r}: it finished more "
            f"than result_ttl_seconds ({self.conf.result_ttl_seconds:g}s) ago and was deleted, "
            "the app's data was purged, or the id is wrong"
        )

    def warn_if_no_worker(self, waiting_for: str, waited_seconds: float) -> bool:
        """Log a warning when a caller waits and no worker of this app is alive.

        Args:
            waiting_for: what the caller waits for, for the message (an invocation's repr).

        Returns:
            True when it warned (callers warn once per wait).
        """
        c = self.conf
        window = max(3 * c.heartbeat_interval_seconds, c.no_worker_warning_seconds)
        if self.backend.count_live_workers(self.app_id, time.time() - window) > 0:
            return False
        logger.warning(
            "%s has waited %.1fs and no worker of app %r has been seen in the last %.0fs "
            "on %s. Start one: app.runner.run() in this process (or `with app.runner:`), or "
            "`python -m pynenc_lite.worker <module>:<app>` in a terminal; or set "
            "PYNENC__DEV_MODE_FORCE_SYNC_TASKS=True to run calls inline.",
            waiting_for,
            waited_seconds,
            self.app_id,
            window,
            self.storage_location,
        )
        return True


class HasRuntime(Protocol):
    """An object that carries a runtime: the `Pynenc` app does."""

    @property
    def runtime(self) -> Runtime: ...


def runtime_of(app: Union[Runtime, HasRuntime]) -> Runtime:
    """The runtime of an app (or the runtime itself), so runners take either without
    importing the facade."""
    return app if isinstance(app, Runtime) else app.runtime

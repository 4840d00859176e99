"""`PynencBuilder`: pynenc's fluent way to make an app, with pynenc's method names.

    app = (
        PynencBuilder()
        .app_id("reports")
        .sqlite("reports.sqlite3")
        .thread_runner(min_threads=1, max_threads=8)
        .logging_level("info")
        .build()
    )

Every method records configuration values and returns the builder; `build()` makes
`Pynenc(config_values=...)`, so the values go through the same table, checks and "accepted
but ignored" warnings as any other pynenc setting (runner settings land in their runner's
section, so `[tool.pynenc.threadrunner]` rules apply). Nothing is opened before `build()`.

It holds no logic of its own beyond naming: what a value means is `conf`'s business.
"""

from __future__ import annotations

from typing import Any, Optional

from pynenc_lite.app import Pynenc
from pynenc_lite.errors import ConfigError

_LEVELS = ("debug", "info", "warning", "error", "critical")
_PRINT_MODES = ("HIDDEN", "KEYS", "FULL", "TRUNCATED")
_MEMORY = {
    "orchestrator_cls": "MemOrchestrator",
    "broker_cls": "MemBroker",
    "state_backend_cls": "MemStateBackend",
}
_MEMORY_RUNNERS = ("ThreadRunner",)


class PynencBuilder:
    """Build a `Pynenc` app step by step (see the module docstring)."""

    def __init__(self) -> None:
        self._config: dict[str, Any] = {}
        self._memory = False

    def __repr__(self) -> str:
        return f"PynencBuilder({self._config!r})"

    def _set(self, **values: Any) -> PynencBuilder:
        self._config.update(values)
        return self

    def _section(self, name: str, **values: Any) -> PynencBuilder:
        self._config.setdefault(name, {}).update(values)
        return self

    # -- identity and storage ---------------------------------------------------------------

    def app_id(self, app_id: str) -> PynencBuilder:
        """The app's name (`app_id`)."""
        return self._set(app_id=app_id)

    def sqlite(self, sqlite_db_path: Optional[str] = None) -> PynencBuilder:
        """Keep the queue in a SQLite file (the default; None: `<app_id>.pynenc.sqlite3`)."""
        self._memory = False
        for name in _MEMORY:
            self._config.pop(name, None)
        return self._set(sqlite_db_path=sqlite_db_path) if sqlite_db_path else self

    def memory(self) -> PynencBuilder:
        """Keep the queue in this process only (pynenc's Mem* components): nothing is written
        to disk, and only a thread runner can run it."""
        self._memory = True
        return self._set(**_MEMORY)

    def redis(self, url: Optional[str] = None, db: Optional[int] = None) -> PynencBuilder:
        """Redis is not available in this version.

        Raises:
            ConfigError: always, saying what to use instead.
        """
        raise ConfigError(
            "PynencBuilder.redis(): this pynenc_lite has no Redis backend yet; use .sqlite() "
            "for one host, or broker_url='tcp://host:port' (a pynenc_lite server) for several"
        )

    # -- runners ----------------------------------------------------------------------------

    def thread_runner(self, min_threads: int = 1, max_threads: int = 0) -> PynencBuilder:
        """Run tasks on threads of one process (`max_threads` 0: one per CPU)."""
        self._set(runner_cls="ThreadRunner")
        return self._section("threadrunner", min_threads=min_threads, max_threads=max_threads)

    def multi_thread_runner(
        self, min_threads: int = 1, max_threads: int = 1, enforce_max_processes: bool = False
    ) -> PynencBuilder:
        """pynenc's MultiThreadRunner: here worker processes with threads each."""
        self._set(runner_cls="MultiThreadRunner")
        return self._section(
            "multithreadrunner",
            min_threads=min_threads,
            max_threads=max_threads,
            enforce_max_processes=enforce_max_processes,
        )

    def persistent_process_runner(self, num_processes: int = 0) -> PynencBuilder:
        """Worker processes that live as long as the runner (`num_processes` 0: one per CPU)."""
        self._set(runner_cls="PersistentProcessRunner")
        return self._section("persistentprocessrunner", num_processes=num_processes)

    def process_runner(self) -> PynencBuilder:
        """Worker processes (pynenc's ProcessRunner)."""
        return self._set(runner_cls="ProcessRunner")

    def runner_tuning(
        self,
        runner_loop_sleep_time_sec: float = 0.01,
        invocation_wait_results_sleep_time_sec: float = 0.01,
        min_parallel_slots: int = 1,
    ) -> PynencBuilder:
        """pynenc's polling intervals: accepted and ignored (runners here wake on events)."""
        return self._set(
            runner_loop_sleep_time_sec=runner_loop_sleep_time_sec,
            invocation_wait_results_sleep_time_sec=invocation_wait_results_sleep_time_sec,
            min_parallel_slots=min_parallel_slots,
        )

    # -- logging and arguments --------------------------------------------------------------

    def logging_level(self, level: str) -> PynencBuilder:
        """The level of the worker command's log (debug, info, warning, error, critical).

        Raises:
            ValueError: another level name.
        """
        if str(level).lower() not in _LEVELS:
            raise ValueError(f"logging_level must be one of {_LEVELS}, got {level!r}")
        return self._set(logging_level=str(level).upper())

    def logging_stream(self, stream: str) -> PynencBuilder:
        """pynenc's `log_stream` ("stdout" or "stderr")."""
        return self._set(log_stream=stream)

    def logging_colors(self, use_colors: bool = True) -> PynencBuilder:
        """pynenc's `log_use_colors`."""
        return self._set(log_use_colors=use_colors)

    def argument_print_mode(
        self, mode: str, truncate_arguments_length: int = 32, **pynenc_names: int
    ) -> PynencBuilder:
        """How arguments appear in log lines: HIDDEN, KEYS, FULL or TRUNCATED (cut at
        `truncate_arguments_length`; pynenc's `truncate_length=` is accepted too).

        Raises:
            ValueError: another mode, a length below 1, or another keyword.
        """
        length = pynenc_names.pop("truncate_length", truncate_arguments_length)
        if pynenc_names:
            raise ValueError(f"argument_print_mode() got unknown keywords {sorted(pynenc_names)}")
        name = getattr(mode, "name", mode)
        if str(name).upper() not in _PRINT_MODES:
            raise ValueError(f"argument_print_mode must be one of {_PRINT_MODES}, got {mode!r}")
        if str(name).upper() == "TRUNCATED" and length < 1:
            raise ValueError(f"truncate_arguments_length must be >= 1, got {length}")
        return self._set(argument_print_mode=str(name).upper(), truncate_arguments_length=length)

    def hide_arguments(self) -> PynencBuilder:
        """Log no argument values."""
        return self.argument_print_mode("HIDDEN")

    def show_argument_keys(self) -> PynencBuilder:
        """Log argument names only."""
        return self.argument_print_mode("KEYS")

    def show_full_arguments(self) -> PynencBuilder:
        """Log whole argument values."""
        return self.argument_print_mode("FULL")

    def show_truncated_arguments(self, truncate_length: int = 32) -> PynencBuilder:
        """Log argument values cut at `truncate_length` characters."""
        return self.argument_print_mode("TRUNCATED", truncate_length)

    # -- the rest ---------------------------------------------------------------------------

    def max_pending_seconds(self, seconds: float) -> PynencBuilder:
        """pynenc's PENDING timeout: accepted and ignored (a claim here is the start)."""
        return self._set(max_pending_seconds=seconds)

    def dev_mode(self, force_sync_tasks: bool = True) -> PynencBuilder:
        """Run every call inline in the caller's thread (`dev_mode_force_sync_tasks`)."""
        return self._set(dev_mode_force_sync_tasks=force_sync_tasks)

    def serializer(self, name: str) -> PynencBuilder:
        """pynenc's serializer choice; arguments and results are always pickled here, so
        "pickle" and "json_pickle" fit and the others are accepted and ignored with a warning.

        Raises:
            ValueError: a name that is no serializer.
        """
        cls = {"json": "JsonSerializer", "pickle": "PickleSerializer",
               "json_pickle": "JsonPickleSerializer"}.get(str(name).lower(), str(name))
        if not cls.endswith("Serializer"):
            raise ValueError(f"serializer must be 'pickle', 'json', 'json_pickle' or a "
                             f"*Serializer class name, got {name!r}")
        return self._set(serializer_cls=cls)

    def custom_config(self, **values: Any) -> PynencBuilder:
        """Any configuration fields, ours or pynenc's, by name."""
        return self._set(**values)

    def build(self) -> Pynenc:
        """The app.

        Raises:
            ValueError: in-memory components with a runner other than a thread runner.
            ConfigError: a value the configuration refuses (the message names it).
        """
        runner = str(self._config.get("runner_cls", "ThreadRunner"))
        if self._memory and runner not in _MEMORY_RUNNERS:
            raise ValueError(
                f"memory() keeps the queue inside this process, so worker processes cannot "
                f"reach it: use thread_runner() instead of {runner}, or sqlite()"
            )
        return Pynenc(config_values=dict(self._config))

"""Per-task options given to the decorators (`@app.task(max_retries=3, ...)`), checked once
at decoration time, and the retry policy they define.

    max_retries              retries after the first failure (default 0: none)
    retry_for                exception classes (or dotted names) that are retried; RetryError
                             raised by the task is always retried while retries are left
    retry_delay_seconds      first delay; then times retry_backoff per retry, capped at
    retry_backoff            retry_max_delay_seconds, and spread by +/- retry_jitter (a
    retry_max_delay_seconds  fraction), so many failing tasks do not retry in lock-step
    retry_jitter
    time_limit_seconds       fail the invocation (TaskTimeLimitError) when it runs longer
    max_lost_attempts        how many times its worker may vanish while running it before
                             it FAILS with WorkerLostError (default None: the app's
                             max_lost_attempts setting); stored with each invocation
    cron                     a 5-field cron expression: the runners call the task on it
    registration_concurrency a call matching an invocation still waiting to run returns
                             that invocation instead of queueing another
    running_concurrency      at most running_concurrency_limit matching invocations run at
    running_concurrency_limit  once; what happens to the others is the next option
    reroute_on_concurrency_control  False (pynenc's default): a call whose limit is reached
                             when a runner would start it is dropped, never runs, and
                             reading its result raises ConcurrencyControlledError (status
                             CONCURRENCY_CONTROLLED_FINAL); True: it waits its turn.
                             Stored with each invocation. Sync mode holds nothing back.
    key_arguments            the argument names that make two calls "match" for KEYS

What "matching" means is a ConcurrencyControlType: DISABLED (never), TASK (any call of the
task), ARGUMENTS (same arguments), KEYS (same values of `key_arguments`). Both limits are
enforced inside the database transaction that stores or claims, so processes cannot race.

pynenc's other task options are accepted and ignored with one warning each, so a pynenc
decorator keeps working. Anything else is a TypeError naming the accepted options.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import logging
import pickle
import random
from typing import Any, Optional, Union

from pynenc_lite import compat
from pynenc_lite.cron import CronSchedule
from pynenc_lite.errors import RetryError
from pynenc_lite.importing import import_object

logger = logging.getLogger(__name__)

ExceptionSpec = Union[type, str]

class ConcurrencyControlType(str, enum.Enum):
    """Which calls count as the same for concurrency control (pynenc's names)."""

    DISABLED = "DISABLED"
    TASK = "TASK"
    ARGUMENTS = "ARGUMENTS"
    KEYS = "KEYS"


@dataclasses.dataclass(frozen=True)
class TaskOptions:
    """The checked options of one task (see the module docstring for each)."""

    max_retries: int = 0
    retry_for: tuple[ExceptionSpec, ...] = ()
    retry_delay_seconds: float = 1.0
    retry_backoff: float = 2.0
    retry_max_delay_seconds: float = 300.0
    retry_jitter: float = 0.1
    time_limit_seconds: Optional[float] = None
    max_lost_attempts: Optional[int] = None
    cron: Optional[str] = None
    registration_concurrency: ConcurrencyControlType = ConcurrencyControlType.DISABLED
    running_concurrency: ConcurrencyControlType = ConcurrencyControlType.DISABLED
    running_concurrency_limit: int = 1
    reroute_on_concurrency_control: bool = False
    key_arguments: tuple[str, ...] = ()

    @classmethod
    def from_decorator(cls, task_name: str, options: dict[str, Any]) -> TaskOptions:
        """Check decorator keyword arguments.

        Raises:
            TypeError: an unknown option; ValueError: a bad value (both name the option).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for name, value in options.items():
            if name in known:
                values[name] = value
            elif name in compat.PYNENC_ONLY_TASK_OPTIONS:
                compat.warn_ignored("task option", name, task_name)
            else:
                raise TypeError(
                    f"unknown task option {name!r} for {task_name}; accepted: "
                    f"{', '.join(sorted(known))}, parallel_func and aggregate_func "
                    "(direct_task), and pynenc's other option names (ignored)"
                )
        if "retry_for" in values:
            spec = values["retry_for"]
            values["retry_for"] = tuple(spec) if isinstance(spec, (list, tuple)) else (spec,)
        if "key_arguments" in values:
            keys = values["key_arguments"]
            values["key_arguments"] = (keys,) if isinstance(keys, str) else tuple(keys)
        for name in ("registration_concurrency", "running_concurrency"):
            if name in values:
                try:
                    values[name] = ConcurrencyControlType(
                        getattr(values[name], "value", values[name])
                    )
                except ValueError:
                    raise ValueError(
                        f"task {task_name}: option {name} must be one of "
                        f"{[c.value for c in ConcurrencyControlType]}, got {values[name]!r}"
                    ) from None
        opts = cls(**values)
        opts._check(task_name)
        return opts

    def _check(self, task_name: str) -> None:
        def bad(name: str, expected: str) -> ValueError:
            return ValueError(
                f"task {task_name}: option {name} must be {expected}, got {getattr(self, name)!r}"
            )

        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise bad("max_retries", "a whole number >= 0")
        for name in ("retry_delay_seconds", "retry_max_delay_seconds", "retry_jitter"):
            if not isinstance(getattr(self, name), (int, float)) or getattr(self, name) < 0:
                raise bad(name, "a number >= 0")
        if not isinstance(self.retry_backoff, (int, float)) or self.retry_backoff < 1:
            raise bad("retry_backoff", "a number >= 1")
        if self.time_limit_seconds is not None and not (
            isinstance(self.time_limit_seconds, (int, float)) and self.time_limit_seconds > 0
        ):
            raise bad("time_limit_seconds", "None or a number of seconds > 0")
        lost = self.max_lost_attempts
        if lost is not None and (type(lost) is not int or lost < 1):
            raise bad("max_lost_attempts", "None or a whole number >= 1")
        for spec in self.retry_for:
            if isinstance(spec, str):
                continue  # a dotted name, resolved when first needed (it may import late)
            if not (isinstance(spec, type) and issubclass(spec, BaseException)):
                raise bad("retry_for", "exception classes or their dotted names")
        if type(self.reroute_on_concurrency_control) is not bool:
            raise bad("reroute_on_concurrency_control", "True or False")
        limit = self.running_concurrency_limit
        if not isinstance(limit, int) or limit < 1:
            raise bad("running_concurrency_limit", "a whole number >= 1")
        uses_keys = ConcurrencyControlType.KEYS in (
            self.registration_concurrency,
            self.running_concurrency,
        )
        if uses_keys and not self.key_arguments:
            raise bad("key_arguments", "the names of the arguments that form the key (KEYS)")
        if self.cron is not None:
            CronSchedule(self.cron)  # raises CronError naming the bad field

    @property
    def uses_concurrency_control(self) -> bool:
        """True when calls need concurrency keys (read on every call, so kept cheap)."""
        disabled = ConcurrencyControlType.DISABLED
        return not (
            self.registration_concurrency is disabled and self.running_concurrency is disabled
        )

    def concurrency_key(
        self, mode: ConcurrencyControlType, task_name: str, arguments: dict[str, Any]
    ) -> Optional[str]:
        """The key under which calls count as the same for `mode` (None when DISABLED).

        Args:
            arguments: the call's arguments by name, defaults applied.
        """
        if mode is ConcurrencyControlType.DISABLED:
            return None
        if mode is ConcurrencyControlType.TASK:
            return task_name
        if mode is ConcurrencyControlType.KEYS:
            arguments = {name: arguments.get(name) for name in self.key_arguments}
        try:
            data = pickle.dumps(sorted(arguments.items()), 4)
        except Exception:
            data = repr(sorted(arguments.items())).encode()
        return f"{task_name}:{hashlib.sha256(data).hexdigest()[:32]}"

    def should_retry(self, exc: BaseException, retries_done: int) -> bool:
        """True when `exc` is retryable and retries are left."""
        if retries_done >= self.max_retries:
            return False
        return isinstance(exc, (RetryError, *self._retry_classes()))

    def retry_delay(self, retries_done: int, exc: Optional[BaseException] = None) -> float:
        """Seconds to wait before retry number `retries_done + 1`."""
        if isinstance(exc, RetryError) and exc.delay_seconds is not None:
            return max(0.0, exc.delay_seconds)
        base = self.retry_delay_seconds * self.retry_backoff**retries_done
        delay = min(base, self.retry_max_delay_seconds)
        return max(0.0, delay * (1 + self.retry_jitter * random.uniform(-1, 1)))

    def _retry_classes(self) -> tuple[type, ...]:
        classes = []
        for spec in self.retry_for:
            try:
                classes.append(resolve_exception(spec))
            except ValueError as exc:
                # Deciding about a retry must never fail: the failure it decides about
                # would be lost. Say so, and retry only for the names that resolve.
                logger.error("%s; it is ignored (fix the task's retry_for)", exc)
        return tuple(classes)


def resolve_exception(spec: ExceptionSpec) -> type:
    """An exception class from a class or a dotted name (`"builtins.ConnectionError"`, or
    just `"ConnectionError"` for builtins).

    Raises:
        ValueError: the name does not lead to an exception class.
    """
    if isinstance(spec, type):
        return spec
    try:
        found = import_object(spec)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"retry_for names {spec!r}, which cannot be imported: {exc}") from exc
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise ValueError(f"retry_for names {spec!r}, which is not an exception class")
    return found

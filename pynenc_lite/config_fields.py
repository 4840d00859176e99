"""The table of configuration fields: every setting's name, type, default, meaning and check.

`FIELDS` is the one place a setting is defined; `conf.PynencConfig` gets an attribute per
field, `config_reading` reads and checks values against it, `describe()` lists it.
It holds data and the small checks the table names; reading sources is elsewhere.
"""

from __future__ import annotations

import urllib.parse
import zoneinfo
from dataclasses import dataclass
from typing import Any, Callable

SOURCES = ("default", "pyproject", "config_file", "code", "env", "assignment")
ENV_PREFIX = "PYNENC__"
ENV_FILEPATH = "PYNENC__FILEPATH"


@dataclass(frozen=True)
class Field:
    """One setting. `choices` pairs an accepted spelling (matched case-insensitively) with
    the value stored for it; `check` is an extra test for values a type cannot express."""

    name: str
    type: type
    default: object
    doc: str
    choices: tuple[tuple[str, str], ...] | None = None
    optional: bool = False
    minimum: float | None = None
    exclusive: bool = False  # the value must be strictly greater than `minimum`
    check: Callable[[Any], bool] | None = None
    expected: str = ""  # what is accepted, when the type and minimum do not say it
    hint: str = ""  # appended to the error for a rejected value
    secret: bool = False  # describe() and format_table() show "***" instead of the value


def _same(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((name, name) for name in names)


def _backend_choices(component: str) -> tuple[tuple[str, str], ...]:
    sqlite, mem = f"SQLite{component}", f"Mem{component}"
    return ((sqlite, sqlite), (mem, mem), ("sqlite", sqlite), ("memory", mem))


def _is_timezone(value: str) -> bool:
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _is_tcp_url(value: str) -> bool:
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port  # raises ValueError when out of range
    except ValueError:
        return False
    return parts.scheme in ("tcp", "tcps") and bool(parts.hostname) and port is not None


_BACKEND_HINT = (
    "; pynenc_lite only supports its SQLite backend: one file shared by the processes of one"
    ' host, or a pynenc_lite server reached with broker_url = "tcp://host:port" for several'
    " hosts (or, with pynenc's Mem* components, a SQLite database in one process's memory)"
)
_MEMORY_DOC = (
    "pynenc's component choice. SQLite*: the queue is in the SQLite file (or on the tcp:// "
    "server). Mem* (any of the three; or 'memory'): it lives in this process's memory, "
    "shared by its threads only: nothing is written to disk, only thread runners can serve "
    "it, and it is gone when the app is closed or the process ends."
)

FIELDS: tuple[Field, ...] = (
    Field("app_id", str, "pynenc", "Name of the app; tasks and data are kept per app.",
          check=bool, expected="a non-empty string"),
    Field("dev_mode_force_sync_tasks", bool, False,
          "Run every call inline in the caller's thread; no runner, no database."),
    Field("dev_mode_pickle_round_trip", bool, True,
          "In sync mode, still pickle and unpickle arguments, results and exceptions, so what "
          "would fail on a worker fails in tests too."),
    Field("sqlite_db_path", str, None,
          "SQLite file; None means <app_id>.pynenc.sqlite3 in the current directory.",
          optional=True),
    Field("sqlite_synchronous", str, "NORMAL",
          "SQLite synchronous mode; FULL survives power loss at the cost of an fsync per commit.",
          choices=_same("NORMAL", "FULL")),
    Field("sqlite_busy_timeout_seconds", float, 30.0,
          "How long a write waits for another process holding the database lock.", minimum=0.0),
    Field("broker_url", str, None,
          "tcp://host:port (or tcps://) of a pynenc_lite server to use instead of a local "
          "SQLite file.", optional=True, check=_is_tcp_url,
          expected="'tcp://host:port' or 'tcps://host:port'"),
    Field("broker_secret_file", str, None,
          "Path to a file holding the shared secret for the TCP server.", optional=True),
    Field("broker_secret", str, None,
          "The shared secret for the TCP server itself, best given as env "
          "PYNENC__BROKER_SECRET; wins over broker_secret_file. Shown as ***.",
          optional=True, secret=True),
    Field("broker_tls_ca_file", str, None,
          "CA certificate (PEM) that signed the server's TLS certificate, for tcps:// URLs; "
          "None trusts the system's CAs.", optional=True),
    Field("broker_retry_seconds", float, 30.0,
          "How long a request to the TCP server keeps reconnecting (a server restart) before "
          "it fails with BackendError.", minimum=0.0),
    Field("orchestrator_cls", str, "SQLiteOrchestrator", _MEMORY_DOC,
          choices=_backend_choices("Orchestrator"), hint=_BACKEND_HINT),
    Field("broker_cls", str, "SQLiteBroker", _MEMORY_DOC,
          choices=_backend_choices("Broker"), hint=_BACKEND_HINT),
    Field("state_backend_cls", str, "SQLiteStateBackend", _MEMORY_DOC,
          choices=_backend_choices("StateBackend"), hint=_BACKEND_HINT),
    Field("runner_cls", str, "ThreadRunner",
          "Runner made by app.runner (the worker command chooses with --processes); "
          "pynenc's PersistentProcessRunner and MultiThreadRunner are read as ProcessRunner.",
          choices=(("ThreadRunner", "ThreadRunner"), ("ProcessRunner", "ProcessRunner"),
                   ("PersistentProcessRunner", "ProcessRunner"),
                   ("MultiThreadRunner", "ProcessRunner")),
          hint="; pynenc's DummyRunner runs nothing: to run calls inline set "
               "dev_mode_force_sync_tasks = true"),
    Field("max_threads", int, 16, "Threads per runner (per worker process).", minimum=1),
    Field("runner_processes", int, 0,
          "Worker processes of app.runner when it is a ProcessRunner; 0 means "
          "os.cpu_count() (the worker command uses --processes).", minimum=0),
    Field("lease_seconds", float, 10.0,
          "How long a claim stays valid without a heartbeat; an expired claim is run again "
          "elsewhere.", minimum=0.0, exclusive=True),
    Field("heartbeat_interval_seconds", float, 2.0,
          "How often a worker extends the leases of its running work; less than lease_seconds.",
          minimum=0.0, exclusive=True),
    Field("max_lost_attempts", int, 3,
          "An invocation whose worker vanished this many times (killed, crashed, host lost) "
          "is failed with WorkerLostError instead of being run again.", minimum=1),
    Field("shutdown_grace_seconds", float, 10.0,
          "On SIGTERM/SIGINT, how long running tasks may finish before their work is handed "
          "back.", minimum=0.0),
    Field("poll_min_seconds", float, 0.0005,
          "Shortest interval of the change check between processes (used right after activity).",
          minimum=0.0, exclusive=True),
    Field("poll_max_seconds", float, 0.1,
          "Longest interval of the change check between processes, reached after about a "
          "third of a second without changes: the most an idle worker takes to notice work.",
          minimum=0.0, exclusive=True),
    Field("no_worker_warning_seconds", float, 3.0,
          "A blocking call waiting this long with no live worker logs what to start.",
          minimum=0.0),
    Field("result_timeout_seconds", float, None,
          "Default timeout of direct_task calls and .result; None waits for ever (with the "
          "warning above).", optional=True, minimum=0.0),
    Field("logging_level", str, "INFO",
          "Log level of `python -m pynenc_lite.worker` (unless --log-level is given), and of "
          "the library's own output when a runner starts in a program that configured no "
          "logging (as pynenc prints its INFO lines).",
          choices=_same("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")),
    Field("log_stream", str, "stderr",
          "Where that output goes: stderr or stdout (pynenc's log_stream).",
          choices=_same("stderr", "stdout")),
    Field("result_ttl_seconds", float, 7 * 24 * 3600.0,
          "How long finished invocations and their results are kept; workers then delete "
          "them in small batches.", minimum=0.0, exclusive=True),
    Field("argument_print_mode", str, "TRUNCATED",
          "How task arguments appear in log lines: HIDDEN, KEYS (names only), FULL, or "
          "TRUNCATED (each value cut at truncate_arguments_length).",
          choices=_same("HIDDEN", "KEYS", "FULL", "TRUNCATED")),
    Field("truncate_arguments_length", int, 32,
          "Longest shown argument value when argument_print_mode is TRUNCATED.", minimum=1),
    Field("cron_timezone", str, "UTC",
          "Time zone in which cron expressions are read (an IANA name such as "
          "'Europe/Madrid').", check=_is_timezone, expected="an IANA time zone name"),
    Field("cron_catch_up", str, "once",
          "After downtime, missed cron moments fire once in total ('once'), once each "
          "('all', at most 100), or not at all unless under a minute late ('skip').",
          choices=_same("once", "all", "skip")),
)
FIELD_BY_NAME = {field.name: field for field in FIELDS}

# Pairs (smaller, larger, strictly) checked once every source is read, and on assignment.
ORDERED_PAIRS = (
    ("heartbeat_interval_seconds", "lease_seconds", True),
    ("poll_min_seconds", "poll_max_seconds", False),
)

"""Configuration: the table of fields, where each value comes from, and how it is checked.

Holds `FIELDS` (the one table that defines every setting: name, type, default, meaning) and
`PynencConfig` (alias `Config`), which reads the sources below, lowest precedence first, and
remembers which one gave each value:

    "default"      the table
    "pyproject"    [tool.pynenc] in the nearest pyproject.toml above `cwd`
    "config_file"  `config_filepath=` or env PYNENC__FILEPATH: .json or .toml
    "code"         `config_values={...}` and the `app_id=` argument
    "env"          PYNENC__<FIELD>, or pynenc-style PYNENC__<SECTION>__<FIELD>
    "assignment"   `conf.<field> = value` at run time

Within one source a value given in a section (`[tool.pynenc.threadrunner] max_threads`) beats
the same field given flat, as in pynenc. pynenc's own setting names are accepted: mapped
where they mean the same thing here, otherwise ignored with one logged warning per name.
Any other unknown name or bad value is a `ConfigError` naming the field and the source.

It does not open databases, start runners or configure logging handlers: other modules read
the values. It reads no YAML (that would need a dependency). pynenc's names live in `compat`.

Why one module of ~580 lines: it is one concept, and a third of it is the `FIELDS` table (data,
not code); the reading, precedence and checking below it all serve that one table, and a
reader checking why a value won needs them side by side.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import sys
import urllib.parse
import zoneinfo
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple

from pynenc_lite import compat, toml_subset
from pynenc_lite.errors import ConfigError
from pynenc_lite.tables import format_table

if sys.version_info >= (3, 11):
    import tomllib

_LOG = logging.getLogger(__name__)

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
    ' host, or a pynenc_lite server reached with broker_url = "tcp://host:port" for several hosts'
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
    Field("orchestrator_cls", str, "SQLiteOrchestrator",
          "pynenc compatibility, informational: pynenc_lite always uses one backend.",
          choices=_backend_choices("Orchestrator"), hint=_BACKEND_HINT),
    Field("broker_cls", str, "SQLiteBroker",
          "pynenc compatibility, informational: pynenc_lite always uses one backend.",
          choices=_backend_choices("Broker"), hint=_BACKEND_HINT),
    Field("state_backend_cls", str, "SQLiteStateBackend",
          "pynenc compatibility, informational: pynenc_lite always uses one backend.",
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
_FIELD_BY_NAME = {field.name: field for field in FIELDS}

# Pairs (smaller, larger, strictly) checked once every source is read, and on assignment.
_ORDERED_PAIRS = (
    ("heartbeat_interval_seconds", "lease_seconds", True),
    ("poll_min_seconds", "poll_max_seconds", False),
)

_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_FALSE_WORDS = frozenset({"false", "0", "no", "off"})


class _Setting(NamedTuple):
    """A raw value for a field, with the source's name and a description of where it was."""

    field: Field
    raw: object
    source: str
    origin: str  # for messages, e.g. "env PYNENC__MAX_THREADS"
    section: str | None = None  # the pynenc section it was given in, if any


class PynencConfig:
    """The configuration of one app: every field in `FIELDS` is an attribute.

    Args:
        app_id: the app's name; given here it counts as a "code" value.
        config_values: field values given in code (flat, or pynenc-style sections).
        config_filepath: a .json (or, on Python 3.11+, .toml) file; else env PYNENC__FILEPATH.
        environ: the environment to read; `os.environ` by default.
        cwd: where the pyproject.toml search starts and relative paths are resolved.

    Raises:
        ConfigError: an unknown field, a bad value, or an unreadable file.
    """

    # Typed mirrors of FIELDS for type checkers; a test keeps them in step with the table.
    app_id: str
    dev_mode_force_sync_tasks: bool
    dev_mode_pickle_round_trip: bool
    sqlite_db_path: str | None
    sqlite_synchronous: str
    sqlite_busy_timeout_seconds: float
    broker_url: str | None
    broker_secret_file: str | None
    broker_secret: str | None
    broker_tls_ca_file: str | None
    broker_retry_seconds: float
    orchestrator_cls: str
    broker_cls: str
    state_backend_cls: str
    runner_cls: str
    max_threads: int
    runner_processes: int
    lease_seconds: float
    heartbeat_interval_seconds: float
    max_lost_attempts: int
    shutdown_grace_seconds: float
    poll_min_seconds: float
    poll_max_seconds: float
    no_worker_warning_seconds: float
    result_timeout_seconds: float | None
    logging_level: str
    log_stream: str
    result_ttl_seconds: float
    argument_print_mode: str
    truncate_arguments_length: int
    cron_timezone: str
    cron_catch_up: str

    def __init__(
        self,
        app_id: str | None = None,
        config_values: Mapping[str, object] | None = None,
        config_filepath: str | os.PathLike[str] | None = None,
        *,
        environ: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        self._sources: dict[str, str] = {field.name: "default" for field in FIELDS}
        self._origins: dict[str, str] = {field.name: "default" for field in FIELDS}
        for field in FIELDS:
            object.__setattr__(self, field.name, field.default)
        env = os.environ if environ is None else environ
        base = Path(os.getcwd() if cwd is None else cwd)
        # Kept to read the sources again when the process environment changes (see
        # `reload_if_env_changed`); only a config that reads os.environ follows it.
        self._inputs = (app_id, config_values, config_filepath, base)
        self._follows_os_environ = environ is None
        self._env_seen = _env_snapshot(env)
        settings = list(_read_sources(app_id, config_values, config_filepath, env, base))
        chain = _runner_sections(settings)
        for setting in settings:
            if setting.section in compat.RUNNER_SECTIONS and setting.section not in chain:
                continue  # another runner class's section
            self._apply(setting, _convert(setting))
        _check_order(self.as_dict(), self._origins)

    def __setattr__(self, name: str, value: object) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        for setting in _settings_for_key(name, value, "assignment", "assignment", None):
            converted = _convert(setting)
            # Check the pair before changing anything, so a refused value leaves no trace.
            values = {**self.as_dict(), setting.field.name: converted}
            _check_order(values, {**self._origins, setting.field.name: "assignment"})
            self._apply(setting, converted)

    def __repr__(self) -> str:
        changed = [name for name, source in self._sources.items() if source != "default"]
        return f"{type(self).__name__}(app_id={self.app_id!r}, changed={changed!r})"

    def reload_if_env_changed(self) -> bool:
        """Read the sources again if a `PYNENC__*` variable of the process environment changed
        since they were read (a test patching `os.environ` after the app was made, say);
        values assigned at run time stay. Cheap when nothing changed: one pass over the
        environment's names. Returns True when it read them again.

        Raises:
            ConfigError: the changed environment holds a bad value.
        """
        if not self._follows_os_environ:
            return False
        seen = _env_snapshot(os.environ)
        if seen == self._env_seen:
            return False
        app_id, config_values, config_filepath, base = self._inputs
        fresh = type(self)(app_id, config_values, config_filepath, cwd=base)
        assigned = {
            name: (getattr(self, name), self._origins[name])
            for name, source in self._sources.items()
            if source == "assignment"
        }
        self.__dict__.update(fresh.__dict__)
        for name, (value, origin) in assigned.items():
            object.__setattr__(self, name, value)
            self._sources[name] = "assignment"
            self._origins[name] = origin
        _LOG.debug("the environment changed: configuration read again")
        return True

    def env_value_seen(self, name: str) -> str | None:
        """The raw value the environment variable `name` had when the sources were read."""
        return self._env_seen.get(name)

    def _apply(self, setting: _Setting, value: object) -> None:
        object.__setattr__(self, setting.field.name, value)
        self._sources[setting.field.name] = setting.source
        self._origins[setting.field.name] = setting.origin

    def copy(self) -> PynencConfig:
        """Return an independent config with the same values and sources (reads nothing)."""
        clone = object.__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone._sources = dict(self._sources)
        clone._origins = dict(self._origins)
        return clone

    def source_of(self, name: str) -> str:
        """Return the name of the source that gave field `name` its value (see SOURCES).

        Raises:
            ConfigError: `name` is not a field.
        """
        if name not in _FIELD_BY_NAME:
            raise _unknown_name_error(name, "the source_of() argument")
        return self._sources[name]

    def origin_of(self, name: str) -> str:
        """Where field `name`'s value came from, in words (e.g. "env PYNENC__MAX_THREADS").

        Raises:
            ConfigError: `name` is not a field.
        """
        self.source_of(name)  # checks the name
        return self._origins[name]

    def as_dict(self) -> dict[str, object]:
        """Return every field's value, in table order."""
        return {field.name: getattr(self, field.name) for field in FIELDS}

    def describe(self) -> list[tuple[str, object, str]]:
        """Return (field, value, source) for every field, in table order (secrets as "***")."""
        return [(field.name, _shown(field, getattr(self, field.name)),
                 self._sources[field.name]) for field in FIELDS]

    def format_table(self) -> str:
        """Return `describe()` as aligned text columns, for a command line."""
        rows = [(name, repr(value), source) for name, value, source in self.describe()]
        return format_table(("field", "value", "source"), rows)


Config = PynencConfig


def _shown(field: Field, value: object) -> object:
    return "***" if field.secret and value is not None else value


# --- reading the sources ----------------------------------------------------------------

def _read_sources(
    app_id: str | None,
    config_values: Mapping[str, object] | None,
    config_filepath: str | os.PathLike[str] | None,
    environ: Mapping[str, str],
    cwd: Path,
) -> Iterator[_Setting]:
    """Yield every setting found, lowest precedence first."""
    pyproject = _find_pyproject(cwd)
    if pyproject is not None:
        tool = _read_toml(pyproject, within=("tool", "pynenc")).get("tool")
        table = tool.get("pynenc") if isinstance(tool, dict) else None
        if isinstance(table, dict):
            yield from _settings_for_table(table, "pyproject", f"pyproject {pyproject}")
    filepath = config_filepath if config_filepath is not None else environ.get(ENV_FILEPATH)
    if filepath:
        path = cwd / filepath  # an absolute filepath replaces cwd
        yield from _settings_for_table(_read_config_file(path), "config_file",
                                       f"config_file {path}")
    if config_values:
        yield from _settings_for_table(config_values, "code", "config_values")
    if app_id is not None:
        yield _Setting(_FIELD_BY_NAME["app_id"], app_id, "code", "app_id argument")
    yield from _settings_for_env(environ)


def _env_snapshot(environ: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in environ.items() if name.startswith(ENV_PREFIX)}


def _runner_sections(settings: list[_Setting]) -> tuple[str, ...]:
    """The runner sections that apply: those of the runner class the settings choose (the
    last `runner_cls` given, spelled as given, since pynenc's names map onto ours)."""
    chosen = str(_FIELD_BY_NAME["runner_cls"].default)
    for setting in settings:
        if setting.field.name == "runner_cls" and setting.raw is not None:
            chosen = str(setting.raw).strip()
    return compat.RUNNER_SECTION_CHAINS.get(
        chosen.lower(), compat.RUNNER_SECTION_CHAINS["threadrunner"]
    )


def _find_pyproject(start: Path) -> Path | None:
    # The first pyproject.toml going up is the project's, even without a [tool.pynenc] table.
    for directory in (start, *start.parents):
        candidate = directory / "pyproject.toml"
        if candidate.is_file():
            return candidate
    return None


def _read_toml(path: Path, within: tuple[str, ...] | None = None) -> dict[str, Any]:
    """A TOML file as dicts: with `tomllib` on Python 3.11+, else with `toml_subset`, which
    reads what pynenc configuration uses and refuses loudly what it cannot read (only the
    tables under `within` are read then; tomllib reads the whole file either way)."""
    try:
        if sys.version_info >= (3, 11):
            with path.open("rb") as file:
                return tomllib.load(file)
        return toml_subset.loads(path.read_text(encoding="utf-8"), within)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    except ValueError as exc:  # tomllib.TOMLDecodeError and TomlSubsetError are ValueErrors
        hint = "" if sys.version_info >= (3, 11) else (
            "; on Python < 3.11 pynenc_lite reads a subset of TOML (see "
            "pynenc_lite/toml_subset.py): simplify the value, or use a .json config file"
        )
        raise ConfigError(f"cannot read {path}: {exc}{hint}") from exc


def _read_config_file(path: Path) -> Mapping[str, object]:
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix == ".toml":
        data = _read_toml(path)
        tool = data.get("tool")
        table = tool.get("pynenc") if isinstance(tool, dict) else None
        # Accept a copy of a pyproject's [tool.pynenc] table as well as a flat file.
        return table if isinstance(table, dict) else data
    if path.suffix != ".json":
        raise ConfigError(f"config file {path}: expected a .json or .toml file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a JSON object of fields")
    return data


def _settings_for_table(
    table: Mapping[str, object], source: str, origin: str
) -> Iterator[_Setting]:
    # Flat keys first, so that a section's value for the same field wins, as in pynenc.
    items = sorted(table.items(), key=lambda item: isinstance(item[1], Mapping))
    for key, raw in items:
        if not isinstance(raw, Mapping):
            yield from _settings_for_key(str(key), raw, source, origin, None)
            continue
        section = str(key).lower()
        if section not in compat.PYNENC_SECTIONS:
            raise _unknown_name_error(str(key), origin, candidates=compat.PYNENC_SECTIONS,
                                      what="configuration section")
        for sub_key, sub_raw in raw.items():
            yield from _settings_for_key(str(sub_key), sub_raw, source,
                                         f"{origin} [{key}]", section)


def _settings_for_env(environ: Mapping[str, str]) -> Iterator[_Setting]:
    names = [name for name in environ if name.startswith(ENV_PREFIX) and name != ENV_FILEPATH]
    # Flat variables first, so PYNENC__<SECTION>__<FIELD> wins over PYNENC__<FIELD>.
    for name in sorted(names, key=lambda name: (name.count("__"), name)):
        parts = name[len(ENV_PREFIX):].lower().split("__")
        origin = f"env {name}"
        if len(parts) == 1:
            yield from _settings_for_key(parts[0], environ[name], "env", origin, None)
            continue
        section = parts[0]
        if section not in compat.PYNENC_SECTIONS and section.startswith("config"):
            section = section[len("config"):]
        if section not in compat.PYNENC_SECTIONS:
            raise _unknown_name_error(parts[0], origin, candidates=compat.PYNENC_SECTIONS,
                                      what="configuration section")
        if len(parts) == 2 and parts[1] != "filepath":
            yield from _settings_for_key(parts[1], environ[name], "env", origin, section)
        else:  # pynenc's per-task (SECTION__MODULE#TASK__FIELD) or per-class file variables
            compat.warn_ignored("setting", name, origin)


def _settings_for_key(
    key: str, raw: object, source: str, origin: str, section: str | None
) -> Iterator[_Setting]:
    """Yield the setting `key` stands for: ours, a pynenc synonym, or nothing (ignored)."""
    if key in _FIELD_BY_NAME:
        # pynenc's runners read max_threads = 0 as "one per CPU"; keep that meaning there.
        if key == "max_threads" and section is not None and str(raw).strip() == "0":
            raw = os.cpu_count() or 1
        yield _Setting(_FIELD_BY_NAME[key], raw, source, origin, section)
    elif key in compat.PYNENC_RENAMES:
        yield _Setting(_FIELD_BY_NAME[compat.PYNENC_RENAMES[key]], raw, source, origin, section)
    elif key in compat.PYNENC_SCALED:
        name, factor = compat.PYNENC_SCALED[key]
        try:
            scaled: object = float(str(raw)) * factor
        except ValueError:
            scaled = raw  # refused by the field's check, which names the value
        yield _Setting(_FIELD_BY_NAME[name], scaled, source, f"{origin} ({key} x {factor:g})",
                       section)
    elif key == "serializer_cls" and isinstance(raw, str) and raw in compat.PICKLE_SERIALIZERS:
        _LOG.debug("%s: serializer_cls %r fits pynenc_lite, which always pickles", origin, raw)
    elif key in compat.PYNENC_ONLY_SETTINGS or (section == "task" and isinstance(raw, Mapping)):
        compat.warn_ignored("setting", key, origin)
    else:
        raise _unknown_name_error(key, origin)


# --- checking values ----------------------------------------------------------------------

def _convert(setting: _Setting) -> object:
    """Return the setting's raw value as the field's type, or raise ConfigError."""
    field, raw = setting.field, setting.raw
    none_words = ("", "none", "null") if setting.source == "env" else ("",)
    if field.optional and (raw is None or (isinstance(raw, str) and raw.strip().lower()
                                           in none_words)):
        return None
    try:
        value = _PARSERS[field.type](raw)
    except (TypeError, ValueError):
        raise _bad_value_error(setting) from None
    if (
        field.minimum is not None
        and isinstance(value, (int, float))
        and (value < field.minimum or (field.exclusive and value == field.minimum))
    ):
        raise _bad_value_error(setting)
    if field.choices is not None:
        stored = {spelling.lower(): stored for spelling, stored in field.choices}
        if str(value).lower() not in stored:
            raise _bad_value_error(setting)
        value = stored[str(value).lower()]
    if field.check is not None and not field.check(value):
        raise _bad_value_error(setting)
    return value


def _parse_bool(raw: object) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, str) and raw.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
        return raw.strip().lower() in _TRUE_WORDS
    raise ValueError(raw)


def _parse_int(raw: object) -> int:
    # bool is an int subclass, and float would silently drop a fraction: refuse both.
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise TypeError(raw)
    return int(raw)


def _parse_float(raw: object) -> float:
    if isinstance(raw, bool) or not isinstance(raw, (int, float, str)):
        raise TypeError(raw)
    value = float(raw)
    if not math.isfinite(value):
        raise ValueError(raw)
    return value


def _parse_str(raw: object) -> str:
    if not isinstance(raw, str):
        raise TypeError(raw)
    return raw


_PARSERS: dict[type, Callable[[object], object]] = {
    bool: _parse_bool, int: _parse_int, float: _parse_float, str: _parse_str,
}


def _expected(field: Field) -> str:
    if field.choices is not None:
        text = "one of " + ", ".join(repr(spelling) for spelling, _ in field.choices)
    elif field.expected:
        text = field.expected
    elif field.type is bool:
        text = "true or false (or 1/0, yes/no, on/off)"
    elif field.type is int:
        text = f"a whole number >= {field.minimum:g}"
    elif field.type is float:
        text = f"a number of seconds {'>' if field.exclusive else '>='} {field.minimum:g}"
    else:
        text = "a string"
    return text + (", or None" if field.optional else "")


def _bad_value_error(setting: _Setting) -> ConfigError:
    field = setting.field
    raw = "***" if field.secret else repr(setting.raw)
    return ConfigError(f"{field.name}: expected {_expected(field)}, got {raw} "
                       f"from {setting.origin}{field.hint}")


def _check_order(values: Mapping[str, object], origins: Mapping[str, str]) -> None:
    for smaller, larger, strictly in _ORDERED_PAIRS:
        low, high = values[smaller], values[larger]
        if not isinstance(low, float) or not isinstance(high, float):
            continue
        if low > high or (strictly and low == high):
            relation = "less than" if strictly else "at most"
            raise ConfigError(
                f"{smaller} ({low!r} from {origins[smaller]}) must be {relation} "
                f"{larger} ({high!r} from {origins[larger]})"
            )


def _unknown_name_error(
    name: str,
    origin: str,
    candidates: frozenset[str] | None = None,
    what: str = "configuration field",
) -> ConfigError:
    names = candidates if candidates is not None else {*_FIELD_BY_NAME, *compat.PYNENC_RENAMES}
    # A higher cutoff than difflib's 0.6: a wrong suggestion is worse than none.
    close = difflib.get_close_matches(name.lower(), sorted(names), n=3, cutoff=0.75)
    suggestion = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return ConfigError(f"unknown {what} {name!r} from {origin}{suggestion}")

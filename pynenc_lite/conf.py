"""Configuration: `PynencConfig` (alias `Config`), an app's settings and where each came from.

It applies the settings of the sources below, lowest precedence first, checked against the
`FIELDS` table (`config_fields`, re-exported here), and remembers which source gave each
value:

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

The table itself is `config_fields.FIELDS`; reading the sources and checking values is
`config_reading`; this module holds the object that applies them and remembers the sources.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any, Mapping

from pynenc_lite import compat
from pynenc_lite.config_fields import (  # re-exported: the public names of conf
    ENV_FILEPATH,
    ENV_PREFIX,
    FIELD_BY_NAME,
    FIELDS,
    SOURCES,
    Field,
)
from pynenc_lite.config_reading import (
    Setting,
    check_order,
    convert,
    env_snapshot,
    read_sources,
    runner_sections,
    settings_for_key,
    unknown_name_error,
)
from pynenc_lite.tables import format_table

__all__ = ["ENV_FILEPATH", "ENV_PREFIX", "FIELDS", "SOURCES", "Config", "Field",
           "PynencConfig"]

_LOG = logging.getLogger(__name__)
# Serializes `reload_if_env_changed` across configs and threads (reloads are rare).
_RELOAD_LOCK = threading.Lock()


def _apply_order(setting: Setting, chain: tuple[str, ...]) -> tuple[int, int]:
    """Where a setting goes in the order of application: by source, then flat before
    sections, then runner sections from the most general to the chosen class's own."""
    if setting.section is None:
        rank = 0
    elif setting.section in chain:
        rank = 2 + chain.index(setting.section)
    else:
        rank = 1  # a section that is not a runner's (sqlite, pynenc, ...)
    return SOURCES.index(setting.source), rank

class PynencConfig:
    """The configuration of one app: every field in `FIELDS` is an attribute.

    Args:
        app_id: the app's name; given here it counts as a "code" value.
        config_values: field values given in code (flat, or pynenc-style sections).
        config_filepath: a .json or .toml file; else env PYNENC__FILEPATH.
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
        self._env_seen = env_snapshot(env)
        settings = list(read_sources(app_id, config_values, config_filepath, env, base))
        chain = runner_sections(settings)
        applicable = [
            s for s in settings
            if s.section not in compat.RUNNER_SECTIONS or s.section in chain
        ]  # another runner class's section does not apply
        # Within one source: flat values, then sections, the chosen runner class's most
        # specific section last (it wins, as a subclass's config does in pynenc); across
        # sources, precedence as read. sorted() is stable, so equal keys keep their order.
        for setting in sorted(applicable, key=lambda s: _apply_order(s, chain)):
            self._apply(setting, convert(setting))
        check_order(self.as_dict(), self._origins)

    def __setattr__(self, name: str, value: object) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        for setting in settings_for_key(name, value, "assignment", "assignment", None):
            converted = convert(setting)
            # Check the pair before changing anything, so a refused value leaves no trace.
            values = {**self.as_dict(), setting.field.name: converted}
            check_order(values, {**self._origins, setting.field.name: "assignment"})
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
        if env_snapshot(os.environ) == self._env_seen:
            return False
        with _RELOAD_LOCK:  # one reload at a time; the others find it done
            if env_snapshot(os.environ) == self._env_seen:
                return False
            app_id, config_values, config_filepath, base = self._inputs
            state = dict(type(self)(app_id, config_values, config_filepath, cwd=base).__dict__)
            sources, origins = dict(state["_sources"]), dict(state["_origins"])
            for name, source in self._sources.items():
                if source == "assignment":  # values assigned at run time stay
                    state[name] = getattr(self, name)
                    sources[name], origins[name] = "assignment", self._origins[name]
            state["_sources"], state["_origins"] = sources, origins
            # One dict update: a reader sees the old state or the new one, never a mix of
            # the environment's values and lost assignments.
            self.__dict__.update(state)
        _LOG.debug("the environment changed: configuration read again")
        return True

    def env_value_seen(self, name: str) -> str | None:
        """The raw value the environment variable `name` had when the sources were read."""
        return self._env_seen.get(name)

    def _apply(self, setting: Setting, value: object) -> None:
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
        if name not in FIELD_BY_NAME:
            raise unknown_name_error(name, "the source_of() argument")
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


def __getattr__(name: str) -> Any:
    # pynenc's submodule paths under this module (see pynenc_lite.pynenc_paths).
    from pynenc_lite import pynenc_paths

    return pynenc_paths.submodule(__name__, name)

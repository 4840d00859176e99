"""Reading configuration: settings from every source, in precedence order, and the checks of
each value against the field table.

    read_sources     defaults < pyproject [tool.pynenc] < config file < code < env
    settings_for_*   pynenc's sections, renames and "accepted but ignored" names
    convert          a raw value -> the field's type, or a ConfigError naming field and source

It keeps no state: `conf.PynencConfig` applies what this yields and remembers the sources.
"""

from __future__ import annotations

import difflib
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, NamedTuple

from pynenc_lite import compat, toml_subset
from pynenc_lite.config_fields import (
    ENV_FILEPATH,
    ENV_PREFIX,
    FIELD_BY_NAME,
    ORDERED_PAIRS,
    Field,
)
from pynenc_lite.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib

_LOG = logging.getLogger(__name__)

_TRUE_WORDS = frozenset({"true", "1", "yes", "on"})
_FALSE_WORDS = frozenset({"false", "0", "no", "off"})


class Setting(NamedTuple):
    """A raw value for a field, with the source's name and a description of where it was."""

    field: Field
    raw: object
    source: str
    origin: str  # for messages, e.g. "env PYNENC__MAX_THREADS"
    section: str | None = None  # the pynenc section it was given in, if any


# --- reading the sources ----------------------------------------------------------------

def read_sources(
    app_id: str | None,
    config_values: Mapping[str, object] | None,
    config_filepath: str | os.PathLike[str] | None,
    environ: Mapping[str, str],
    cwd: Path,
) -> Iterator[Setting]:
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
        yield Setting(FIELD_BY_NAME["app_id"], app_id, "code", "app_id argument")
    yield from _settings_for_env(environ)


def env_snapshot(environ: Mapping[str, str]) -> dict[str, str]:
    return {name: value for name, value in environ.items() if name.startswith(ENV_PREFIX)}


def runner_sections(settings: list[Setting]) -> tuple[str, ...]:
    """The runner sections that apply: those of the runner class the settings choose (the
    last `runner_cls` given, spelled as given, since pynenc's names map onto ours)."""
    chosen = str(FIELD_BY_NAME["runner_cls"].default)
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
) -> Iterator[Setting]:
    # Flat keys first, so that a section's value for the same field wins, as in pynenc.
    items = sorted(table.items(), key=lambda item: isinstance(item[1], Mapping))
    for key, raw in items:
        if not isinstance(raw, Mapping):
            yield from settings_for_key(str(key), raw, source, origin, None)
            continue
        section = str(key).lower()
        if section not in compat.PYNENC_SECTIONS:
            raise unknown_name_error(str(key), origin, candidates=compat.PYNENC_SECTIONS,
                                      what="configuration section")
        for sub_key, sub_raw in raw.items():
            yield from settings_for_key(str(sub_key), sub_raw, source,
                                         f"{origin} [{key}]", section)


def _settings_for_env(environ: Mapping[str, str]) -> Iterator[Setting]:
    names = [name for name in environ if name.startswith(ENV_PREFIX) and name != ENV_FILEPATH]
    # Flat variables first, so PYNENC__<SECTION>__<FIELD> wins over PYNENC__<FIELD>.
    for name in sorted(names, key=lambda name: (name.count("__"), name)):
        parts = name[len(ENV_PREFIX):].lower().split("__")
        origin = f"env {name}"
        if len(parts) == 1:
            yield from settings_for_key(parts[0], environ[name], "env", origin, None)
            continue
        section = parts[0]
        if section not in compat.PYNENC_SECTIONS and section.startswith("config"):
            section = section[len("config"):]
        if section not in compat.PYNENC_SECTIONS:
            raise unknown_name_error(parts[0], origin, candidates=compat.PYNENC_SECTIONS,
                                      what="configuration section")
        if len(parts) == 2 and parts[1] != "filepath":
            yield from settings_for_key(parts[1], environ[name], "env", origin, section)
        else:  # pynenc's per-task (SECTION__MODULE#TASK__FIELD) or per-class file variables
            compat.warn_ignored("setting", name, origin)


def settings_for_key(
    key: str, raw: object, source: str, origin: str, section: str | None
) -> Iterator[Setting]:
    """Yield the setting `key` stands for: ours, a pynenc synonym, or nothing (ignored)."""
    if key in FIELD_BY_NAME:
        # pynenc's runners read max_threads = 0 as "one per CPU"; keep that meaning there.
        if key == "max_threads" and section is not None and str(raw).strip() == "0":
            raw = os.cpu_count() or 1
        yield Setting(FIELD_BY_NAME[key], raw, source, origin, section)
    elif key in compat.PYNENC_RENAMES:
        yield Setting(FIELD_BY_NAME[compat.PYNENC_RENAMES[key]], raw, source, origin, section)
    elif key in compat.PYNENC_SCALED:
        name, factor = compat.PYNENC_SCALED[key]
        try:
            scaled: object = float(str(raw)) * factor
        except ValueError:
            scaled = raw  # refused by the field's check, which names the value
        yield Setting(FIELD_BY_NAME[name], scaled, source, f"{origin} ({key} x {factor:g})",
                       section)
    elif key == "serializer_cls" and isinstance(raw, str) and raw in compat.PICKLE_SERIALIZERS:
        _LOG.debug("%s: serializer_cls %r fits pynenc_lite, which always pickles", origin, raw)
    elif key in compat.PYNENC_ONLY_SETTINGS or (section == "task" and isinstance(raw, Mapping)):
        compat.warn_ignored("setting", key, origin)
    else:
        raise unknown_name_error(key, origin)


# --- checking values ----------------------------------------------------------------------

def convert(setting: Setting) -> object:
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


def _bad_value_error(setting: Setting) -> ConfigError:
    field = setting.field
    raw = "***" if field.secret else repr(setting.raw)
    return ConfigError(f"{field.name}: expected {_expected(field)}, got {raw} "
                       f"from {setting.origin}{field.hint}")


def check_order(values: Mapping[str, object], origins: Mapping[str, str]) -> None:
    for smaller, larger, strictly in ORDERED_PAIRS:
        low, high = values[smaller], values[larger]
        if not isinstance(low, float) or not isinstance(high, float):
            continue
        if low > high or (strictly and low == high):
            relation = "less than" if strictly else "at most"
            raise ConfigError(
                f"{smaller} ({low!r} from {origins[smaller]}) must be {relation} "
                f"{larger} ({high!r} from {origins[larger]})"
            )


def unknown_name_error(
    name: str,
    origin: str,
    candidates: frozenset[str] | None = None,
    what: str = "configuration field",
) -> ConfigError:
    names = candidates if candidates is not None else {*FIELD_BY_NAME, *compat.PYNENC_RENAMES}
    # A higher cutoff than difflib's 0.6: a wrong suggestion is worse than none.
    close = difflib.get_close_matches(name.lower(), sorted(names), n=3, cutoff=0.75)
    suggestion = f"; did you mean {' or '.join(map(repr, close))}?" if close else ""
    return ConfigError(f"unknown {what} {name!r} from {origin}{suggestion}")

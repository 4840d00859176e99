"""Tests for pynenc_lite.conf: defaults, the source ladder, parsing, validation, pynenc names.

Every config is built with `environ={...}` and `cwd=tmp_path` (holding its own
pyproject.toml, so the upward search never reaches a real project) for isolation.
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import sys
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from pynenc_lite import compat
from pynenc_lite import conf as conf_module
from pynenc_lite.conf import FIELDS, SOURCES, Config, PynencConfig
from pynenc_lite.errors import ConfigError, PynencError

HAS_TOMLLIB = sys.version_info >= (3, 11)

PYNENC_SQLITE_PYPROJECT = """
[tool.pynenc]
app_id = "my_app"
orchestrator_cls = "SQLiteOrchestrator"
broker_cls = "SQLiteBroker"
state_backend_cls = "SQLiteStateBackend"
arg_cache_cls = "DisabledArgCache"
trigger_cls = "SQLiteTrigger"
client_data_store_cls = "SQLiteClientDataStore"
serializer_cls = "PickleSerializer"
runner_cls = "ThreadRunner"
dev_mode_force_sync_tasks = false

[tool.pynenc.sqlite]
sqlite_db_path = "/tmp/pynenc.db"

[tool.pynenc.threadrunner]
max_threads = 4
"""


@pytest.fixture(autouse=True)
def fresh_warned_names(monkeypatch: pytest.MonkeyPatch) -> None:
    # "Warn once per process" would otherwise leak between tests.
    monkeypatch.setattr(compat, "_warned", set())


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project directory whose (empty) pyproject.toml stops the upward search."""
    (tmp_path / "pyproject.toml").write_text("", encoding="utf-8")
    return tmp_path


def make(project: Path, environ: dict[str, str] | None = None, **kwargs: Any) -> PynencConfig:
    return PynencConfig(environ={} if environ is None else environ, cwd=project, **kwargs)


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def ignored_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "pynenc_lite.compat" and r.levelno == logging.WARNING]


# --- defaults and the table --------------------------------------------------------------

def test_defaults_come_from_the_table(project: Path) -> None:
    conf = make(project)
    assert conf.describe() == [(f.name, f.default, "default") for f in FIELDS]
    assert list(conf.as_dict()) == [f.name for f in FIELDS]
    assert conf.app_id == "pynenc"
    assert conf.max_threads == 16
    assert conf.sqlite_db_path is None
    assert conf.heartbeat_interval_seconds < conf.lease_seconds
    assert Config is PynencConfig


def test_every_field_has_a_doc_and_a_typed_attribute() -> None:
    annotations = {name: text for name, text in PynencConfig.__annotations__.items()}
    expected = {f.name: (f"{f.type.__name__} | None" if f.optional else f.type.__name__)
                for f in FIELDS}
    assert annotations == expected
    assert all(f.doc for f in FIELDS)
    durations = [f.name for f in FIELDS if f.type is float]
    assert all(name.endswith("_seconds") for name in durations)


def test_copy_is_independent(project: Path) -> None:
    first = make(project)
    second = first.copy()
    second.max_threads = 3
    assert first.max_threads == 16 and first.source_of("max_threads") == "default"
    assert second.source_of("max_threads") == "assignment"
    make(project).lease_seconds = 20.0
    assert make(project).lease_seconds == 10.0


def test_pickle_round_trip_keeps_values_and_sources(project: Path) -> None:
    conf = make(project, {"PYNENC__MAX_THREADS": "3"})
    clone = pickle.loads(pickle.dumps(conf))
    assert clone.describe() == conf.describe()
    clone.max_threads = 4
    assert conf.max_threads == 3


def test_repr_is_short_and_format_table_lists_every_field(project: Path) -> None:
    conf = make(project, config_values={"max_threads": 2})
    assert repr(conf) == "PynencConfig(app_id='pynenc', changed=['max_threads'])"
    lines = conf.format_table().splitlines()
    assert lines[0].split() == ["field", "value", "source"]
    assert len(lines) == len(FIELDS) + 1
    assert lines[FIELDS.index(conf_module.FIELD_BY_NAME["max_threads"]) + 1].split() == [
        "max_threads", "2", "code"]


# --- the source ladder ---------------------------------------------------------------------

def test_full_ladder_each_source_overrides_the_lower_one(project: Path) -> None:
    (project / "pyproject.toml").write_text(
        "[tool.pynenc]\nmax_threads = 2\nlease_seconds = 20\nmax_lost_attempts = 5\n"
        "shutdown_grace_seconds = 1\nno_worker_warning_seconds = 1\n", encoding="utf-8")
    config_file = write_json(project / "c.json", {
        "max_threads": 3, "lease_seconds": 30, "max_lost_attempts": 6,
        "shutdown_grace_seconds": 2})
    environ = {"PYNENC__MAX_THREADS": "5", "PYNENC__LEASE_SECONDS": "50"}
    conf = make(project, environ, config_filepath=config_file,
                config_values={"max_threads": 4, "lease_seconds": 40, "max_lost_attempts": 7})
    conf.max_threads = 6
    assert [(name, value, source) for name, value, source in conf.describe()
            if source != "default"] == [
        ("max_threads", 6, "assignment"),
        ("lease_seconds", 50.0, "env"),
        ("max_lost_attempts", 7, "code"),
        ("shutdown_grace_seconds", 2.0, "config_file"),
        ("no_worker_warning_seconds", 1.0, "pyproject"),
    ]
    assert {source for _, _, source in conf.describe()} == set(SOURCES)


def test_config_file_overrides_default(project: Path) -> None:
    conf = make(project, config_filepath=write_json(project / "c.json", {"max_threads": 3}))
    assert (conf.max_threads, conf.source_of("max_threads")) == (3, "config_file")


def test_config_file_from_env_filepath_relative_to_cwd(project: Path) -> None:
    write_json(project / "c.json", {"app_id": "from_file", "sqlite": {"sqlite_db_path": "x.db"}})
    conf = make(project, {"PYNENC__FILEPATH": "c.json"})
    assert (conf.app_id, conf.source_of("app_id")) == ("from_file", "config_file")
    assert conf.sqlite_db_path == "x.db"


def test_config_filepath_argument_beats_env_filepath(project: Path) -> None:
    write_json(project / "env.json", {"app_id": "env_file"})
    write_json(project / "arg.json", {"app_id": "arg_file"})
    conf = make(project, {"PYNENC__FILEPATH": "env.json"}, config_filepath="arg.json")
    assert conf.app_id == "arg_file"


def test_code_overrides_config_file_and_app_id_argument_counts_as_code(project: Path) -> None:
    path = write_json(project / "c.json", {"app_id": "file", "max_threads": 3})
    conf = make(project, app_id="arg", config_values={"max_threads": 4}, config_filepath=path)
    assert (conf.app_id, conf.source_of("app_id")) == ("arg", "code")
    assert (conf.max_threads, conf.source_of("max_threads")) == (4, "code")


def test_env_overrides_code(project: Path) -> None:
    conf = make(project, {"PYNENC__APP_ID": "env_app"}, app_id="code_app")
    assert (conf.app_id, conf.source_of("app_id")) == ("env_app", "env")


def test_assignment_overrides_env_and_is_validated(project: Path) -> None:
    conf = make(project, {"PYNENC__MAX_THREADS": "5"})
    conf.max_threads = "7"  # type: ignore[assignment]  # strings are parsed as from a file
    assert (conf.max_threads, conf.source_of("max_threads")) == (7, "assignment")
    with pytest.raises(ConfigError, match=r"max_threads: expected a whole number >= 1, "
                                          r"got 0 from assignment"):
        conf.max_threads = 0
    assert conf.max_threads == 7
    with pytest.raises(ConfigError, match="unknown configuration field 'max_thread'.*"
                                          "did you mean 'max_threads'"):
        conf.max_thread = 3
    conf.runner_cls = "MultiThreadRunner"
    assert conf.runner_cls == "ProcessRunner"


# --- pyproject.toml ----------------------------------------------------------------------

def test_pynenc_sqlite_pyproject_works_unchanged(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (project / "pyproject.toml").write_text(PYNENC_SQLITE_PYPROJECT, encoding="utf-8")
    caplog.set_level(logging.WARNING, logger="pynenc_lite.conf")
    conf = make(project)
    assert conf.app_id == "my_app"
    assert conf.sqlite_db_path == "/tmp/pynenc.db"
    assert conf.max_threads == 4
    assert conf.runner_cls == "ThreadRunner"
    assert conf.broker_cls == "SQLiteBroker"
    assert conf.dev_mode_force_sync_tasks is False
    sources = {name: source for name, _, source in conf.describe()}
    assert sources["sqlite_db_path"] == sources["max_threads"] == "pyproject"
    warned = ignored_warnings(caplog)
    assert len(warned) == 3  # arg_cache_cls, trigger_cls, client_data_store_cls
    assert all("ignoring pynenc setting" in message for message in warned)
    assert not any("serializer_cls" in message for message in warned)


def test_pyproject_is_found_above_cwd_and_the_nearest_one_wins(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.pynenc]\napp_id = "outer"\n',
                                             encoding="utf-8")
    nested = tmp_path / "src" / "pkg"
    nested.mkdir(parents=True)
    assert PynencConfig(environ={}, cwd=nested).app_id == "outer"
    # A nearer pyproject.toml without [tool.pynenc] still ends the search.
    (tmp_path / "src" / "pyproject.toml").write_text("[project]\nname = 'x'\n", encoding="utf-8")
    assert PynencConfig(environ={}, cwd=nested).source_of("app_id") == "default"


def test_toml_config_file_flat_or_with_tool_pynenc(project: Path) -> None:
    (project / "flat.toml").write_text("max_threads = 3\n[sqlite]\nsqlite_db_path = 'a.db'\n",
                                       encoding="utf-8")
    (project / "tool.toml").write_text(PYNENC_SQLITE_PYPROJECT, encoding="utf-8")
    flat = make(project, config_filepath="flat.toml")
    assert (flat.max_threads, flat.sqlite_db_path) == (3, "a.db")
    tool = make(project, config_filepath="tool.toml")
    assert (tool.app_id, tool.source_of("app_id")) == ("my_app", "config_file")


def test_toml_outside_the_subset_is_refused_loudly_before_python_3_11(project: Path) -> None:
    # On 3.11+ tomllib reads dates; before it, the subset reader must refuse, never ignore.
    (project / "c.toml").write_text("max_threads = 3\nwhen = 1979-05-27\n", encoding="utf-8")
    if HAS_TOMLLIB:
        with pytest.raises(ConfigError, match="unknown"):  # read fine; 'when' is no field
            make(project, config_filepath="c.toml")
    else:
        with pytest.raises(ConfigError, match="line 2: .*dates are not supported"):
            make(project, config_filepath="c.toml")


def test_missing_or_unreadable_config_file_is_named(project: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found: .*nowhere.json"):
        make(project, config_filepath="nowhere.json")
    (project / "bad.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ConfigError, match="cannot read .*bad.json"):
        make(project, {"PYNENC__FILEPATH": "bad.json"})
    (project / "list.json").write_text("[1]", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        make(project, config_filepath="list.json")
    (project / "c.yaml").write_text("a: 1", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"expected a \.json or \.toml file"):
        make(project, config_filepath="c.yaml")


# --- parsing -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("True", True), ("true", True), ("1", True), ("yes", True), ("on", True), ("ON", True),
    ("False", False), ("false", False), ("0", False), ("no", False), ("off", False),
])
def test_env_bool_words(project: Path, text: str, expected: bool) -> None:
    conf = make(project, {"PYNENC__DEV_MODE_FORCE_SYNC_TASKS": text})
    assert conf.dev_mode_force_sync_tasks is expected


def test_env_numbers_and_none(project: Path) -> None:
    conf = make(project, {"PYNENC__MAX_THREADS": " 8 ", "PYNENC__LEASE_SECONDS": "30",
                          "PYNENC__POLL_MAX_SECONDS": "0.25",
                          "PYNENC__RESULT_TIMEOUT_SECONDS": "1.5"})
    assert conf.max_threads == 8 and isinstance(conf.max_threads, int)
    assert conf.lease_seconds == 30.0 and isinstance(conf.lease_seconds, float)
    assert conf.poll_max_seconds == 0.25
    assert conf.result_timeout_seconds == 1.5
    for word in ("None", "null", ""):
        conf = make(project, {"PYNENC__RESULT_TIMEOUT_SECONDS": word,
                              "PYNENC__SQLITE_DB_PATH": word},
                    config_values={"result_timeout_seconds": 5, "sqlite_db_path": "a.db"})
        assert conf.result_timeout_seconds is None and conf.sqlite_db_path is None
        assert conf.source_of("sqlite_db_path") == "env"


def test_optional_fields_from_files(project: Path) -> None:
    path = write_json(project / "c.json", {"result_timeout_seconds": None, "sqlite_db_path": ""})
    conf = make(project, config_filepath=path, config_values={"broker_url": None})
    assert conf.result_timeout_seconds is None
    assert conf.sqlite_db_path is None  # pynenc writes "" for "the default path"
    with pytest.raises(ConfigError, match="lease_seconds: expected a number of seconds > 0, "
                                          "got None from config_values"):
        make(project, config_values={"lease_seconds": None})


def test_choices_are_case_insensitive_and_stored_canonically(project: Path) -> None:
    conf = make(project, {"PYNENC__SQLITE_SYNCHRONOUS": "full", "PYNENC__LOGGING_LEVEL": "info",
                          "PYNENC__RUNNER_CLS": "processrunner", "PYNENC__BROKER_CLS": "sqlite",
                          "PYNENC__STATE_BACKEND_CLS": "MemStateBackend"})
    assert conf.sqlite_synchronous == "FULL"
    assert conf.logging_level == "INFO"
    assert conf.runner_cls == "ProcessRunner"
    assert conf.broker_cls == "SQLiteBroker"
    assert conf.state_backend_cls == "MemStateBackend"


@pytest.mark.parametrize("alias", ["PersistentProcessRunner", "MultiThreadRunner"])
def test_pynenc_runner_aliases_become_process_runner(project: Path, alias: str) -> None:
    assert make(project, config_values={"runner_cls": alias}).runner_cls == "ProcessRunner"


def test_broker_url(project: Path) -> None:
    for url in ("tcp://host:7000", "tcps://10.0.0.2:443", "tcp://[::1]:7000"):
        assert make(project, config_values={"broker_url": url}).broker_url == url
    for url in ("http://host:7000", "tcp://host", "tcp://host:99999", "host:7000"):
        with pytest.raises(ConfigError, match=r"broker_url: expected 'tcp://host:port' or "
                                              r"'tcps://host:port', or None, got "):
            make(project, config_values={"broker_url": url})


# --- bad values and unknown names -----------------------------------------------------------

@pytest.mark.parametrize("var, text, expected", [
    ("MAX_THREADS", "abc", "max_threads: expected a whole number >= 1, got 'abc' "
                           "from env PYNENC__MAX_THREADS"),
    ("MAX_THREADS", "2.5", "max_threads: expected a whole number >= 1, got '2.5'"),
    ("RUNNER_PROCESSES", "-1", "runner_processes: expected a whole number >= 0, got '-1'"),
    ("MAX_LOST_ATTEMPTS", "0", "max_lost_attempts: expected a whole number >= 1, got '0'"),
    ("LEASE_SECONDS", "0", "lease_seconds: expected a number of seconds > 0, got '0'"),
    ("SHUTDOWN_GRACE_SECONDS", "-1", "shutdown_grace_seconds: expected a number of seconds "
                                     ">= 0, got '-1'"),
    ("SQLITE_BUSY_TIMEOUT_SECONDS", "inf", "sqlite_busy_timeout_seconds: expected a number"),
    ("RESULT_TIMEOUT_SECONDS", "-2", "result_timeout_seconds: expected a number of seconds "
                                     ">= 0, or None, got '-2'"),
    ("DEV_MODE_FORCE_SYNC_TASKS", "maybe", "dev_mode_force_sync_tasks: expected true or false"),
    ("SQLITE_SYNCHRONOUS", "OFF", "sqlite_synchronous: expected one of 'NORMAL', 'FULL', "
                                  "got 'OFF'"),
    ("LOGGING_LEVEL", "verbose", "logging_level: expected one of 'DEBUG', 'INFO'"),
    ("APP_ID", "", "app_id: expected a non-empty string, got ''"),
])
def test_bad_env_values_name_field_value_source_and_accepted(
    project: Path, var: str, text: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        make(project, {f"PYNENC__{var}": text})
    assert expected in str(caught.value)
    assert f"from env PYNENC__{var}" in str(caught.value)
    assert isinstance(caught.value, PynencError) and isinstance(caught.value, ValueError)


def test_bad_native_values_from_code(project: Path) -> None:
    for field, value in (("max_threads", True), ("max_threads", 2.0), ("app_id", 3),
                         ("dev_mode_force_sync_tasks", 1), ("lease_seconds", [1])):
        with pytest.raises(ConfigError, match=f"^{field}: expected .* from config_values$"):
            make(project, config_values={field: value})


def test_other_backends_are_refused_with_the_multi_host_way(project: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make(project, config_values={"broker_cls": "RedisBroker"})
    message = str(caught.value)
    assert message.startswith("broker_cls: expected one of 'SQLiteBroker', 'MemBroker'")
    assert "got 'RedisBroker' from config_values" in message
    assert "only supports its SQLite backend" in message
    assert 'broker_url = "tcp://host:port"' in message


def test_dummy_runner_is_refused_with_an_explanation(project: Path) -> None:
    with pytest.raises(ConfigError, match="runner_cls: .*got 'DummyRunner'.*"
                                          "dev_mode_force_sync_tasks = true"):
        make(project, config_values={"runner_cls": "DummyRunner"})


def test_unknown_fields_are_errors_with_suggestions(project: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown configuration field 'lease_second' from "
                                          r"config_values; did you mean 'lease_seconds'\?"):
        make(project, config_values={"lease_second": 3})
    with pytest.raises(ConfigError, match="unknown configuration field 'max_thread' from env "
                                          "PYNENC__MAX_THREAD; did you mean 'max_threads'"):
        make(project, {"PYNENC__MAX_THREAD": "3"})
    with pytest.raises(ConfigError, match="unknown configuration field 'colour' from env "
                                          "PYNENC__SQLITE__COLOUR$"):
        make(project, {"PYNENC__SQLITE__COLOUR": "3"})
    with pytest.raises(ConfigError, match="unknown configuration section 'threadrunnr' from "
                                          ".*did you mean 'threadrunner'"):
        make(project, config_values={"threadrunnr": {"max_threads": 3}})
    with pytest.raises(ConfigError, match="unknown configuration section 'sqlitee' from env "
                                          "PYNENC__SQLITEE__SQLITE_DB_PATH; did you mean 'sqlite'"):
        make(project, {"PYNENC__SQLITEE__SQLITE_DB_PATH": "x"})
    with pytest.raises(ConfigError, match="unknown configuration field 'nope' from the "
                                          "source_of"):
        make(project).source_of("nope")


# --- pynenc names ------------------------------------------------------------------------

def test_pynenc_only_names_are_ignored_with_one_warning_per_name(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pynenc_lite.conf")
    values = {"max_pending_seconds": 2.0, "threadrunner": {"min_threads": 2}}
    environ = {"PYNENC__MAX_PENDING_SECONDS": "3",
               "PYNENC__CONFIGTASK__MY_MODULE#MY_TASK__MAX_RETRIES": "2"}
    first = make(project, environ, config_values=values)
    make(project, environ, config_values=values)
    first.min_threads = 3
    warned = ignored_warnings(caplog)
    assert len(warned) == 3
    assert "'max_pending_seconds'" in warned[0] and "config_values" in warned[0]
    assert any("'min_threads'" in message for message in warned)
    assert any("MY_MODULE#MY_TASK" in message for message in warned)
    assert first.describe() == [(f.name, f.default, "default") for f in FIELDS]


def test_serializer_cls_warns_only_when_not_pickle(
    project: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pynenc_lite.conf")
    make(project, config_values={"serializer_cls": "PickleSerializer"})
    assert ignored_warnings(caplog) == []
    make(project, config_values={"serializer_cls": "JsonSerializer"})
    assert len(ignored_warnings(caplog)) == 1


def test_pynenc_sections_map_onto_our_fields(project: Path) -> None:
    conf = make(project, config_values={
        "max_threads": 2,  # flat; the section value below wins, as in pynenc
        "threadrunner": {"max_threads": 6},
        "brokersqlite": {"sqlite_db_path": "b.db"},
        "runner": {"lease_seconds": 12},  # our own names work inside sections too
    })
    assert conf.max_threads == 6
    assert conf.sqlite_db_path == "b.db"
    assert conf.lease_seconds == 12.0
    chosen = {"runner_cls": "MultiThreadRunner", "multithreadrunner": {"max_processes": 2}}
    assert make(project, config_values=chosen).runner_processes == 2


def test_runner_sections_apply_only_to_their_runner_class(project: Path) -> None:
    sections = {
        "threadrunner": {"max_threads": 5},
        "multithreadrunner": {"max_threads": 2, "max_processes": 3},
        "persistentprocessrunner": {"num_processes": 4},
    }
    thread = make(project, config_values=sections)  # runner_cls: ThreadRunner by default
    assert (thread.max_threads, thread.runner_processes) == (5, 0)
    multi = make(project, config_values={**sections, "runner_cls": "MultiThreadRunner"})
    assert (multi.max_threads, multi.runner_processes) == (2, 3)
    persistent = make(project, config_values={**sections, "runner_cls": "PersistentProcessRunner"})
    assert (persistent.max_threads, persistent.runner_processes) == (5, 4)  # a ThreadRunner kind
    # pynenc's ProcessRunner reads only [runner], not the thread runners' sections.
    process = make(project, config_values={**sections, "runner_cls": "ProcessRunner"})
    assert (process.max_threads, process.runner_processes) == (16, 0)


def test_runner_sections_from_a_pyproject_apply_only_to_their_class(project: Path) -> None:
    (project / "pyproject.toml").write_text(
        "[tool.pynenc.threadrunner]\nmax_threads = 5\n"
        "[tool.pynenc.multithreadrunner]\nmax_threads = 2\n",
        encoding="utf-8",
    )
    assert make(project).max_threads == 5  # not the last section read
    env = {"PYNENC__CONFIGMULTITHREADRUNNER__MAX_THREADS": "7"}
    assert make(project, env).max_threads == 5  # another class's variable


def test_pynenc_recovery_fields_map_onto_leases(project: Path) -> None:
    conf = make(project, config_values={"runner_considered_dead_after_minutes": 0.5})
    assert conf.lease_seconds == 30.0
    assert "runner_considered_dead_after_minutes" in conf.origin_of("lease_seconds")


def test_pynenc_max_threads_zero_means_one_per_cpu_only_in_pynenc_sections(
    project: Path
) -> None:
    conf = make(project, config_values={"threadrunner": {"max_threads": 0}})
    assert conf.max_threads == (os.cpu_count() or 1)
    with pytest.raises(ConfigError, match="max_threads: expected a whole number >= 1"):
        make(project, config_values={"max_threads": 0})


def test_env_sections_in_both_spellings_and_section_beats_flat(project: Path) -> None:
    conf = make(project, {"PYNENC__SQLITE__SQLITE_DB_PATH": "/data/app.db",
                          "PYNENC__MAX_THREADS": "2",
                          "PYNENC__THREADRUNNER__MAX_THREADS": "4",
                          "PYNENC__CONFIGPERSISTENTPROCESSRUNNER__NUM_PROCESSES": "3",
                          "PYNENC__RUNNER_CLS": "PersistentProcessRunner",
                          "PYNENC__CONFIGPYNENC__APP_ID": "sectioned"})
    assert conf.sqlite_db_path == "/data/app.db"
    assert conf.max_threads == 4
    assert conf.runner_processes == 3
    assert conf.app_id == "sectioned"
    assert conf.source_of("max_threads") == "env"


# --- pairs of fields -----------------------------------------------------------------------

def test_heartbeat_must_be_less_than_lease(project: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        make(project, {"PYNENC__HEARTBEAT_INTERVAL_SECONDS": "10"})
    assert str(caught.value) == (
        "heartbeat_interval_seconds (10.0 from env PYNENC__HEARTBEAT_INTERVAL_SECONDS) must be "
        "less than lease_seconds (10.0 from default)")
    # Checked on the final values: raising both together is fine.
    conf = make(project, config_values={"heartbeat_interval_seconds": 15, "lease_seconds": 60})
    assert (conf.heartbeat_interval_seconds, conf.lease_seconds) == (15.0, 60.0)
    with pytest.raises(ConfigError, match="heartbeat_interval_seconds .* must be less than "
                                          "lease_seconds .*from assignment"):
        conf.lease_seconds = 15
    assert conf.lease_seconds == 60.0 and conf.source_of("lease_seconds") == "code"


def test_poll_min_must_not_exceed_poll_max(project: Path) -> None:
    assert make(project, config_values={"poll_min_seconds": 0.1}).poll_min_seconds == 0.1
    with pytest.raises(ConfigError, match="poll_min_seconds .* must be at most poll_max_seconds"):
        make(project, config_values={"poll_min_seconds": 0.2})


def test_broker_secret_is_masked(project: Path) -> None:
    secret = "tcp-secret-0123456789abcdef"
    conf = make(project, environ={"PYNENC__BROKER_SECRET": secret},
                config_values={"broker_tls_ca_file": "ca.pem"})
    assert conf.broker_secret == secret  # the value itself is there for the client
    assert conf.source_of("broker_secret") == "env"
    assert ("broker_secret", "***", "env") in conf.describe()
    assert secret not in conf.format_table() and secret not in repr(conf)
    assert conf.broker_tls_ca_file == "ca.pem"
    assert ("broker_secret", None, "default") in make(project).describe()  # unset: None
    with pytest.raises(ConfigError) as info:
        make(project, config_values={"broker_secret": 12345678})
    assert "12345678" not in str(info.value) and "***" in str(info.value)


def test_the_chosen_runner_classs_own_section_beats_its_parents(project: Path) -> None:
    env = {"PYNENC__RUNNER_CLS": "MultiThreadRunner",
           "PYNENC__MULTITHREADRUNNER__MAX_THREADS": "7",
           "PYNENC__THREADRUNNER__MAX_THREADS": "3"}  # sorted after it by name
    assert make(project, env).max_threads == 7
    values = {"runner_cls": "MultiThreadRunner", "multithreadrunner": {"max_threads": 2},
              "threadrunner": {"max_threads": 5}}  # the parent's section comes last here
    assert make(project, config_values=values).max_threads == 2
    process = {"runner_cls": "ProcessRunner", "processrunner": {"lease_seconds": 7},
               "runner": {"lease_seconds": 3}}
    assert make(project, config_values=process).lease_seconds == 7
    # A later source still beats an earlier one's more specific section.
    (project / "pyproject.toml").write_text(
        "[tool.pynenc.threadrunner]\nmax_threads = 9\n", encoding="utf-8")
    assert make(project, {"PYNENC__MAX_THREADS": "4"}).max_threads == 4


def test_a_reload_keeps_run_time_assignments(project: Path) -> None:
    conf = PynencConfig(cwd=project)
    conf.max_threads = 3
    with mock.patch.dict(os.environ, {"PYNENC__APP_ID": "reloaded"}):
        assert conf.reload_if_env_changed()
        assert (conf.app_id, conf.max_threads) == ("reloaded", 3)
        assert conf.source_of("max_threads") == "assignment"
        assert not conf.reload_if_env_changed()  # nothing changed since

"""The TOML subset reader used on Python < 3.11: it reads what pynenc configuration uses the
way tomllib does (checked against tomllib where it exists), skips the rest of a pyproject,
and refuses loudly what it cannot read."""

from __future__ import annotations

import math
from typing import Any

import pytest

from pynenc_lite import toml_subset
from pynenc_lite.toml_subset import TomlSubsetError

try:
    import tomllib
except ImportError:  # Python < 3.11: the expected values below still check the reader
    tomllib = None  # type: ignore[assignment]

DOCUMENTS: list[tuple[str, dict[str, Any]]] = [
    (
        '# a comment\napp_id = "my_app"  # trailing\nmax_threads = 8\n'
        "dev_mode_force_sync_tasks = true\nratio = -1.5e3\nbig = 1_000\nhex = 0x1F\n",
        {"app_id": "my_app", "max_threads": 8, "dev_mode_force_sync_tasks": True,
         "ratio": -1500.0, "big": 1000, "hex": 31},
    ),
    (
        "[tool.pynenc]\napp_id = 'lit\\eral'\n[tool.pynenc.threadrunner]\nmax_threads = 4\n",
        {"tool": {"pynenc": {"app_id": "lit\\eral", "threadrunner": {"max_threads": 4}}}},
    ),
    (
        'names = ["a", "b",\n  "c",  # more\n]\nempty = []\nnested = [[1, 2], [3]]\n'
        'table = { x = 1, "y z" = "w", a.b = false }\nesc = "tab\\there \\u00e9 \\"q\\""\n',
        {"names": ["a", "b", "c"], "empty": [], "nested": [[1, 2], [3]],
         "table": {"x": 1, "y z": "w", "a": {"b": False}}, "esc": 'tab\there \u00e9 "q"'},
    ),
    ('a.b.c = 1\n"quoted key" = 2\n[x."y.z"]\nk = 3\n',
     {"a": {"b": {"c": 1}}, "quoted key": 2, "x": {"y.z": {"k": 3}}}),
]


@pytest.mark.parametrize("text, expected", DOCUMENTS)
def test_reads_the_subset_like_tomllib(text: str, expected: dict[str, Any]) -> None:
    assert toml_subset.loads(text) == expected
    if tomllib is not None:
        assert tomllib.loads(text) == expected


def test_special_floats() -> None:
    data = toml_subset.loads("a = inf\nb = -inf\nc = nan\n")
    assert data["a"] == math.inf and data["b"] == -math.inf and math.isnan(data["c"])


PYPROJECT = '''
[project]
name = "demo"
description = """A description that mentions
[tool.pynenc]
app_id = "not this one"
"""
dependencies = [
  "x>=1",
  "y[extra]",
]
when = 1979-05-27

[[tool.mypy.overrides]]
module = "z"

[tool.pynenc]
app_id = "the_app"

[tool.pynenc.sqlite]
sqlite_db_path = "q.db"

[tool.other]
anything = 2020-01-01T00:00:00Z
'''


def test_reads_only_the_tables_asked_for_and_skips_the_rest() -> None:
    data = toml_subset.loads(PYPROJECT, within=("tool", "pynenc"))
    assert data == {"tool": {"pynenc": {"app_id": "the_app",
                                        "sqlite": {"sqlite_db_path": "q.db"}}}}
    if tomllib is not None:
        assert tomllib.loads(PYPROJECT)["tool"]["pynenc"] == data["tool"]["pynenc"]


@pytest.mark.parametrize(
    "text, message",
    [
        ("a = 1979-05-27\n", "line 1: .*dates are not supported"),
        ('a = """x"""\n', "multi-line strings"),
        ("[[t]]\nx = 1\n", r"arrays of tables"),
        ('a = "open\n', "not closed"),
        ("a = 1\na = 2\n", "given twice"),
        ("a = [1 2]\n", "expected ',' or ']'"),
        ("a = 1 b\n", "unexpected text"),
        ("= 1\n", "expected a key"),
        ('a = "\\q"\n', "unknown escape"),
    ],
)
def test_refuses_what_it_cannot_read_with_the_line(text: str, message: str) -> None:
    with pytest.raises(TomlSubsetError, match=message):
        toml_subset.loads(text)


def test_refuses_unsupported_constructs_inside_the_tables_it_reads() -> None:
    text = "[project]\nwhen = 1979-05-27\n[tool.pynenc]\napp_id = 1979-05-27\n"
    with pytest.raises(TomlSubsetError, match="line 4: .*dates"):  # line 2 is skipped
        toml_subset.loads(text, within=("tool", "pynenc"))


@pytest.mark.parametrize(
    "text",
    [
        "[tool]\npynenc.max_threads = 3\n",
        "tool.pynenc.max_threads = 3\n",
        "[tool]\npynenc = { max_threads = 3 }\n",
        "[tool.pynenc]\nmax_threads = 3\n",
    ],
)
def test_every_spelling_that_reaches_the_table_read_is_read(text: str) -> None:
    expected = {"tool": {"pynenc": {"max_threads": 3}}}
    assert toml_subset.loads(text, within=("tool", "pynenc")) == expected
    if tomllib is not None:
        assert tomllib.loads(text) == expected


def test_skipped_multi_line_strings_end_where_toml_says() -> None:
    text = (
        '[tool.other]\na = """ends with a quote""""\n'
        'b = """an escaped \\""" stays inside\n[tool.pynenc]\nnot = 1\n"""\n'
        "[tool.pynenc]\napp_id = 'x'\n"
    )
    assert toml_subset.loads(text, within=("tool", "pynenc")) == {
        "tool": {"pynenc": {"app_id": "x"}}
    }
    if tomllib is not None:
        assert tomllib.loads(text)["tool"]["pynenc"] == {"app_id": "x"}


@pytest.mark.parametrize("text", ["[t]\na = 1\n[t]\nb = 2\n", "a = 0x-1\n", "a = 0x_1\n"])
def test_invalid_toml_that_looked_fine_is_refused(text: str) -> None:
    with pytest.raises(TomlSubsetError):
        toml_subset.loads(text)
    if tomllib is not None:
        with pytest.raises(tomllib.TOMLDecodeError):
            tomllib.loads(text)

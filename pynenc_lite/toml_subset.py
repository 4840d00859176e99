"""A reader for the part of TOML that pynenc configuration uses, for Python 3.9 and 3.10
(3.11+ has `tomllib`, which `config_reading` uses there).

    [tool.pynenc]                      tables, dotted headers, quoted keys
    app_id = "my_app"                  basic strings (with escapes) and 'literal' strings
    max_threads = 8                    integers (1_000, 0x1f, 0o17, 0b101), floats, inf, nan
    dev_mode_force_sync_tasks = true   booleans
    queues = ["a", "b"]                arrays, also over several lines
    retry = { max = 3, delay = 1.5 }   inline tables; dotted keys (a.b = 1)

`loads(text)` reads a whole document and refuses, with the line number, anything outside
that subset (multi-line strings, dates, arrays of tables), so a setting is never ignored
silently. `loads(text, within=("tool", "pynenc"))` reads only the tables under that prefix
and skips the rest of the document (a pyproject.toml holds much that pynenc never reads),
still refusing what it cannot read inside them.

It does not write TOML, nor keep comments or order beyond what a dict keeps.
"""

from __future__ import annotations

import math
import re
from typing import Any, NoReturn, Optional

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_INTEGER = re.compile(r"[+-]?(0|[1-9](_?[0-9])*)")
_PREFIXED = {"0x": 16, "0o": 8, "0b": 2}
_PREFIXED_DIGITS = {
    base: re.compile(f"[{digits}](_?[{digits}])*")
    for base, digits in ((16, "0-9a-fA-F"), (8, "0-7"), (2, "01"))
}
_TOKEN = re.compile(r"[^\s,\]\}#]+")
_FLOAT = re.compile(r"[+-]?(0|[1-9](_?[0-9])*)(\.[0-9](_?[0-9])*)?([eE][+-]?[0-9](_?[0-9])*)?")
_SPECIAL_FLOATS = {"inf": math.inf, "+inf": math.inf, "-inf": -math.inf, "nan": math.nan,
                   "+nan": math.nan, "-nan": math.nan}
_ESCAPES = {"b": "\b", "t": "\t", "n": "\n", "f": "\f", "r": "\r", '"': '"', "\\": "\\"}


class TomlSubsetError(ValueError):
    """The text is not TOML, or uses TOML this reader does not support; the message names
    the line and says what to do."""


def loads(text: str, within: Optional[tuple[str, ...]] = None) -> dict[str, Any]:
    """The document as nested dicts (only the tables under `within`, when given).

    Raises:
        TomlSubsetError: a syntax error, or a construct outside the subset where it is read.
    """
    return _Parser(text, within).parse()


class _Parser:
    def __init__(self, text: str, within: Optional[tuple[str, ...]]) -> None:
        self.text = text
        self.within = within
        self.pos = 0
        self.root: dict[str, Any] = {}

    # -- the document ---------------------------------------------------------------------

    def parse(self) -> dict[str, Any]:
        path: list[str] = []  # the current table's header path
        headers: set[tuple[str, ...]] = set()
        while True:
            self._skip_blank_lines()
            if self.pos >= len(self.text):
                return self.root
            if self.text.startswith("[[", self.pos):
                path = self._header(double=True)
                if self._overlaps(path):
                    self._fail("arrays of tables ([[...]]) are not supported here; use a "
                               "table or an inline table")
            elif self.text[self.pos] == "[":
                path = self._header(double=False)
                if tuple(path) in headers:
                    self._fail(f"table [{'.'.join(path)}] is declared twice")
                headers.add(tuple(path))
                if self._wanted(path):
                    self._table_at(path)
            else:
                self._statement(path)

    def _statement(self, table_path: list[str]) -> None:
        """One `key = value` line: read when its full path reaches what is read (a dotted
        key or an inline table can reach `[tool.pynenc]` from `[tool]`), skipped otherwise."""
        start = self.pos
        key = self._key_path()
        full = table_path + key
        if not self._overlaps(full):
            self.pos = start
            self._skip_statement()
            return
        self._spaces()
        if not self.text.startswith("=", self.pos):
            self._fail("expected '=' after the key")
        self.pos += 1
        self._spaces()
        value = self._value()
        self._assign(self.root, full, value)
        self._end_of_line()

    def _wanted(self, path: list[str]) -> bool:
        return self.within is None or tuple(path[: len(self.within)]) == self.within

    def _overlaps(self, path: list[str]) -> bool:
        """True when `path` lies inside what is read, or leads to it (`tool` + `pynenc = {}`)."""
        if self.within is None:
            return True
        size = min(len(path), len(self.within))
        return tuple(path[:size]) == self.within[:size] and len(path) >= len(self.within)

    def _table_at(self, path: list[str]) -> dict[str, Any]:
        table = self.root
        for key in path:
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                self._fail(f"{'.'.join(path)} is both a value and a table")
        return table

    def _header(self, double: bool) -> list[str]:
        self.pos += 2 if double else 1
        path = self._key_path()
        closing = "]]" if double else "]"
        if not self.text.startswith(closing, self.pos):
            self._fail(f"expected {closing!r} to close the table header")
        self.pos += len(closing)
        self._end_of_line()
        return path

    def _assign(self, table: dict[str, Any], path: list[str], value: Any) -> None:
        for key in path[:-1]:
            table = table.setdefault(key, {})
            if not isinstance(table, dict):
                self._fail(f"{'.'.join(path)}: {key} is already a value")
        if path[-1] in table:
            self._fail(f"{'.'.join(path)} is given twice")
        table[path[-1]] = value

    # -- keys and values ------------------------------------------------------------------

    def _key_path(self) -> list[str]:
        parts = []
        while True:
            self._spaces()
            char = self._peek()
            if char == '"':
                parts.append(self._basic_string())
            elif char == "'":
                parts.append(self._literal_string())
            else:
                match = _BARE_KEY.match(self.text, self.pos)
                if not match:
                    self._fail("expected a key")
                parts.append(match.group())
                self.pos = match.end()
            self._spaces()
            if self._peek() != ".":
                return parts
            self.pos += 1

    def _value(self) -> Any:
        char = self._peek()
        if self.text.startswith(('"""', "'''"), self.pos):
            self._fail("multi-line strings are not supported here; use one line")
        if char == '"':
            return self._basic_string()
        if char == "'":
            return self._literal_string()
        if char == "[":
            return self._array()
        if char == "{":
            return self._inline_table()
        return self._scalar()

    def _basic_string(self) -> str:
        self.pos += 1
        out: list[str] = []
        while True:
            char = self._peek()
            if char in ("", "\n"):
                self._fail("a string is not closed on its line")
            self.pos += 1
            if char == '"':
                return "".join(out)
            if char != "\\":
                out.append(char)
                continue
            code = self._peek()
            self.pos += 1
            if code in _ESCAPES:
                out.append(_ESCAPES[code])
            elif code in ("u", "U"):
                size = 4 if code == "u" else 8
                digits = self.text[self.pos:self.pos + size]
                if len(digits) != size or not all(c in "0123456789abcdefABCDEF" for c in digits):
                    self._fail(f"bad \\{code} escape")
                out.append(chr(int(digits, 16)))
                self.pos += size
            else:
                self._fail(f"unknown escape \\{code}")

    def _literal_string(self) -> str:
        end = self.text.find("'", self.pos + 1)
        newline = self.text.find("\n", self.pos + 1)
        if end < 0 or (0 <= newline < end):
            self._fail("a string is not closed on its line")
        value = self.text[self.pos + 1:end]
        self.pos = end + 1
        return value

    def _array(self) -> list[Any]:
        self.pos += 1
        items: list[Any] = []
        while True:
            self._skip_blank_lines()
            if self._peek() == "]":
                self.pos += 1
                return items
            items.append(self._value())
            self._skip_blank_lines()
            char = self._peek()
            if char == ",":
                self.pos += 1
            elif char != "]":
                self._fail("expected ',' or ']' in an array")

    def _inline_table(self) -> dict[str, Any]:
        self.pos += 1
        table: dict[str, Any] = {}
        self._spaces()
        if self._peek() == "}":
            self.pos += 1
            return table
        while True:
            path = self._key_path()
            if self._peek() != "=":
                self._fail("expected '=' in an inline table")
            self.pos += 1
            self._spaces()
            self._assign(table, path, self._value())
            self._spaces()
            char = self._peek()
            self.pos += 1
            if char == "}":
                return table
            if char != ",":
                self._fail("expected ',' or '}' in an inline table")

    def _scalar(self) -> Any:
        match = _TOKEN.match(self.text, self.pos)
        if not match:
            self._fail("expected a value")
        token = match.group()
        self.pos = match.end()
        if token in ("true", "false"):
            return token == "true"
        if token in _SPECIAL_FLOATS:
            return _SPECIAL_FLOATS[token]
        base = _PREFIXED.get(token[:2])
        if base is not None:
            digits = token[2:]
            if not _PREFIXED_DIGITS[base].fullmatch(digits):
                self._fail(f"{token!r} is not a number")
            return int(digits.replace("_", ""), base)
        if _INTEGER.fullmatch(token):
            return int(token.replace("_", ""))
        if _FLOAT.fullmatch(token):
            return float(token.replace("_", ""))
        self._fail(f"{token!r} is not a value this reader supports (strings, numbers, "
                   "booleans, arrays and inline tables; dates are not supported)")

    # -- whitespace, comments, skipping ---------------------------------------------------

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _spaces(self) -> None:
        while self._peek() in (" ", "\t"):
            self.pos += 1

    def _skip_comment(self) -> None:
        if self._peek() == "#":
            end = self.text.find("\n", self.pos)
            self.pos = len(self.text) if end < 0 else end

    def _skip_blank_lines(self) -> None:
        while True:
            self._spaces()
            self._skip_comment()
            if self._peek() in ("\n", "\r"):
                self.pos += 1
            else:
                return

    def _end_of_line(self) -> None:
        self._spaces()
        self._skip_comment()
        if self._peek() not in ("", "\n", "\r"):
            self._fail("unexpected text after the value")

    def _skip_statement(self) -> None:
        """Skip one line of a table that is not read, and the multi-line string or array it
        may open, so that nothing inside it is taken for a table header."""
        depth = 0
        while self.pos < len(self.text):
            for quote in ('"""', "'''"):
                if self.text.startswith(quote, self.pos):
                    self._skip_multi_line_string(quote)
                    break
            else:
                char = self.text[self.pos]
                if char in ('"', "'"):
                    if char == '"':
                        self._basic_string()
                    else:
                        self._literal_string()
                    continue
                if char == "#":
                    self._skip_comment()
                    continue
                if char in "[{":
                    depth += 1
                elif char in "]}":
                    depth -= 1
                elif char == "\n" and depth <= 0:
                    self.pos += 1
                    return
                self.pos += 1

    def _skip_multi_line_string(self, quote: str) -> None:
        """Move past a multi-line string that starts here (in a table that is not read)."""
        pos = self.pos + 3
        while True:
            end = self.text.find(quote, pos)
            if end < 0:
                self._fail("a multi-line string is not closed")
            backslashes = 0
            while quote == '"""' and self.text[end - 1 - backslashes] == "\\":
                backslashes += 1
            if backslashes % 2:  # an escaped quote inside a basic string
                pos = end + 1
                continue
            end += 3
            extra = 0  # up to two more quotes belong to the string ('a """"' ends 'a "')
            while extra < 2 and self.text.startswith(quote[0], end):
                end += 1
                extra += 1
            self.pos = end
            return

    def _fail(self, message: str) -> NoReturn:
        line = self.text.count("\n", 0, self.pos) + 1
        raise TomlSubsetError(f"line {line}: {message}")

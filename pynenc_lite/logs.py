"""The library's default log output, for programs that configure no logging themselves.

pynenc prints its runners' INFO lines (an invocation starting, finishing) without any setup,
and its users expect them. So when a runner starts in a process where nobody configured
logging, the `pynenc_lite` logger gets one handler: `logging_level`, on `log_stream`
(stderr or stdout). The handler stays silent once the program configures logging itself (a
handler on the root logger, from `logging.basicConfig` say): then records go only where the
program sends them, never twice.

It configures nothing else: no root handler, no other logger, no level outside `pynenc_lite`.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Optional, TextIO

LOGGER_NAME = "pynenc_lite"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Guards the one default handler of this process.
_lock = threading.Lock()


class DefaultHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes only while the root logger has no handler."""

    def __init__(self, stream_name: str) -> None:
        super().__init__()
        self.stream_name = stream_name

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().handlers:
            return  # the program configured logging: its handlers get the record
        # Looked up at each record, so a test's or a program's replacement of sys.stderr
        # (or sys.stdout) is followed, as print() would.
        self.setStream(_stream(self.stream_name))
        super().emit(record)


class _QuietWhenConfigured(logging.Filter):
    """On the `pynenc_lite` logger while the default handler lowered its level: once the
    program configures logging, records below the root logger's level are dropped, as they
    would be had the level not been lowered."""

    def filter(self, record: logging.LogRecord) -> bool:
        root = logging.getLogger()
        return not root.handlers or record.levelno >= root.getEffectiveLevel()


def _stream(name: str) -> TextIO:
    return sys.stdout if name == "stdout" else sys.stderr


def install_default_handler(level: str, stream_name: str) -> Optional[DefaultHandler]:
    """Give the `pynenc_lite` logger its default handler, unless logging is configured: the
    root logger or `pynenc_lite` already has a handler. Returns the handler it added (or
    updated: level and stream follow the latest call), None when it did nothing."""
    library = logging.getLogger(LOGGER_NAME)
    with _lock:
        mine = [h for h in library.handlers if isinstance(h, DefaultHandler)]
        if mine:
            handler = mine[0]
        elif logging.getLogger().handlers or library.handlers:
            return None
        else:
            handler = DefaultHandler(stream_name)
            handler.setFormatter(logging.Formatter(FORMAT))
            library.addHandler(handler)
        handler.stream_name = stream_name
        handler.setLevel(level)
        if library.level == logging.NOTSET or any(
            isinstance(f, _QuietWhenConfigured) for f in library.filters
        ):
            # The logger's level is ours to set (nobody else set one).
            library.setLevel(level)
            if not any(isinstance(f, _QuietWhenConfigured) for f in library.filters):
                library.addFilter(_QuietWhenConfigured())
        return handler

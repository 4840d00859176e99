"""The library's default log output, for programs that configure no logging themselves.

pynenc prints its runners' INFO lines (an invocation starting, finishing) without any setup,
and its users expect them. So when a runner is made in a process where nobody configured
logging, the `pynenc_lite` logger gets one handler (`DefaultHandler`) at `logging_level`, on
`log_stream` (stderr or stdout), its level is lowered to match, and it stops propagating
(so nothing reaches the root logger twice).

The first record after the program configures logging itself (any handler on the root
logger, from `logging.basicConfig` say) undoes all three, and from then on the program's
own levels and handlers decide. That first record goes on to the root logger's handlers
(whatever the root's level, since it was already made), once. A handler the program puts
on the `pynenc_lite` logger itself also silences the default output.

It configures nothing else: no root handler, no other logger, no level outside `pynenc_lite`.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Optional, TextIO

LOGGER_NAME = "pynenc_lite"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Guards installing and removing the one default handler of this process.
_lock = threading.Lock()


class DefaultHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The default output; it steps aside once the program configures logging."""

    def __init__(self, stream_name: str) -> None:
        super().__init__()
        self.stream_name = stream_name

    def emit(self, record: logging.LogRecord) -> None:
        library = logging.getLogger(LOGGER_NAME)
        root = logging.getLogger()
        if root.handlers:
            # The program configured logging: its levels decide from now on. This record
            # propagates to the root logger's handlers (propagation is back on), once.
            _remove(self)
            return
        if len(library.handlers) > 1:
            return  # the program gave the library's logger a handler of its own
        # Looked up at each record, so a replacement of sys.stderr (or sys.stdout) by a
        # program or a test is followed, as print() would.
        self.setStream(_stream(self.stream_name))
        super().emit(record)


def _stream(name: str) -> TextIO:
    return sys.stdout if name == "stdout" else sys.stderr


def _remove(handler: DefaultHandler) -> None:
    library = logging.getLogger(LOGGER_NAME)
    with _lock:
        if handler in library.handlers:
            library.removeHandler(handler)
            library.setLevel(logging.NOTSET)
            library.propagate = True


def has_default_handler() -> bool:
    """True when this process's `pynenc_lite` logger has the default handler (a process
    runner then gives its worker processes the same)."""
    return any(isinstance(h, DefaultHandler) for h in logging.getLogger(LOGGER_NAME).handlers)


def install_default_handler(level: str, stream_name: str) -> Optional[DefaultHandler]:
    """Give the `pynenc_lite` logger its default output, unless logging is configured: the
    root logger or the `pynenc_lite` logger already has a handler, or the latter a level
    set by the program. Returns the handler added (or updated: level and stream follow the
    latest call), None when it did nothing."""
    library = logging.getLogger(LOGGER_NAME)
    with _lock:
        mine = [h for h in library.handlers if isinstance(h, DefaultHandler)]
        if mine:
            handler = mine[0]
        elif logging.getLogger().handlers or library.handlers or library.level:
            return None
        else:
            handler = DefaultHandler(stream_name)
            handler.setFormatter(logging.Formatter(FORMAT))
            library.addHandler(handler)
            library.propagate = False
        handler.stream_name = stream_name
        handler.setLevel(level)
        library.setLevel(level)
        return handler

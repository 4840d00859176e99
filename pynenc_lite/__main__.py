"""`python -m pynenc_lite <command>`: the admin command line (see `pynenc_lite.admin`), and
pynenc's own command forms, for programs and scripts written for pynenc:

    python -m pynenc_lite --app tasks.app runner start      the worker command (pynenc_lite.worker)
    python -m pynenc_lite --app tasks.app show_config       `config` of the admin command
    python -m pynenc_lite --app tasks.app runner show_config

`--app` takes pynenc's `module.app` as well as `module:app`. pynenc's `-v`/`--verbose` sets
the worker's log level to DEBUG. Anything else is the admin command line.
"""

from __future__ import annotations

import signal
import sys

_STARTS_A_WORKER = "runner" in sys.argv and "start" in sys.argv
if __name__ == "__main__" and _STARTS_A_WORKER and hasattr(signal, "pthread_sigmask"):
    # As the worker command does: a stop during the imports below waits for the runner.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})

from typing import Optional, Sequence  # noqa: E402

from pynenc_lite import admin, worker  # noqa: E402
from pynenc_lite.runner.base import unblock_stop_signals  # noqa: E402


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run `python -m pynenc_lite`; returns the exit code."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    finally:
        unblock_stop_signals()  # held at the top for `runner start`; any other path frees them


def _main(args: list[str]) -> int:
    app, verbose, rest = _pynenc_options(args)
    if rest[:2] == ["runner", "start"]:
        if app is None:
            print("pynenc_lite: error: runner start needs --app module.app", file=sys.stderr)
            return 2
        return worker.main([app, *(["--log-level", "DEBUG"] if verbose else []), *rest[2:]])
    if rest[:1] == ["show_config"] or rest[:2] == ["runner", "show_config"]:
        return admin.main(["config", *(["--app", app] if app else [])])
    return admin.main(args)


def _pynenc_options(args: list[str]) -> tuple[Optional[str], bool, list[str]]:
    """pynenc's options given before its command: (--app value, --verbose, the rest)."""
    app: Optional[str] = None
    verbose = False
    rest = list(args)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option in ("-v", "--verbose"):
            verbose = True
        elif option == "--app" and rest:
            app = rest.pop(0)
        elif option.startswith("--app="):
            app = option.split("=", 1)[1]
        else:
            return None, False, list(args)  # not pynenc's form: the admin command's own
    return app, verbose, rest


if __name__ == "__main__":
    sys.exit(main())

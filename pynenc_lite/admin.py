"""`python -m pynenc_lite <command>`: look into an app's queue and operate on it.

    python -m pynenc_lite status                   counts, oldest waiting work, workers, throughput
    python -m pynenc_lite inspect ID               one invocation: arguments, history, error
    python -m pynenc_lite list [--status S] [--task T] [--limit N]
    python -m pynenc_lite requeue (ID ... | --task NAME | --all-failed)
    python -m pynenc_lite cancel ID
    python -m pynenc_lite purge --yes
    python -m pynenc_lite config                   every setting, its value and its source

The app is `--app TARGET` (as for the worker: module:attr, module or file.py), or else a
plain `Pynenc()` configured from the environment (`PYNENC__SQLITE_DB_PATH`,
`PYNENC__APP_ID`, `PYNENC__BROKER_URL`, ...) and pyproject.toml; `--db` and `--app-id`
override both. Storage is reached only through the `Backend` protocol, so every command
works the same on a local SQLite file and on a `tcp://` server (an app whose queue lives in
the memory of its own process, pynenc's Mem* components, has nothing here to look at: every
command but `config` says so and exits 2). The commands that only read
(status, inspect, list) open a local file read-only, so they work on a file this user may
not write; requeue, cancel and purge need write access to the file and its folder.

Output is aligned tables for people and `--json` for scripts. Exit codes: 0 done; 1 nothing
found or nothing done (an unknown id, a `list` that matches nothing, a cancel of a finished
invocation, a requeue that requeued nothing or not every given id); 2 a bad command line,
target, configuration or database (one line on stderr).

Only `inspect` unpickles anything — the arguments and the result, to show them. Loading a
pickle runs code, so use it on databases you trust, or pass `--no-unpickle`.

This module holds no queue logic of its own: each command is one or two backend calls and
their presentation. Logging is configured only by `main()`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import pickle
import shlex
import sys
import time
from typing import Any, Callable, Optional, Sequence

from pynenc_lite.app import Pynenc
from pynenc_lite.backend.base import Backend, InvocationRecord
from pynenc_lite.backend.sqlite import SQLiteBackend
from pynenc_lite.errors import PynencError
from pynenc_lite.loading import load_app
from pynenc_lite.status import InvocationStatus
from pynenc_lite.tables import format_age, format_table, format_time, shorten

logger = logging.getLogger(__name__)

PROG = "python -m pynenc_lite"
EXIT_OK, EXIT_NOTHING_DONE, EXIT_USAGE = 0, 1, 2
REPR_LIMIT = 200  # characters of an argument or result repr shown by `inspect`
ERROR_LIMIT = 60  # characters of an error line shown in `list`
STALE_HEARTBEATS = 3  # a worker silent for this many heartbeat intervals is shown as stale
STATUSES = [s.value for s in InvocationStatus]


class CommandError(Exception):
    """A problem the user can fix (bad arguments, no database there): exit 2, one line."""


# -- formatting ------------------------------------------------------------------------------


def _safe_repr(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:  # a broken __repr__ must not end the command
        return f"<repr failed: {type(exc).__name__}: {exc}>"


def describe_pickle(
    data: Optional[bytes], *, unpickle: bool, as_call: bool = False
) -> dict[str, Any]:
    """What can be shown of a stored pickle without ever raising.

    Returns `size_bytes`, `repr` (truncated; None when not loaded) and `error` (why not).
    With `as_call`, the pickle is an `(args, kwargs)` pair shown as `(1, 2, key=3)`.
    """
    if data is None:
        return {"size_bytes": None, "repr": None, "error": "nothing stored"}
    info: dict[str, Any] = {"size_bytes": len(data), "repr": None, "error": None}
    if not unpickle:
        info["error"] = "not unpickled (--no-unpickle)"
        return info
    try:
        value = pickle.loads(data)
        if as_call:
            args, kwargs = value
            parts = [_safe_repr(a) for a in args]
            parts += [f"{k}={_safe_repr(v)}" for k, v in kwargs.items()]
            text = f"({', '.join(parts)})"
        else:
            text = _safe_repr(value)
    except Exception as exc:  # missing class, broken __setstate__, not a pair...
        info["error"] = f"cannot unpickle here: {type(exc).__name__}: {exc}"
        return info
    info["repr"] = shorten(text, REPR_LIMIT)
    return info


def _pickle_text(info: dict[str, Any]) -> str:
    size = "no data" if info["size_bytes"] is None else f"{info['size_bytes']} bytes"
    shown = info["repr"] if info["repr"] is not None else f"<{info['error']}>"
    return f"{shown}  [{size}]"


def _emit(args: argparse.Namespace, data: Any, text: str) -> None:
    print(json.dumps(data, indent=2, default=str) if args.json else text)
    sys.stdout.flush()  # a closed pipe (`| head`) then fails here, inside main()


# -- the app and its backend -----------------------------------------------------------------


def load_target(args: argparse.Namespace) -> Pynenc:
    """The app the command line names, with `--db` and `--app-id` applied.

    Raises:
        PynencError: the target or the configuration is bad (the message says why).
    """
    app = load_app(args.app)[0] if args.app else Pynenc()
    if args.app_id:
        app.conf.app_id = args.app_id
    if args.db:
        app.conf.sqlite_db_path = args.db
        if app.conf.broker_url:
            app.conf.broker_url = None  # an explicit file beats a server from the environment
    return app


def open_backend(app: Pynenc, *, write: bool = False) -> Backend:
    """The app's backend, refusing to create a new, empty SQLite file by accident.

    A local SQLite file is opened read-only unless the command writes (`write=True`), so
    status, inspect and list work on a file this user may read but not change (another
    user's, an immutable one, one on a read-only mount). The commands that write get the
    app's ordinary backend; if the file cannot be written, its first write fails with one
    line naming the file and what to fix.

    Raises:
        CommandError: the SQLite file does not exist, or the app keeps its queue in memory.
    """
    conf = app.conf
    if app.runtime.is_in_memory:
        raise CommandError(
            f"nothing to look at: app {app.app_id!r} keeps its queue in the memory of the "
            "process that runs it (pynenc's Mem* components), which another process cannot "
            "see; use a SQLite file (or a tcp:// server) to inspect it from here"
        )
    if conf.broker_url:
        return app.backend
    # Same default as Runtime._make_backend: a typo in --db must not look like an empty queue.
    path = app.sqlite_db_path
    if not os.path.exists(path):
        raise CommandError(
            f"no database at {os.path.abspath(path)} (app {app.app_id!r}); pass --db PATH "
            "or --app TARGET, or set PYNENC__SQLITE_DB_PATH / PYNENC__BROKER_URL"
        )
    if write:
        return app.backend
    backend = SQLiteBackend(
        path,
        busy_timeout_seconds=conf.sqlite_busy_timeout_seconds,
        poll_min_seconds=conf.poll_min_seconds,
        poll_max_seconds=conf.poll_max_seconds,
        read_only=True,
    )
    app.runtime.backend = backend  # closed by app.close(), like the one it replaces
    return backend


# -- commands --------------------------------------------------------------------------------


def cmd_status(app: Pynenc, args: argparse.Namespace) -> int:
    """`status`: counts, the oldest waiting work, workers and recent throughput."""
    backend = open_backend(app)
    now = time.time()
    stats = backend.get_stats(app.app_id, now)
    apps_in_storage = backend.count_invocations_by_app()
    stale_after = STALE_HEARTBEATS * app.conf.heartbeat_interval_seconds
    counts = {status: stats.counts_by_status.get(status, 0) for status in STATUSES}
    counts.update(stats.counts_by_status)
    workers = [
        {
            **dataclasses.asdict(w),
            "last_heartbeat_age_seconds": round(now - w.last_heartbeat_at, 3),
            "stale": now - w.last_heartbeat_at > stale_after,
        }
        for w in stats.workers
    ]
    oldest = stats.oldest_waiting_since
    data = {
        "app_id": stats.app_id,
        "backend": repr(backend),
        "counts_by_status": counts,
        "total": sum(counts.values()),
        "counts_by_task": stats.counts_by_task,
        "oldest_waiting_since": oldest,
        "oldest_waiting_age_seconds": None if oldest is None else round(max(0.0, now - oldest), 3),
        "finished_last_minute": stats.finished_last_minute,
        "throughput_per_second": round(stats.finished_last_minute / 60.0, 3),
        "stale_after_seconds": stale_after,
        "workers": workers,
        "apps_in_storage": apps_in_storage,
    }
    status_rows: list[list[object]] = [[s, n] for s, n in counts.items()]
    task_rows: list[list[object]] = [
        [task, *(by.get(s, 0) for s in STATUSES), sum(by.values())]
        for task, by in sorted(stats.counts_by_task.items())
    ]
    worker_rows: list[list[object]] = [
        [w["worker_id"], w["hostname"], w["pid"], w["threads"], format_time(w["started_at"]),
         f"{format_age(w['last_heartbeat_age_seconds'])} ago", "STALE" if w["stale"] else "alive"]
        for w in workers
    ]
    waiting = (
        "none" if oldest is None else f"{format_age(now - oldest)} (since {format_time(oldest)})"
    )
    text = "\n\n".join([
        f"app {stats.app_id!r} on {backend!r}",
        format_table(["status", "count"], [*status_rows, ["total", data["total"]]]),
        format_table(["task", *STATUSES, "total"], task_rows) if task_rows
        else _no_invocations(stats.app_id, apps_in_storage),
        f"oldest waiting work: {waiting}\nfinished in the last minute: "
        f"{stats.finished_last_minute} ({data['throughput_per_second']}/s)",
        f"workers: {len(workers)} (stale = no heartbeat for more than {stale_after:g}s)"
        + ("\n" + format_table(["worker", "host", "pid", "threads", "started",
                                "last heartbeat", "state"], worker_rows) if workers else ""),
    ])
    _emit(args, data, text)
    return EXIT_OK


def _no_invocations(app_id: str, apps_in_storage: dict[str, int]) -> str:
    """What `status` says for an app with nothing stored: which apps the storage does hold
    (a file shared by several apps, or --app-id left out), and how to pick one."""
    if not apps_in_storage:
        return "no invocations (none of any app in this storage)"
    rows: list[list[object]] = [[name, count] for name, count in apps_in_storage.items()]
    example = shlex.quote(next(iter(apps_in_storage)))
    return (
        f"no invocations of app {app_id!r}; this storage holds invocations of these apps:\n"
        + format_table(["app id", "invocations"], rows)
        + f"\npass --app-id to look at one (e.g. --app-id {example}), or --app TARGET"
    )


def cmd_inspect(app: Pynenc, args: argparse.Namespace) -> int:
    """`inspect ID`: everything stored about one invocation; 1 if unknown."""
    backend = open_backend(app)
    record = backend.get_invocation(args.id)
    if record is None:
        return _not_found(args, args.id, backend)
    history = backend.get_history(args.id)
    outcome = next(iter(backend.get_outcomes([args.id])), None)
    unpickle = not args.no_unpickle
    arguments = describe_pickle(backend.get_args(args.id), unpickle=unpickle, as_call=True)
    result = None
    if outcome is not None and outcome.status is InvocationStatus.SUCCESS:
        result = describe_pickle(outcome.payload, unpickle=unpickle)
    data = {
        **_record_dict(record),
        "arguments": arguments,
        "result": result,
        "traceback": outcome.traceback if outcome is not None else None,
        "history": [
            {"status": h.status.value, "at": h.at, "worker_id": h.worker_id} for h in history
        ],
    }
    rows: list[tuple[str, object]] = [
        ("invocation", record.invocation_id),
        ("app", record.app_id),
        ("task", record.task_name),
        ("status", record.status.value),
        ("attempts", f"{record.attempts} (retries {record.retries}, "
                     f"lost workers {record.lost_attempts})"),
        ("owner", record.owner),
        ("lease until", format_time(record.lease_expires_at)),
        ("created", format_time(record.created_at)),
        ("run at", format_time(record.run_at)),
        ("started", format_time(record.started_at)),
        ("finished", format_time(record.finished_at)),
        ("arguments", _pickle_text(arguments)),
    ]
    if result is not None:
        rows.append(("result", _pickle_text(result)))
    rows.append(("error", record.error))
    parts = [
        "\n".join(f"{name + ':':<12} {'-' if value is None else value}" for name, value in rows),
        "history:\n" + format_table(
            ["status", "at", "worker"],
            [[h.status.value, format_time(h.at), h.worker_id] for h in history],
        ),
    ]
    if data["traceback"]:
        parts.append("traceback on the worker:\n" + str(data["traceback"]).rstrip())
    _emit(args, data, "\n\n".join(parts))
    return EXIT_OK


def cmd_list(app: Pynenc, args: argparse.Namespace) -> int:
    """`list`: the app's newest invocations, optionally filtered."""
    backend = open_backend(app)
    status = InvocationStatus(args.status) if args.status else None
    records = backend.list_invocations(
        app.app_id, status=status, task_name=args.task, limit=args.limit
    )
    rows: list[list[object]] = [
        [r.invocation_id, r.task_name, r.status.value, r.attempts, format_time(r.created_at),
         format_time(r.finished_at), shorten(r.error, ERROR_LIMIT) if r.error else None]
        for r in records
    ]
    text = (
        format_table(["id", "task", "status", "attempts", "created", "finished", "error"], rows)
        if rows else f"no invocations of app {app.app_id!r} match"
    )
    _emit(args, [_record_dict(r) for r in records], text)
    return EXIT_OK if records else EXIT_NOTHING_DONE


def cmd_requeue(app: Pynenc, args: argparse.Namespace) -> int:
    """`requeue`: FAILED back to REGISTERED; 1 if nothing was requeued, or some given ids
    were not."""
    chosen = sum([bool(args.ids), args.task is not None, args.all_failed])
    if chosen != 1:
        raise CommandError("give exactly one of: invocation ids, --task NAME, --all-failed")
    backend = open_backend(app, write=True)
    count = backend.requeue(
        app.app_id, invocation_ids=args.ids or None, task_name=args.task, now=time.time()
    )
    text = f"requeued {count} failed invocation(s) of app {app.app_id!r}"
    code = EXIT_OK if count else EXIT_NOTHING_DONE
    if args.ids and count < len(args.ids):
        text += f"; {len(args.ids) - count} of the given ids are unknown or not FAILED"
        code = EXIT_NOTHING_DONE
    _emit(args, {"app_id": app.app_id, "requeued": count}, text)
    return code


def cmd_cancel(app: Pynenc, args: argparse.Namespace) -> int:
    """`cancel ID`: cancel unless finished; 1 if finished or unknown."""
    backend = open_backend(app, write=True)
    if backend.cancel(args.id, time.time()):
        _emit(args, {"invocation_id": args.id, "cancelled": True, "status": "CANCELLED"},
              f"cancelled {args.id}")
        return EXIT_OK
    record = backend.get_invocation(args.id)
    if record is None:
        return _not_found(args, args.id, backend)
    _emit(args, {"invocation_id": args.id, "cancelled": False, "status": record.status.value},
          f"not cancelled: {args.id} had already finished ({record.status.value})")
    return EXIT_NOTHING_DONE


def cmd_purge(app: Pynenc, args: argparse.Namespace) -> int:
    """`purge --yes`: delete everything stored for the app (refused without --yes)."""
    if not args.yes:
        raise CommandError(
            f"purge deletes every invocation, result, history, worker and cron record of app "
            f"{app.app_id!r}; add --yes to confirm"
        )
    deleted = open_backend(app, write=True).purge(app.app_id)
    _emit(args, {"app_id": app.app_id, "deleted": deleted},
          f"deleted {deleted} invocation(s) of app {app.app_id!r}")
    return EXIT_OK


def cmd_config(app: Pynenc, args: argparse.Namespace) -> int:
    """`config`: every field, its value and its source (opens no database)."""
    fields = [
        {"name": name, "value": value, "source": source}
        for name, value, source in app.conf.describe()
    ]
    _emit(args, {"app_id": app.app_id, "fields": fields}, app.conf.format_table())
    return EXIT_OK


def _record_dict(record: InvocationRecord) -> dict[str, Any]:
    data = dataclasses.asdict(record)
    data["status"] = record.status.value
    return data


def _not_found(args: argparse.Namespace, invocation_id: str, backend: Backend) -> int:
    if args.json:
        print(json.dumps({"invocation_id": invocation_id, "error": "not found"}))
    print(f"{PROG} {args.command}: no invocation {invocation_id!r} in {backend!r}",
          file=sys.stderr)
    return EXIT_NOTHING_DONE


# -- the command line ------------------------------------------------------------------------

Command = Callable[[Pynenc, argparse.Namespace], int]

# Options accepted before or after the command; SUPPRESS keeps a value given before the
# command from being reset by the sub-parser, and main() fills in these defaults.
_COMMON_DEFAULTS: dict[str, Any] = {
    "app": None, "db": None, "app_id": None, "json": False, "log_level": "WARNING",
}


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--app", metavar="TARGET",
                        help="the app: module:attr, a module holding one Pynenc app, or file.py "
                        "(default: Pynenc() configured from PYNENC__* and pyproject.toml)")
    common.add_argument("--db", metavar="PATH",
                        help="SQLite file to use (sets sqlite_db_path; wins over broker_url)")
    common.add_argument("--app-id", metavar="ID", help="app id to look at (sets app_id)")
    common.add_argument("--json", action="store_true", help="print JSON instead of tables")
    common.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="level of log lines on stderr (default WARNING)")
    return common


def build_parser() -> argparse.ArgumentParser:
    """The admin command line (also used for --help)."""
    common = _common_options()
    parser = argparse.ArgumentParser(
        prog=PROG, parents=[common],
        description="Look into a pynenc_lite app's queue and operate on it. Exit codes: 0 "
        "done, 1 nothing found or nothing done, 2 bad usage, target or database.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Command, summary: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=summary, description=summary)
        p.set_defaults(handler=handler)
        return p

    add("status", cmd_status, "Counts by status and task, the oldest waiting work, workers "
        "and their last heartbeat, and invocations finished in the last minute.")
    p = add("inspect", cmd_inspect, "Everything stored about one invocation: arguments, "
            "result, attempts, times, status history, error and the worker's traceback. "
            "Exits 1 if there is no such invocation.")
    p.add_argument("id", help="the invocation id")
    p.add_argument("--no-unpickle", action="store_true",
                   help="show argument and result sizes only (loading a pickle runs code)")
    p = add("list", cmd_list, "The app's newest invocations.")
    p.add_argument("--status", type=str.upper, choices=STATUSES, help="only this status")
    p.add_argument("--task", metavar="NAME", help="only this task (module.function)")
    p.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    p = add("requeue", cmd_requeue, "Put FAILED invocations back to REGISTERED so workers "
            "run them again (their history is kept). Exits 1 if some given ids were not "
            "requeued.")
    p.add_argument("ids", nargs="*", metavar="ID", help="invocation ids to requeue")
    p.add_argument("--task", metavar="NAME", help="every failed invocation of this task")
    p.add_argument("--all-failed", action="store_true", help="every failed invocation")
    p = add("cancel", cmd_cancel, "Cancel an invocation that has not finished. Exits 1 if it "
            "had already finished or does not exist.")
    p.add_argument("id", help="the invocation id")
    p = add("purge", cmd_purge, "Delete everything stored for the app. Refuses (exit 2) "
            "without --yes.")
    p.add_argument("--yes", action="store_true", help="confirm the deletion")
    add("config", cmd_config, "Every configuration field, its value and where it came from.")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the admin command line; returns the exit code."""
    args = build_parser().parse_args(argv)  # exits 2 on a usage error, 0 after --help
    for name, default in _COMMON_DEFAULTS.items():
        if not hasattr(args, name):
            setattr(args, name, default)
    if args.command == "list" and args.limit < 1:
        print(f"{PROG} list: error: --limit must be >= 1", file=sys.stderr)
        return EXIT_USAGE
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    app: Optional[Pynenc] = None
    try:
        app = load_target(args)
        handler: Command = args.handler
        return handler(app, args)
    except (PynencError, CommandError) as exc:
        logger.debug("%s failed", args.command, exc_info=True)
        print(f"{PROG} {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `... | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit flush too
        return EXIT_OK
    finally:
        if app is not None:
            app.close()

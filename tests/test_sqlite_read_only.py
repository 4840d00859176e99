"""A SQLite file this process may read but not write (issue 17.4).

Tests run as root here, and permission bits do not stop root, so the read-only cases are made
for real in two ways:

- an immutable file (`chattr +i`, which stops root too; skipped where the filesystem or the
  container does not allow it), read in this process;
- a file of root's, mode 0644, in a folder only root may write, read by a subprocess that
  imports everything it needs and then drops to the `nobody` user with `os.setuid` (skipped
  where there is no such user). `nobody` cannot create the -wal and -shm files either, which
  is the hardest case: SQLite cannot even open a WAL file read-only then, unless it is told
  the file is immutable.

In both, the admin's read commands (status, inspect, list) work and its writes (cancel,
requeue, purge) fail with one line that names the file and what to fix.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path
from typing import Iterator

import pytest

from pynenc_lite import admin
from pynenc_lite.backend.base import NewInvocation
from pynenc_lite.backend.sqlite import SQLiteBackend, schema
from pynenc_lite.errors import BackendError

ROOT = Path(__file__).resolve().parent.parent
APP = "ro_app"
TIMEOUT_SECONDS = 60.0


def make_database(path: Path) -> None:
    """A database with two invocations of APP, closed again (no -wal or -shm left)."""
    backend = SQLiteBackend(str(path))
    backend.submit(
        [NewInvocation(i, APP, "tests.ro.task", b"\x80\x04N.", 1.0, 1.0) for i in ("i1", "i2")]
    )
    backend.close()
    os.chmod(path, 0o644)


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """`chattr +i path` for the duration (skips the test where it is not possible)."""
    if shutil.which("chattr") is None:
        pytest.skip("no chattr here")
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is not possible here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_an_immutable_file_is_read_through_the_admin_and_writes_fail_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "ro.sqlite3"
    make_database(db)
    with immutable(db):
        with pytest.raises(OSError):
            open(db, "r+b")  # noqa: SIM115 - proves root cannot write it
        common = ["--db", str(db), "--app-id", APP]
        assert admin.main(["status", *common]) == 0
        assert "tests.ro.task" in capsys.readouterr().out
        assert admin.main(["inspect", "i1", *common]) == 0
        assert "tests.ro.task" in capsys.readouterr().out
        assert admin.main(["list", *common]) == 0
        assert "i2" in capsys.readouterr().out
        assert admin.main(["cancel", "i1", *common]) == admin.EXIT_USAGE
        err = capsys.readouterr().err
        assert err.count("\n") == 1, err
        assert str(db) in err and "read-only" in err and "chattr -i" in err, err
    backend = SQLiteBackend(str(db))
    try:
        record = backend.get_invocation("i1")
        assert record is not None and record.status.value == "REGISTERED"  # not cancelled
    finally:
        backend.close()


def test_a_read_only_backend_refuses_writes_with_a_clear_error(tmp_path: Path) -> None:
    db = tmp_path / "ro.sqlite3"
    make_database(db)
    backend = SQLiteBackend(str(db), read_only=True)
    try:
        assert [r.invocation_id for r in backend.list_invocations(APP)] == ["i2", "i1"]
        with pytest.raises(BackendError, match="opened read-only"):
            backend.cancel("i1", 2.0)
    finally:
        backend.close()


def test_a_read_only_open_checks_the_schema_version_and_creates_nothing(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite3"
    conn = sqlite3.connect(newer)
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute("INSERT INTO meta VALUES ('schema_version', '99')")
    conn.commit()
    conn.close()
    backend = SQLiteBackend(str(newer), read_only=True)
    with pytest.raises(BackendError, match="schema version 99"):
        backend.get_invocation("x")
    backend.close()
    empty = tmp_path / "empty.sqlite3"
    sqlite3.connect(empty).close()  # a file, but not one of ours
    backend = SQLiteBackend(str(empty), read_only=True)
    with pytest.raises(BackendError, match="no pynenc_lite tables"):
        backend.get_invocation("x")
    backend.close()
    with contextlib.closing(sqlite3.connect(empty)) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master").fetchall()
    assert tables == []  # the read-only open created nothing
    assert schema.SCHEMA_VERSION != "99"


def _nobody_uid() -> int:
    try:
        import pwd

        return pwd.getpwnam("nobody").pw_uid
    except (ImportError, KeyError):
        pytest.skip("no 'nobody' user here")


# Imports everything first (and builds the parser once: argparse imports gettext's `locale`
# lazily): after setuid, nobody may not read this interpreter's own files.
_AS_NOBODY = textwrap.dedent(
    """
    import os, sys, locale
    sys.path.insert(0, {root!r})
    from pynenc_lite import admin
    import pynenc_lite.backend.sqlite, pynenc_lite.backend.sqlite.backend
    admin.build_parser().format_help()
    os.setgid({uid}); os.setuid({uid})
    assert os.getuid() == {uid}
    with open({db!r}, "rb") as readable:
        readable.read(16)
    try:
        open({db!r}, "r+b")
    except PermissionError:
        pass
    else:
        raise SystemExit("nobody may write the file: the test proves nothing")
    sys.exit(admin.main(sys.argv[1:]))
    """
)


def as_nobody(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    uid = _nobody_uid()
    script = _AS_NOBODY.format(root=str(ROOT), uid=uid, db=db)
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PYNENC__")}
    return subprocess.run(
        [sys.executable, "-c", script, *args, "--db", db, "--app-id", APP],
        cwd="/",
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
    )


@pytest.fixture
def shared_folder() -> Iterator[Path]:
    """A folder `nobody` may enter but not write (pytest's tmp_path is root-only, 0700)."""
    if os.getuid() != 0:
        pytest.skip("needs root to drop to another user")
    folder = Path(tempfile.mkdtemp(prefix="pynenc-ro-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder)


def test_another_users_file_is_read_and_writes_fail_clearly(shared_folder: Path) -> None:
    db = shared_folder / "theirs.sqlite3"
    make_database(db)
    status = as_nobody(str(db), "status")
    assert status.returncode == 0, status.stderr
    assert "tests.ro.task" in status.stdout
    inspect = as_nobody(str(db), "inspect", "i1", "--no-unpickle")
    assert inspect.returncode == 0, inspect.stderr
    for write in (["cancel", "i1"], ["requeue", "--all-failed"], ["purge", "--yes"]):
        done = as_nobody(str(db), *write)
        assert done.returncode == admin.EXIT_USAGE, (write, done.stdout, done.stderr)
        assert done.stderr.count("\n") == 1, done.stderr
        assert str(db) in done.stderr and "read-only" in done.stderr, done.stderr
    assert sorted(os.listdir(shared_folder)) == ["theirs.sqlite3"]

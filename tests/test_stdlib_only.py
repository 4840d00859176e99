"""pynenc_lite uses only the Python standard library at run time.

Two guards: every import statement under pynenc_lite/ names a standard-library module (or
the package itself), and importing every module of the package works in an interpreter
started with `-I -S` (isolated, no site-packages), where no third-party package exists.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = REPO_ROOT / "pynenc_lite"
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _stdlib_module_names() -> frozenset[str]:
    if sys.version_info >= (3, 10):
        return frozenset(sys.stdlib_module_names)
    # Python 3.9 has no list: take what the standard library folder holds, plus built-ins.
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    names = set(sys.builtin_module_names)
    for entry in stdlib.iterdir():
        if entry.name == "site-packages":
            continue
        if entry.suffix == ".py":
            names.add(entry.stem)
        elif entry.is_dir() and (entry / "__init__.py").exists():
            names.add(entry.name)
    dynload = stdlib / "lib-dynload"
    if dynload.is_dir():
        names.update(entry.name.split(".")[0] for entry in dynload.iterdir())
    return frozenset(names)


# tomllib joined the standard library in 3.11; older versions may import it behind a
# version check (test_tomllib_is_only_imported_where_python_has_it).
STDLIB = _stdlib_module_names() | {"tomllib"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = [module_name(p) for p in SOURCES if p.name != "__main__.py"]


def imported_top_level_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_the_package_has_sources() -> None:
    assert PACKAGE / "__init__.py" in SOURCES
    assert len(SOURCES) > 5


def test_the_stdlib_list_is_sane() -> None:
    assert {"sqlite3", "threading", "pickle", "asyncio", "concurrent", "json"} <= STDLIB
    assert "pytest" not in STDLIB and "pynenc_lite" not in STDLIB


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_import_is_standard_library(path: Path) -> None:
    outside = sorted(
        name
        for name in imported_top_level_modules(path)
        if name not in STDLIB and name not in ("pynenc_lite", "__future__")
    )
    assert outside == [], f"{path.relative_to(REPO_ROOT)} imports non-stdlib {outside}"


def test_tomllib_is_only_imported_where_python_has_it() -> None:
    # tomllib is standard from 3.11 only; on 3.9/3.10 it must sit behind a version check.
    for path in SOURCES:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:  # module level, unguarded
            if isinstance(node, ast.Import) and any(a.name == "tomllib" for a in node.names):
                pytest.fail(f"{path.relative_to(REPO_ROOT)} imports tomllib unconditionally")
            if isinstance(node, ast.ImportFrom) and node.module == "tomllib":
                pytest.fail(f"{path.relative_to(REPO_ROOT)} imports tomllib unconditionally")


def test_every_module_imports_without_site_packages() -> None:
    # -I: isolated (no PYTHON* variables, no current folder on sys.path, no user site);
    # -S: no `site`, so no site-packages at all. Only the repository root is added.
    script = f"""
import importlib, sys
sys.path.insert(0, {str(REPO_ROOT)!r})
for name in {MODULES!r}:
    importlib.import_module(name)
if hasattr(sys, "stdlib_module_names"):
    allowed = set(sys.stdlib_module_names) | {{"pynenc_lite", "__main__", "__mp_main__"}}
    outside = sorted(
        name for name in {{m.split(".")[0] for m in sys.modules}} - allowed
        if not name.startswith("_sysconfigdata")  # a private stdlib module, not listed
    )
    assert not outside, outside
print("imported", len({MODULES!r}))
"""
    completed = subprocess.run(
        [sys.executable, "-I", "-S", "-c", script],
        cwd=REPO_ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("PYNENC__")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == f"imported {len(MODULES)}"


def test_site_packages_are_really_absent_under_dash_s() -> None:
    # Guards the guard: with -I -S, pytest (installed in site-packages) is not importable.
    completed = subprocess.run(
        [sys.executable, "-I", "-S", "-c",
         "import importlib.util as u; print(u.find_spec('pytest'))"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    spec_of_pytest = importlib.util.find_spec("pytest")
    assert spec_of_pytest is not None  # here it is installed...
    assert completed.stdout.strip() == "None"  # ...but not visible there

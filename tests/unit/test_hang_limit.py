"""The suite's hang limit (tests/conftest.py): a trio test that never wakes fails alone.

Run on a small pytest session of its own, so the hanging tests are real tests under the
real hook and plugin order, with the limit set low.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

HANGING = """
import trio

async def test_sleeps_forever():
    await trio.sleep_forever()

async def test_waits_forever_beside_a_nursery(nursery):
    nursery.start_soon(trio.sleep_forever)
    await trio.Event().wait()

async def test_finishes():
    await trio.sleep(0)

async def test_sleeps_long_on_a_virtual_clock(autojump_clock):
    await trio.sleep(3600)
"""


def test_a_hanging_trio_test_fails_with_the_limit_and_the_rest_run(tmp_path: Path) -> None:
    (tmp_path / "test_hanging.py").write_text(HANGING)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-c",
            str(ROOT / "pyproject.toml"),
            "--rootdir",
            str(ROOT),
            "-p",
            "tests.conftest",
            str(tmp_path / "test_hanging.py"),
        ],
        cwd=ROOT,
        env={**os.environ, "TEST_HANG_LIMIT_S": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "2 failed, 2 passed" in out, out
    for name in ("test_sleeps_forever", "test_waits_forever_beside_a_nursery"):
        assert f"::{name} - tests.conftest.TestHung" in out, out
    assert "still running after 1 s" in out, out

"""NICE: a broadcast-only instance can yield the CPU to the pipeline on a shared host.

The niceness is the process's own (``os.nice`` at start), so it holds for every thread
of the daemon and shows in ``/proc`` as operators would check it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.process import Processor, processor_env

pytestmark = pytest.mark.slow


def niceness_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # field 19: nice


def test_nice_is_added_to_the_niceness_of_the_running_daemon(
    fresh_database_url: str, redis_url: str, stream_key: str, tmp_path: Path
) -> None:
    expected = min(19, os.nice(0) + 5)
    env = processor_env(
        redis_url, fresh_database_url, stream_key, tmp_path, NICE="5", PIPELINE_ENABLED="false"
    )
    proc = Processor(env)
    try:
        assert proc.wait_log("starting")["nice"] == expected
        proc.wait_ready()
        assert niceness_of(proc.pid) == expected
    finally:
        proc.close()

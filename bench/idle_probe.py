"""What every task waits on while the processor is idle: a Trio ``Instrument``.

A sampling profile says how much of a drain is idle (py-spy sees the thread in epoll),
not why: while the loop waits, every task is parked somewhere. This probe finds out.
Each time the loop goes to sleep with nothing to run (``before_io_wait`` with a
timeout), it notes each task's innermost processor frames; when the loop wakes it
charges the time slept to each of them. A frame with the whole idle time against it
was waited in on every idle stretch: the consumer in XREADGROUP and a writer waiting
for a batch is a pipeline starved by its reads (bench/README.md, "Reads queued ahead").

Run inside a processor through ``bench.profile``'s prelude (the report is written when
``trio.run`` returns, i.e. at shutdown)::

    python -m bench.profile --prelude "import bench.idle_probe as p; p.install('/tmp/idle.txt')"

Only idle time within ``window_s`` of a full read (a backlog being drained) counts, so
the wait before the drain and after it do not drown it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import trio

from processor.core import read_pacing

_OWN = "/processor/"


def waits(task: trio.lowlevel.Task, own: str = _OWN, depth: int = 3) -> str | None:
    """A task's innermost ``depth`` frames from files under ``own`` (the processor's),
    outermost first (None: none)."""
    frames = []
    awaitable: Any = task.coro
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is not None and own in frame.f_code.co_filename:
            where = frame.f_code.co_filename.split(own)[-1]
            frames.append(f"{where}:{frame.f_code.co_name}:{frame.f_lineno}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return " > ".join(frames[-depth:]) if frames else None


def _tasks(task: trio.lowlevel.Task) -> list[trio.lowlevel.Task]:
    found = [task]
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            found.extend(_tasks(child))
    return found


class IdleProbe(trio.abc.Instrument):
    """Idle seconds per waiting frame, and in all (``idle_s``)."""

    def __init__(self, window_s: float = 0.1, always: bool = False, own: str = _OWN) -> None:
        self.window_s = window_s
        self.own = own
        self.always = always  # count every idle stretch (tests), not only in a drain
        self.last_full_read = -float("inf")
        self.idle_s = 0.0
        self.stretches = 0
        self.by_frame: dict[str, float] = {}
        self._since: float | None = None
        self._waiting: list[str] = []

    def before_io_wait(self, timeout: float) -> None:
        draining = time.perf_counter() - self.last_full_read < self.window_s
        if timeout <= 0 or not (self.always or draining):
            self._since = None
            return
        root = trio.lowlevel.current_root_task()
        tasks = _tasks(root) if root is not None else []
        self._waiting = [w for t in tasks if (w := waits(t, self.own)) is not None]
        self._since = time.perf_counter()

    def after_io_wait(self, timeout: float) -> None:
        if self._since is None:
            return
        slept = time.perf_counter() - self._since
        self._since = None
        self.idle_s += slept
        self.stretches += 1
        for where in self._waiting:
            self.by_frame[where] = self.by_frame.get(where, 0.0) + slept

    def report(self, top: int = 30) -> str:
        lines = [f"idle {self.idle_s:.3f} s in {self.stretches} stretches; seconds per frame:"]
        ranked = sorted(self.by_frame.items(), key=lambda item: -item[1])[:top]
        lines += [f"{s:8.3f}  {where}" for where, s in ranked]
        return "\n".join(lines) + "\n"


def install(path: str) -> None:
    """Add an ``IdleProbe`` to this interpreter's next ``trio.run`` (the processor's),
    with its report written to ``path`` when that returns."""
    probe = IdleProbe()
    read = read_pacing.ReadPacer.read

    def noting_full_reads(self: read_pacing.ReadPacer, got: int, asked: int) -> None:
        if got >= asked:
            probe.last_full_read = time.perf_counter()
        read(self, got, asked)

    read_pacing.ReadPacer.read = noting_full_reads  # type: ignore[method-assign]
    run = trio.run

    def run_probed(*args: Any, **kwargs: Any) -> Any:
        kwargs["instruments"] = [*kwargs.get("instruments", ()), probe]
        try:
            return run(*args, **kwargs)
        finally:
            Path(path).write_text(probe.report())

    trio.run = run_probed  # type: ignore[assignment]

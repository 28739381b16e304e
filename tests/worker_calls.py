"""Functions a test hands to regsweep.worker.TrialWorker: the child imports them by name."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from regsweep import faults


def stop_the_sweep_while_recording() -> str:
    """As a trial's end in the child: stops held (its run has ended), then SIGTERM reaches the
    sweep, which passes it on; the call records its result anyway and returns it."""
    faults.hold_stops()
    os.kill(os.getppid(), signal.SIGTERM)
    deadline = time.monotonic() + 60
    while faults.held_stop() is None and time.monotonic() < deadline:  # until the sweep's stop arrives here
        time.sleep(0.01)
    return "recorded" if faults.held_stop() is not None else "the stop never reached the child"


def use_memory_in(cgroup: str, limit_bytes: int) -> str:
    """Joins a memory cgroup limited to `limit_bytes`, then fills twice that: the kernel's
    out-of-memory killer ends this process, as it would a trial too big for its machine."""
    for name in ("memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.max", "memory.swap.max"):
        limit = Path(cgroup, name)
        if limit.exists():
            limit.write_text("0" if name == "memory.swap.max" else str(limit_bytes))
    Path(cgroup, "cgroup.procs").write_text(str(os.getpid()))
    filled = b"\x01" * (2 * limit_bytes)  # written, not only reserved: the pages count
    return f"survived with {len(filled)} bytes"


def die_by_sigkill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)

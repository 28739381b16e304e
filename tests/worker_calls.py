"""Functions a test hands to regsweep.worker.TrialWorker: the child imports them by name."""

from __future__ import annotations

import os
import signal
import time

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

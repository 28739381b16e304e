"""The child process that runs a sweep's trials, its start-up, and its exit with its sweep.

The sweep's own process never imports TensorFlow: it samples, records and reports, while a
child process trains. The child is handed a function and its arguments; it knows nothing of
sweeps. It is replaced every `calls_per_child` calls, because TensorFlow keeps several MiB per
trained model in a process even after keras.backend.clear_session() (measured in
benchmarks/README.md): a fresh child now and then keeps memory flat, and its start-up
(importing TensorFlow, a few seconds) is shared by the trials it runs.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from regsweep import faults, progress
from regsweep.config import quiet_libraries
from regsweep.faults import Terminated, forget_stops, raise_interrupted_once, raise_terminated

# How long a stopped call may take to record its stop in the child before the sweep goes on without it.
STOP_GRACE_SECONDS = 60


class ChildDied(Exception):
    """The child process died mid-call (killed, or out of memory)."""


def _death(oom_kills_before: int | None) -> ChildDied:
    """Why the child died, as far as this machine can tell: the kernel counts the processes its
    out-of-memory killer ends, and a kill during the call is taken for the child's."""
    after = faults.oom_kills()
    if oom_kills_before is not None and after is not None and after > oom_kills_before:
        return ChildDied(
            f"the trial's worker process was killed for memory (the kernel's OOM killer): {faults.MEMORY_FIX}"
        )
    return ChildDied(
        f"the trial's worker process died (killed by a signal, or out of memory); if it was memory: {faults.MEMORY_FIX}"
    )


def _forward(stop: KeyboardInterrupt) -> None:
    """Passes a stop request on to this process's children: SIGTERM (and `kill -INT <pid>`)
    reaches only the process it is sent to, not its process group as a terminal's Ctrl-C does."""
    for child in multiprocessing.active_children():
        try:
            os.kill(child.pid, signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)
        except ProcessLookupError:
            pass


def import_tensorflow_quietly() -> None:
    """TensorFlow prints C++ start-up notices (oneDNN, CUDA) straight to file descriptor 2,
    before any log level applies; they would bury regsweep's own messages. Python errors
    raised here still surface normally."""
    if os.environ.get("REGSWEEP_VERBOSE"):
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow

        tensorflow.config.list_physical_devices()  # the CUDA probe's notice, on machines without a GPU
        tensorflow.get_logger().setLevel("ERROR")  # retracing notices: a sweep builds a model per trial
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _start_child(log_level: int) -> None:
    """Start-up of a child: quiet TensorFlow, print what the sweep prints (`log_level`), leave
    Ctrl-C and SIGTERM to the call in progress (the sweep decides what happens between calls),
    and die with the sweep."""
    progress.configure(log_level)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    quiet_libraries()
    import_tensorflow_quietly()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _exit_with_parent(parent_pid: int) -> None:
    """A child whose sweep was killed (kill -9) must not finish its trial alone: the restarted
    sweep marks that trial FAIL, and nothing may record it COMPLETE behind its back."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(1)


def _warm_up() -> None:
    from regsweep import train  # noqa: F401 (imported for its side of loading, not a name) lazy: Keras, TensorFlow and the training code, ahead of the first call


def _interruptible(function, *args):
    """`function(*args)` with Ctrl-C and SIGTERM delivered, once each: the trial it runs records
    itself as stopped, and a second signal must not cut that short."""
    forget_stops()
    signal.signal(signal.SIGINT, raise_interrupted_once)
    signal.signal(signal.SIGTERM, raise_terminated)
    try:
        return function(*args)
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # idle between calls: the parent decides
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        forget_stops()  # a stop held while the call recorded its result: the sweep raises its own


class TrialWorker:
    """Runs calls in one child process at a time, replaced every `calls_per_child` calls.

    The old child has exited before the new one starts, so two never hold memory at once.
    """

    def __init__(self, calls_per_child: int):
        self.calls_per_child = calls_per_child
        self.pool: ProcessPoolExecutor | None = None
        self.calls = 0

    def _fresh_pool(self) -> ProcessPoolExecutor:
        self.close()
        self.calls = 0
        return ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_child,
            initargs=(progress.level(),),
        )

    def start(self) -> None:
        """Starts the first child now: it imports TensorFlow while the sweep sets up its MLflow run."""
        if self.pool is None:
            self.pool = self._fresh_pool()
            self.pool.submit(_warm_up)

    def call(self, function, *args):
        """`function(*args)` in the child; raises ChildDied if the child dies meanwhile.

        `function` must be importable by name (a module-level function), as must its arguments.
        It returns with stops held (regsweep.faults.hold_stops): the caller releases them once it
        has recorded the result.
        """
        if self.pool is None or self.calls >= self.calls_per_child:
            self.pool = self._fresh_pool()
        self.calls += 1
        oom_kills = faults.oom_kills()
        future = self.pool.submit(_interruptible, function, *args)
        # Stops are held for the whole call: one that comes while the child is recording a finished
        # trial must not make the sweep call that trial failed. It is passed on to the child here,
        # and raised here once the child has ended by it, or, when the child finished the call
        # anyway, by the caller's faults.release_stops once the result is recorded.
        faults.hold_stops()
        try:
            return self._wait(future, oom_kills)
        except BaseException:
            faults.release_stops()  # the stop, if one came: the call ended because of it
            raise

    def _wait(self, future, oom_kills: int | None):
        forwarded_at = None
        while True:
            try:
                return future.result(timeout=0.2)
            except TimeoutError:
                pass
            except BrokenProcessPool:
                self.close()
                raise _death(oom_kills) from None
            stop = faults.held_stop()
            if stop is not None and forwarded_at is None:
                _forward(stop)  # the child records its run as KILLED, then its call ends
                forwarded_at = time.monotonic()
            elif forwarded_at is not None and time.monotonic() - forwarded_at > STOP_GRACE_SECONDS:
                raise stop

    def close(self) -> None:
        """Stops the child and waits until it has exited."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
            self.pool = None

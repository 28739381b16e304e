"""Faults that are not the user's input: stop requests, a full or read-only disk, a damaged store.

Each becomes one sentence that says what happened, where, and what to do, so a sweep stopped by
a scheduler, a full disk or a broken file leaves nothing RUNNING, loses nothing recorded, and
the same command resumes. The sentences are raised as RegsweepError (exit code 2); a stop
request stays an exception of its own (exit code 130 or 143), raised where Ctrl-C would be.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import sqlite3
import tempfile
from pathlib import Path

from regsweep.config import RegsweepError

# --- stop requests: Ctrl-C and SIGTERM ------------------------------------------------------------


class Terminated(KeyboardInterrupt):
    """SIGTERM, as systemd, Docker, Kubernetes and batch schedulers send it, raised where Ctrl-C
    would be: every path that ends a run, a trial or a claim cleanly on Ctrl-C does so on
    SIGTERM too, and nothing is left RUNNING for the next command to find."""

    def __init__(self):
        super().__init__("terminated (SIGTERM)")


_REQUESTED: list[KeyboardInterrupt] = []  # the stop requests this process (or this worker call) received
_HELD: list[KeyboardInterrupt | None] = []  # while held, [the request that came meanwhile, or None]


def stop_on_signals() -> None:
    """Ctrl-C and SIGTERM both stop the main thread with an exception. Set explicitly: a script
    that starts `regsweep sweep &` without job control starts it with Ctrl-C ignored."""
    signal.signal(signal.SIGINT, raise_interrupted)
    signal.signal(signal.SIGTERM, raise_terminated)


def _stop(request: KeyboardInterrupt):
    _REQUESTED.append(request)
    if _HELD:  # a trial's results are being recorded: the stop waits until they are (see hold_stops)
        _HELD[0] = _HELD[0] or request
        return
    raise request


def hold_stops() -> None:
    """From here a stop request waits instead of raising, until `release_stops`.

    A trial whose run has finished is recorded on its MLflow run, on its Optuna trial and then
    told COMPLETE by Optuna; a stop in between would leave the two stores disagreeing (Optuna
    FAIL, MLflow FINISHED) and lose a trained trial, the baseline among them. The sweep also
    holds stops while Optuna sets up a trial (regsweep.sweep._optimize), and `regsweep ui` from a
    server's fork until it is listed to be stopped (regsweep.ui._launch). Holding is for such
    short stretches of bookkeeping only, never for training.
    """
    if not _HELD:
        _HELD.append(None)


def held_stop() -> KeyboardInterrupt | None:
    """The stop request that came while stops were held, if any."""
    return _HELD[0] if _HELD else None


def release_stops(raising: bool = True) -> None:
    """Ends the hold; raises the stop that came meanwhile (`raising`), now that the trial's
    outcome is recorded everywhere."""
    pending = held_stop()
    _HELD.clear()
    if pending is not None and raising:
        raise pending


def raise_terminated(signum, frame):
    """The SIGTERM handler. Once only: the clean-up it starts must not be cut short by a second."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _stop(Terminated())


def raise_interrupted(signum, frame):
    """The SIGINT handler: Python's own, but the request is remembered (see `requested_stop`)."""
    _stop(KeyboardInterrupt())


def raise_interrupted_once(signum, frame):
    """A SIGINT handler for a worker child, which hears both the terminal's Ctrl-C and the one its
    sweep passes on: the first stops the call, the second must not cut its clean-up short."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _stop(KeyboardInterrupt())


def requested_stop() -> KeyboardInterrupt | None:
    """The stop request received, if any. TensorFlow's clean-up can replace the KeyboardInterrupt
    raised inside it with an error of its own ("Nesting violated for default stack …"): a run or
    trial that fails that way was stopped, and must end as stopped, not as failed."""
    return _REQUESTED[-1] if _REQUESTED else None


def forget_stops() -> None:
    """A worker child starts and ends each call with no stop request: the sweep decides them."""
    _REQUESTED.clear()
    _HELD.clear()


def stop_reason(stop: KeyboardInterrupt) -> str:
    """Why a run or a trial ended KILLED or FAIL, for its reason."""
    return str(stop) if isinstance(stop, Terminated) else "stopped with Ctrl-C (SIGINT)"


def exit_code(stop: KeyboardInterrupt) -> int:
    """The shell's convention: 128 + the signal's number."""
    return 128 + (signal.SIGTERM if isinstance(stop, Terminated) else signal.SIGINT)


# --- full, read-only and damaged stores -------------------------------------------------------------

NO_SPACE = "no space left on device"
_FULL = (errno.ENOSPC, errno.EDQUOT)
_READ_ONLY = (errno.EROFS,)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM)
# What SQLite (through sqlite3, SQLAlchemy, Optuna and MLflow) says instead of an errno.
_SQLITE_FULL = "database or disk is full"
_SQLITE_READ_ONLY = ("attempt to write a readonly database", "readonly database")
_SQLITE_DAMAGED = (
    "file is not a database",
    "database disk image is malformed",
    "file is encrypted or is not a database",
)


def _chain(error: BaseException):
    """The error and every error it was raised from or during (Optuna's "Should not reach."
    assertion hides the full disk in its context)."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [current.__cause__, current.__context__]


SILENT = "silent"  # the tracking server stopped answering and MLflow gave up
# About how many times tracking.connect_timeout MLflow's client keeps trying a silent tracking
# server before it gives up, and the command with it (see regsweep.tracking.bound_patience).
SILENCE_FACTOR = 20


def _server_gone(error: BaseException) -> str | None:
    """The address of the server a `requests` call could not reach (MLflow's client is the only
    user of requests here), or None when `error` is not one."""
    import requests  # lazy: an MLflow dependency

    if not isinstance(error, (requests.ConnectionError, requests.Timeout, requests.exceptions.RetryError)):
        return None
    url = getattr(getattr(error, "request", None), "url", None) or ""
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}" if rest else ""


def kind(error: BaseException) -> str | None:
    """The kind of `problem`, or None."""
    found = problem(error)
    return found[0] if found else None


def problem(error: BaseException) -> tuple[str, str | None] | None:
    """("full" | "read-only" | "not writable" | "damaged", the path when the error names one), or
    (SILENT, the server's address), or None when the error is none of these."""
    for current in _chain(error):
        if (server := _server_gone(current)) is not None:
            return SILENT, server
    for current in _chain(error):
        if isinstance(current, OSError) and current.errno in _FULL + _READ_ONLY + _NOT_WRITABLE:
            kind = "full" if current.errno in _FULL else "read-only" if current.errno in _READ_ONLY else "not writable"
            return kind, current.filename and str(current.filename)
    for current in _chain(error):
        text = str(current).lower()
        if _SQLITE_FULL in text or "[errno 28]" in text or "no space left on device" in text:
            return "full", None
        if any(phrase in text for phrase in _SQLITE_READ_ONLY) or "read-only file system" in text:
            return "read-only", None
        if any(phrase in text for phrase in _SQLITE_DAMAGED):
            return "damaged", None
    return None


# --- memory ----------------------------------------------------------------------------------------

# What to lower when a trial runs out of memory, in the words of the config.
MEMORY_FIX = (
    "lower data.batch_size, model.image_size or cache.augmented_views, or sweep.trials_per_worker (a fresh "
    "worker frees what TensorFlow keeps), or close what else uses memory on this machine"
)
OUT_OF_MEMORY = f"out of memory: {MEMORY_FIX}"


def out_of_memory(error: BaseException) -> bool:
    """Python's MemoryError or TensorFlow's ResourceExhaustedError (named, not imported: the
    sweep's own process has no TensorFlow), anywhere in `error`."""
    return any(
        isinstance(current, MemoryError) or type(current).__name__ == "ResourceExhaustedError"
        for current in _chain(error)
    )


def oom_kills() -> int | None:
    """How many processes the kernel's out-of-memory killer has killed since boot (Linux), or None."""
    try:
        for line in Path("/proc/vmstat").read_text().splitlines():
            name, _, count = line.partition(" ")
            if name == "oom_kill":
                return int(count)
    except (OSError, ValueError):
        pass
    return None


def reason(error: BaseException) -> str | None:
    """A trial's or a run's short reason, when the error is a full or read-only disk."""
    found = problem(error)
    if found is None or found[0] == "damaged":
        return None
    kind, path = found
    return {
        "full": NO_SPACE,
        "read-only": "read-only file system",
        "not writable": "permission denied",
        SILENT: "the tracking server stopped answering",
    }[kind] + (f": {path}" if path else "")


def sentence(error: BaseException, store: str = "mlruns") -> str | None:
    """The one sentence for a full, read-only or damaged store anywhere in `error`, else None.

    `store` is paths.store as given, for when the error does not name the file.
    """
    found = problem(error)
    if found is None:
        return None
    kind, path = found
    if kind == SILENT:
        return (
            f"the tracking server{f' {path}' if path else ''} stopped answering, and MLflow gave up after about "
            f"{SILENCE_FACTOR} × tracking.connect_timeout: check that it runs and that this machine reaches it (or "
            "raise tracking.connect_timeout to wait longer); what was recorded is kept, and the same command resumes"
        )
    where = path or f"the store {store}/"
    if kind == "full":
        return (
            f"{NO_SPACE} for {where}: free some space (regsweep cache clear empties the feature cache), or give "
            "paths.store=<folder on a larger disk> (cache.dir=<folder> moves only the feature cache); what was "
            "recorded is kept, and the same command resumes"
        )
    if kind == "read-only":
        return (
            f"{where} is on a read-only file system: run regsweep in a writable folder, or give "
            "paths.store=<folder on a writable disk>"
        )
    if kind == "not writable":
        return (
            f"{where} is not writable (permission denied): run regsweep in a folder you may write to, or give "
            "paths.store=<writable folder>"
        )
    return (
        f"a database in {where} is damaged (not a sound SQLite file): move it aside or restore it from a backup, "
        "then re-run; regsweep never deletes or rewrites it"
    )


def check_writable(folder: Path) -> None:
    """Refuses a store that cannot be written, in one sentence, before anything starts: Hydra
    writes a run's folder there before any of regsweep's code runs."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".writable-"):
            pass
    except OSError as error:
        raise RegsweepError(
            sentence(error, str(folder))
            or f"{folder} cannot be written ({error.strerror}): give paths.store=<writable folder>"
        ) from None


RESERVE_FILE = ".reserve"  # in the store: room kept for recording how things ended when its disk fills
RESERVE_BYTES = 1 << 20


def keep_reserve(store: Path) -> None:
    """Keeps 1 MiB of the store's disk in a file, so that when the disk fills up the failure can
    still be recorded (the trial FAIL with its reason, its run FAILED) instead of being left
    RUNNING. Best effort: on a disk already full, there is simply no reserve."""
    path = Path(store) / RESERVE_FILE
    if path.is_file() and path.stat().st_size == RESERVE_BYTES:
        return
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as reserve:
            reserve.write(b"\0" * RESERVE_BYTES)
            reserve.flush()
            os.fsync(reserve.fileno())
        return
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)  # half a reserve is none


def free_reserve(store: Path, error: BaseException) -> None:
    """Gives the reserve back when `error` is a full disk: the records of how things ended go next."""
    found = problem(error)
    if found is not None and found[0] == "full":
        with contextlib.suppress(OSError):
            (Path(store) / RESERVE_FILE).unlink(missing_ok=True)


_SOUND: set[str] = set()


def check_database(path: Path) -> None:
    """Refuses a SQLite file that is not a sound database (truncated, overwritten), before
    Optuna or MLflow open it: their errors are tracebacks that blame a URL or a migration.

    Read-only, and once per file per process: the check reads the whole file (about 0.15 s for
    4 MB), and every use of the store passes here. Damage that happens later, mid-command, is
    said by `sentence` from the error it raises. The file is never changed.
    """
    key = str(path.resolve())
    if key in _SOUND or not path.is_file() or path.stat().st_size == 0:  # checked, not created yet, or empty
        return
    try:
        with contextlib.closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as database:
            verdict = database.execute("PRAGMA quick_check").fetchone()[0]
    except sqlite3.DatabaseError as error:
        if not any(phrase in str(error).lower() for phrase in _SQLITE_DAMAGED):
            return  # locked, or not openable here: the real open says so
        verdict = str(error)
    if verdict != "ok":
        raise RegsweepError(
            f"{path} is damaged ({verdict.splitlines()[0][:120]}): move it aside (mv {path} {path}.damaged) or restore "
            "it from a backup, then re-run (a new one is created where none is); regsweep never deletes or rewrites it"
        )
    _SOUND.add(key)

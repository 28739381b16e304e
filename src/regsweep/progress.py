"""What regsweep prints while it works: its log lines, the live line of a trial, and progress
of long steps (checking, fingerprinting and decoding images, filling the feature cache, the
re-evaluation's runs) on stderr: tqdm's bar on a terminal, a plain line now and then in a log.

Library modules log through `logging` (loggers under "regsweep"); the CLI calls `configure`,
which decides what is shown: INFO and up by default, only the answer, warnings and errors with
`--quiet` (the ANSWER level), DEBUG too with `--verbose`. A sweep's worker child is configured
with the sweep's level. Without `configure` (regsweep used as a library) nothing is printed but
what Python's logging prints for warnings.

A bar redrawn in place is noise in a CI job's or a worker's log, so when stderr is not a
terminal a line such as `checking images in …: 4,000 / 20,000 images, 00:12 elapsed, ~00:48
left` is printed at most every REGSWEEP_PROGRESS_SECONDS (default 10), and one more when the
step ends. A step that ends sooner prints nothing, and a bar shows only after a moment, so
short steps (a cached check, a small folder) stay silent.

A sweep's trials report too, from its worker child (which shares the sweep's stderr): a trial
at a new augment.strength fills its augmented views, minutes of work on a large folder. A sweep
process runs one trial at a time, and a bar is gone before the trial's epoch line is drawn.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tqdm import tqdm

LOGGER = "regsweep"
ANSWER = logging.INFO + 5  # the answer and where the report is: shown even with --quiet
EVERY_SECONDS = 10.0  # between lines in a log; REGSWEEP_PROGRESS_SECONDS overrides it
BAR_DELAY_SECONDS = 2.0  # before a bar appears on a terminal (shorter if the line interval is)


@contextmanager
def steps(
    what: str, total: int, unit: str = "images", stream=None, clock: Callable[[], float] = time.monotonic
) -> Iterator[Callable[..., None]]:
    """Yields `advance(n=1)`, to call as items of the `total` are done. `stream` (stderr) and
    `clock` are for tests."""
    stream = sys.stderr if stream is None else stream
    if not shown():  # --quiet
        yield lambda n=1: None
        return
    every = float(os.environ.get("REGSWEEP_PROGRESS_SECONDS", EVERY_SECONDS))
    if getattr(stream, "isatty", lambda: False)():
        # leave=False: the bar goes when the step ends, and a trial's own progress line takes its place
        with tqdm(
            total=total,
            desc=what,
            unit=unit,
            file=stream,
            delay=min(BAR_DELAY_SECONDS, every),
            mininterval=0.5,
            leave=False,
            dynamic_ncols=True,
        ) as bar:
            yield bar.update
        return
    lines = _Lines(what, total, unit, stream, every, clock)
    yield lines.advance
    lines.finish()


class _Lines:
    """A line when `every` seconds have passed since the step began or since the last line."""

    def __init__(self, what: str, total: int, unit: str, stream, every: float, clock: Callable[[], float]):
        self.what, self.total, self.unit, self.stream, self.every, self.clock = what, total, unit, stream, every, clock
        self.done, self.printed = 0, False
        self.start = self.last = clock()

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = self.clock()
        if now - self.last >= self.every and self.done < self.total:
            elapsed = now - self.start
            left = elapsed * (self.total - self.done) / max(self.done, 1)  # at the pace so far
            self._print(f"{tqdm.format_interval(elapsed)} elapsed, ~{tqdm.format_interval(left)} left")
            self.last = now

    def finish(self) -> None:
        """The closing line of a step that printed any: a log then shows it ended, and how long it took."""
        if self.printed:
            ended = "done in" if self.done >= self.total else "stopped after"
            self._print(f"{ended} {tqdm.format_interval(self.clock() - self.start)}")

    def _print(self, timing: str) -> None:
        print(f"{self.what}: {self.done:,} / {self.total:,} {self.unit}, {timing}", file=self.stream, flush=True)
        self.printed = True


def say(line: str) -> None:
    """A line of progress on stdout (not with --quiet)."""
    logging.getLogger(__name__).info(line)


def live(text: str) -> None:
    """A line a terminal redraws in place (a trial's epochs); not shown with --quiet."""
    if shown():
        print(f"\r{text}\033[K", end="", flush=True)


class Console(logging.Handler):
    """regsweep's log records as the CLI shows them: info lines and the answer on stdout, warnings
    and errors on stderr as `regsweep: warning: …` and `regsweep: error: …`. On a terminal a progress bar on stderr is
    lifted out of the way and redrawn below. The streams are looked up at each line, so a
    test's captured streams (and a redirected stdout) get them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            stream = sys.stdout
            if record.levelno >= logging.WARNING:
                kind = "error" if record.levelno >= logging.ERROR else "warning"
                stream, message = sys.stderr, f"regsweep: {kind}: {message}"
            with tqdm.external_write_mode(file=stream):
                print(message, file=stream, flush=True)
        except Exception:  # logging's own rule: a broken stream never raises into the caller
            self.handleError(record)


def configure(level: int = logging.INFO) -> None:
    """Shows regsweep's lines at `level` and up (logging.INFO, ANSWER for --quiet, logging.DEBUG for
    --verbose). Called by the CLI, and by each worker child with the sweep's level."""
    logger = logging.getLogger(LOGGER)
    for handler in [h for h in logger.handlers if isinstance(h, Console)]:
        logger.removeHandler(handler)
    logger.addHandler(Console())
    logger.setLevel(level)
    logger.propagate = False  # a host application's root handlers would print each line twice


def level() -> int:
    return logging.getLogger(LOGGER).getEffectiveLevel()


def shown(at: int = logging.INFO) -> bool:
    """Whether a line at this level is shown (False for progress with --quiet)."""
    return logging.getLogger(LOGGER).isEnabledFor(at)

"""Progress of long steps: a bar on a terminal, plain periodic lines in a log, silence for short steps."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from conftest import write_class_folders
from regsweep import progress


class Clock:
    """A clock the test moves by hand."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_step(total: int, seconds_per_item: float, stream, stop_after: int | None = None) -> None:
    clock = Clock()
    with progress.steps("checking images in /data/train", total, stream=stream, clock=clock) as advance:
        for done in range(1, total + 1):
            clock.now += seconds_per_item
            advance()
            if done == stop_after:
                break


def test_a_log_gets_a_plain_line_every_interval_and_one_when_the_step_ends(monkeypatch):
    monkeypatch.setenv("REGSWEEP_PROGRESS_SECONDS", "10")
    log = io.StringIO()
    run_step(16_000, 1 / 256, log)  # 62.5 s of work
    lines = log.getvalue().splitlines()
    assert lines[0] == "checking images in /data/train: 2,560 / 16,000 images, 00:10 elapsed, ~00:52 left"
    assert lines[1].startswith("checking images in /data/train: 5,120 / 16,000 images, 00:20 elapsed")
    assert len(lines) == 7  # at 10, 20 … 60 s, and the end
    assert lines[-1] == "checking images in /data/train: 16,000 / 16,000 images, done in 01:02"
    assert "\r" not in log.getvalue()  # nothing redrawn in place: a log stays readable


def test_a_short_step_prints_nothing_and_a_stopped_one_says_so(monkeypatch):
    monkeypatch.setenv("REGSWEEP_PROGRESS_SECONDS", "10")
    short = io.StringIO()
    run_step(300, 0.003, short)  # about a second
    assert short.getvalue() == ""
    stopped = io.StringIO()
    run_step(100, 1.0, stopped, stop_after=30)
    assert stopped.getvalue().splitlines()[-1] == "checking images in /data/train: 30 / 100 images, stopped after 00:30"


def test_a_terminal_gets_a_bar_that_is_gone_when_the_step_ends(monkeypatch):
    monkeypatch.setenv("REGSWEEP_PROGRESS_SECONDS", "0")  # no delay: the bar shows at once
    terminal = Terminal()
    run_step(50, 0.0, terminal)
    shown = terminal.getvalue()
    assert "checking images in /data/train:" in shown and "/50 [" in shown and "images/s" in shown
    assert " / 50 images, " not in shown  # a bar, not the log's lines
    assert shown.endswith("\r")  # cleared, so the next line starts on a clean row


def test_piped_output_of_a_real_command_shows_the_image_check_as_lines(tmp_path):
    """The CLI's stderr in a CI log: periodic lines for the image check, then the one-sentence error."""
    train, val = tmp_path / "train", tmp_path / "val"
    write_class_folders(train, 5, size=16, classes=("a", "b"))
    write_class_folders(val, 2, size=16, classes=("a", "b"))
    (train / "a" / "broken.png").write_bytes(b"not a png")
    command = [
        sys.executable,
        "-c",
        "from regsweep.cli import main; main()",
        "sweep",
        f"paths.store={tmp_path / 's'}",
        "data=folders",
        f"data.train_dir={train}",
        f"data.val_dir={val}",
    ]
    result = subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "REGSWEEP_PROGRESS_SECONDS": "0"},
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"checking images in {train}: 1 / 11 images, " in result.stderr
    assert f"checking images in {train}: 11 / 11 images, done in 00:00" in lines
    assert f"fingerprinting {train}: 11 / 11 images, done in 00:00" in lines
    assert lines[-1].startswith(f"regsweep: error: {train / 'a' / 'broken.png'} in data.train_dir=")
    assert "\r" not in result.stderr


@pytest.fixture(autouse=True)
def _default_interval(monkeypatch):
    monkeypatch.delenv("REGSWEEP_PROGRESS_SECONDS", raising=False)


def test_the_console_prints_info_on_stdout_warnings_and_errors_on_stderr_and_quiet_keeps_only_the_answer(
    capsys, monkeypatch
):
    """What `regsweep --quiet` keeps: the answer and what went wrong, no progress lines or steps."""
    import logging

    monkeypatch.setenv("REGSWEEP_PROGRESS_SECONDS", "0")  # a step would print a line per item
    log = logging.getLogger("regsweep.example")
    try:
        progress.configure(progress.ANSWER)  # --quiet
        log.info("trial 1/2 | COMPLETE")
        log.log(progress.ANSWER, "The answer")
        log.warning("a class has 1 training image")
        log.error("the store is damaged")
        with progress.steps("filling the feature cache", 2) as advance:
            advance()
            advance()
        out, err = capsys.readouterr()
        assert out == "The answer\n"
        assert err == "regsweep: warning: a class has 1 training image\nregsweep: error: the store is damaged\n"

        progress.configure(logging.INFO)  # the default
        log.info("trial 1/2 | COMPLETE")
        log.debug("run 1234: 3 epochs")
        with progress.steps("filling the feature cache", 2) as advance:
            advance()
            advance()
        out, err = capsys.readouterr()
        assert out == "trial 1/2 | COMPLETE\n" and "filling the feature cache: 2 / 2 images, done in" in err
    finally:
        progress.configure(logging.INFO)  # as conftest has it
        logging.getLogger(progress.LOGGER).propagate = True

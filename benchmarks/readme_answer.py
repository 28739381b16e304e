"""Regenerates the README's answer block from a real `make run` on a fresh clone of HEAD.

The block between the README's `answer` markers is the end of `make run` verbatim: its lines
from "The answer" on, under a sentence naming the commit, the date and the wall time they were
measured at, so the README never shows an answer that the code no longer gives.

    make readme-answer                       # the same as: python benchmarks/readme_answer.py
    python benchmarks/readme_answer.py --beside "beside a benchmark"   # on a busy machine, say so
    python benchmarks/readme_answer.py --from-output run.log   # re-cut a saved `make run` log

It refuses a checkout with uncommitted changes (the block would name a commit that did not
produce it). A fresh clone takes about 6 minutes on 2 cores: set-up, then the demo study.
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- answer: begin (make readme-answer writes this block) -->", "<!-- answer: end -->"


def answer_lines(output: str) -> list[str]:
    """The answer as `make run` prints it: "The answer" and its indented lines after it."""
    lines = output.splitlines()
    if "The answer" not in lines:
        raise SystemExit("readme_answer: the output holds no line 'The answer': did `make run` finish?")
    start = len(lines) - 1 - lines[::-1].index("The answer")  # the last study's answer
    block = [lines[start]]
    for line in lines[start + 1 :]:
        if not line.startswith("  "):
            break
        block.append(line)
    return block


def block(answer: list[str], commit: str, day: str, seconds: float, beside: str = "") -> str:
    """The README's block: where the answer comes from, then the answer in a code fence."""
    where = (
        f"The end of `make run`, verbatim (the demo study from a fresh clone at commit {commit}, {day}; "
        f"{seconds:.0f} s with set-up on {os.cpu_count()} CPU cores{', ' + beside if beside else ''}):"
    )
    return "\n".join(
        [
            BEGIN,
            textwrap.fill(where, width=100),
            "",
            "```",
            *answer,
            "```",
            END,
        ]
    )


def replace_block(readme: str, new_block: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if not pattern.search(readme):
        raise SystemExit(f"readme_answer: README.md has no block between {BEGIN!r} and {END!r}")
    return pattern.sub(lambda _: new_block, readme, count=1)


def fresh_make_run(commit: str) -> tuple[str, float]:
    """`make run` on a fresh clone of `commit`: its output (also shown as it runs) and wall seconds."""
    with tempfile.TemporaryDirectory(prefix="regsweep-readme-") as scratch:
        clone = Path(scratch) / "regsweep"
        subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
        subprocess.run(["git", "checkout", "--quiet", commit], cwd=clone, check=True)
        start = time.monotonic()
        process = subprocess.Popen(
            ["make", "run"], cwd=clone, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        output = []
        for line in process.stdout:
            sys.stdout.write(line)
            output.append(line)
        if process.wait() != 0:
            code = process.returncode
            raise SystemExit(f"readme_answer: make run failed (exit code {code}); the README is unchanged")
        return "".join(output), time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from-output", type=Path, help="a saved `make run` log to cut the answer from")
    parser.add_argument("--commit", help="with --from-output: the commit the log was made at")
    parser.add_argument("--seconds", type=float, help="with --from-output: its wall time")
    parser.add_argument("--beside", default="", help="what else ran meanwhile, said after the time (a busy machine)")
    options = parser.parse_args()
    if options.from_output:
        if not (options.commit and options.seconds):
            raise SystemExit("readme_answer: --from-output needs --commit and --seconds: the block names both")
        output, commit, seconds = options.from_output.read_text(), options.commit, options.seconds
    else:
        if subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True, text=True).stdout.strip():
            raise SystemExit("readme_answer: this checkout has uncommitted changes: commit them first")
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        output, seconds = fresh_make_run(commit)
    readme = REPO / "README.md"
    day = datetime.date.today().isoformat()
    new_block = block(answer_lines(output), commit, day, seconds, options.beside)
    readme.write_text(replace_block(readme.read_text(), new_block))
    print(f"README.md: the answer block now comes from commit {commit} ({seconds:.0f} s); review and commit it")


if __name__ == "__main__":
    main()

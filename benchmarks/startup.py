"""A process's start-up with and without the venv's compiled bytecode, side by side; prints figures.

Every `regsweep` command, every trial worker and every test subprocess imports the stack first.
Where the venv holds no .pyc files (uv installs without them unless told `--compile-bytecode`)
and PYTHONDONTWRITEBYTECODE is set, each of those processes compiles thousands of source files
again. This times the same imports both ways in alternation, from the same venv: "without" points
PYTHONPYCACHEPREFIX at an empty folder, so Python finds no bytecode and writes none.

    python benchmarks/startup.py              # 3 rounds, about 2 minutes on 2 cores
    python benchmarks/startup.py --rounds 5

Not a test: it asserts nothing and prints figures. See benchmarks/README.md for results.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

# What a trial worker imports before its first trial, and what the sweep's own process imports
# (it does not import TensorFlow).
IMPORTS = {
    "trial worker (tensorflow, keras, mlflow, optuna, hydra)": "import tensorflow, keras, mlflow, optuna, hydra",
    "sweep process (regsweep.sweep)": "import regsweep.sweep",
}


def timed_import(statement: str, empty_prefix: str | None) -> float:
    """Wall seconds of a fresh Python that runs `statement`."""
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    if empty_prefix is None:
        env.pop("PYTHONPYCACHEPREFIX", None)
    else:
        env["PYTHONPYCACHEPREFIX"] = empty_prefix
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", statement], check=True, env=env, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def bytecode_share() -> str:
    """How many of the venv's site-packages modules have their bytecode where Python looks for it."""
    sources = list(Path(sysconfig.get_paths()["purelib"]).glob("**/*.py"))
    compiled = sum(1 for path in sources if Path(importlib.util.cache_from_source(str(path))).is_file())
    return f"{compiled} of {len(sources)} modules compiled"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each import, both ways")
    args = parser.parse_args()
    if args.rounds < 1:
        sys.exit("--rounds must be at least 1")
    machine = platform.processor() or platform.machine()
    print(f"machine: {machine}, {os.cpu_count()} CPU cores, Python {platform.python_version()}")
    print(f"command: python benchmarks/{Path(__file__).name} {' '.join(sys.argv[1:])}")
    print(f"venv: {sys.prefix}: {bytecode_share()}", flush=True)
    with tempfile.TemporaryDirectory(prefix="regsweep-no-pyc-") as empty:
        for label, statement in IMPORTS.items():
            with_pyc, without_pyc = [], []
            for _ in range(args.rounds):
                with_pyc.append(timed_import(statement, None))
                without_pyc.append(timed_import(statement, empty))
            a, b = statistics.median(with_pyc), statistics.median(without_pyc)
            print(
                f"  {label}: with bytecode {a:.2f} s, from source {b:.2f} s (medians of {args.rounds}), "
                f"{b / a:.2f}x; {b - a:.1f} s saved a process",
                flush=True,
            )


if __name__ == "__main__":
    main()

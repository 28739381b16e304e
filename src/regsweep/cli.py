"""The `regsweep` command: `regsweep train [hydra overrides]`.

Hydra owns the argument parsing of each subcommand, so `--help`, `--cfg job` and `-m`
(multirun) work as Hydra users expect. Bad input the user can fix is reported as one sentence
with exit code 2; `--verbose` (or HYDRA_FULL_ERROR=1) shows the traceback as well.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter

import hydra
from omegaconf import DictConfig

from regsweep.config import CONF_DIR, RegsweepError

USAGE = """usage: regsweep <command> [hydra overrides]

commands:
  train    one transfer-learning run on the configured data, logged to MLflow
           (regsweep train --help lists every setting)
"""


def _import_tensorflow_quietly() -> None:
    """TensorFlow prints C++ start-up notices (oneDNN, CUDA) straight to file descriptor 2,
    before any log level applies; they would bury regsweep's own messages."""
    if os.environ.get("REGSWEEP_VERBOSE"):
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _train_task(cfg: DictConfig) -> None:
    _import_tensorflow_quietly()
    from regsweep import train

    try:
        train.run(cfg)
    except RegsweepError as error:
        if os.environ.get("REGSWEEP_VERBOSE"):
            raise
        print(f"regsweep: error: {error}", file=sys.stderr)
        sys.exit(2)


train_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_train_task)

COMMANDS = {"train": train_main}


def main() -> None:
    args = sys.argv[1:]
    if "--verbose" in args:
        args.remove("--verbose")
        os.environ["REGSWEEP_VERBOSE"] = "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"regsweep: error: unknown command '{args[0]}': use one of {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    sys.argv = [f"regsweep {args[0]}", *args[1:]]
    command()

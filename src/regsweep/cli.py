"""The `regsweep` command: `train`, `sweep` and `report`.

`train` is a Hydra app, so `--help`, `--cfg job` and `-m` (multirun) work as Hydra users
expect. `sweep` and `report` compose the same config tree with Hydra's compose API, because
Optuna, not Hydra, decides what runs next. Bad input the user can fix is reported as one
sentence with exit code 2; `--verbose` (or HYDRA_FULL_ERROR=1) shows the traceback as well.
"""

from __future__ import annotations

import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ start-up chatter
# MLflow prints "View run … at <tracking URL>" for every run that ends: noise in a sweep, and the
# URL can hold a password. regsweep prints the run id and the masked URI itself.
os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")

import hydra
from omegaconf import DictConfig

from regsweep.config import CONF_DIR, RegsweepError, redact, run_name

USAGE = """usage: regsweep <command> [hydra overrides]

commands:
  train    one transfer-learning run on the configured data, logged to MLflow
           (regsweep train --help lists every setting)
  sweep    an Optuna study over the knobs: every trial a nested MLflow run, then the report
           (regsweep sweep --help)
  report   rebuild the report of a stored study: regsweep report [study] [--reevaluate] [--open] [overrides]
  cache    the frozen-prefix feature cache: regsweep cache info | regsweep cache clear
  ui       the MLflow UI on the store, at the study's parent run (--optuna: optuna-dashboard too)

add --verbose to see the Python traceback behind an error.
"""

SWEEP_HELP = """usage: regsweep sweep [sweep=<name>] [sweep.<setting>=<value>] [<key>=<value>] [<key>=<search>]

Runs (or continues) the Optuna study defined by sweeps/<name>.yaml (default: regularization).
Every trial is `regsweep train` composed from conf/ plus the trial's values, logged as a child
of the study's MLflow parent run. The budget sweep.n_trials is the study's total: re-running
the same command tops it up, or only prints the report.

  sweep.n_trials=40 sweep.epsilon=0.05 sweep.objective=pareto   study settings
  model=mobilenet_v2 data=folders data.train_dir=... data.val_dir=...
  model.dropout=0.3                                              fixed for every trial
  model.dropout='interval(0.1, 0.6)' 'optim.lr=tag(log, interval(1e-5, 1e-3))'
  model.unfrozen_blocks='range(0, 4)' model.pooling='choice(avg, max)'
                                                                 searched (added to the space)
  --cfg job                                                      print the composed study config
"""


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


def start_worker() -> None:
    """Start-up of a sweep's trial worker process: quiet TensorFlow, and leave Ctrl-C to the
    trial in progress (the sweep process decides what happens between trials)."""
    import signal
    import threading

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    import_tensorflow_quietly()
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _exit_with_parent(parent_pid: int) -> None:
    """A worker whose sweep was killed (kill -9) must not finish its trial alone: the restarted
    sweep marks that trial FAIL, and nothing may record it COMPLETE behind its back."""
    while True:
        time.sleep(0.5)
        if os.getppid() != parent_pid:
            os._exit(1)


def _train_task(cfg: DictConfig) -> None:
    import_tensorflow_quietly()
    from regsweep import train

    try:
        result = train.run(cfg)
    except RegsweepError as error:
        if os.environ.get("REGSWEEP_VERBOSE"):
            raise
        print(f"regsweep: error: {error}", file=sys.stderr)
        sys.exit(2)
    metrics = result.metrics
    print(f"train_accuracy {metrics['train_accuracy']:.4f}  (inference mode, un-augmented training images)")
    print(f"val_accuracy   {metrics['val_accuracy']:.4f}")
    print(f"gap            {metrics['gap']:.4f}  (running train accuracy {metrics['running_train_accuracy']:.4f})")
    print(f"MLflow run {result.run_id} ({run_name(cfg)}) in {redact(cfg.tracking.uri)}")


def _check_train_overrides(args: list[str]) -> None:
    """Composes a single run's overrides before Hydra does: an unknown key or group option is
    then one sentence and exit code 2, not Hydra's exit code 1 with a paragraph. Multirun,
    help and Hydra's own settings are left to Hydra."""
    if any(a.startswith("-") for a in args):
        return
    from regsweep.config import compose

    compose([a for a in args if not a.lstrip("+~").startswith(("hydra.", "hydra/"))])


train_main = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_train_task)

def _sweep_command(args: list[str]) -> None:
    if "--help" in args or "-h" in args:
        print(SWEEP_HELP, end="")
        return
    if args[:2] == ["--cfg", "job"]:
        from omegaconf import OmegaConf

        from regsweep.config import compose_study

        print(OmegaConf.to_yaml(compose_study(args[2:])), end="")
        return
    from regsweep import sweep  # trials import TensorFlow in their worker process

    sweep.run(args)


def _report_command(args: list[str]) -> None:
    if "--help" in args or "-h" in args:
        print("usage: regsweep report [study] [--reevaluate] [--open] [sweep=<name>] [sweep.<setting>=<value>] [overrides]\n\n"
              "  --reevaluate  re-train the top settings and the baseline with fresh seeds and score them on the\n"
              "                test split (only the runs still missing); needs the study's data overrides\n"
              "  --open        open report.html in a browser, where one exists\n")
        return
    from regsweep import report

    report.run(args)


CACHE_HELP = """usage: regsweep cache info|clear [paths.store=<folder>] [cache.dir=<folder>]

  info    the cache folder, its size cap (cache.max_gb), and every entry, least recently used first
  clear   delete every entry; the next trials recompute what they need
"""


def _cache_command(args: list[str]) -> None:
    if not args or args[0] not in ("info", "clear") or "--help" in args or "-h" in args:
        print(CACHE_HELP, end="")
        if not args or args[0] not in ("info", "clear", "--help", "-h"):
            raise RegsweepError("regsweep cache needs a subcommand: info or clear")
        return
    from regsweep import cache
    from regsweep.config import compose

    store = cache.store_for(compose(args[1:]))
    if args[0] == "clear":
        rows = store.listing()
        store.clear()
        print(f"Removed {len(rows)} entries ({_gigabytes(sum(r['bytes'] for r in rows))}) from {store.entries}")
        return
    rows = store.listing()
    total = sum(row["bytes"] for row in rows)
    print(f"Feature cache {store.entries}: {len(rows)} entries, {_gigabytes(total)} of {_gigabytes(store.max_bytes)} (cache.max_gb)")
    for row in rows:
        key = row["meta"].get("key", {})
        shape = "x".join(str(d) for d in row["meta"].get("shape", [])) or "?"
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["last_used"]))
        print(f"  {row['path'].name}  {shape}  {_gigabytes(row['bytes'])}  last used {used}  data {key.get('data', '?')}")


def _gigabytes(n: int) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e7 else f"{n / 1e6:.1f} MB"


def _without_hydra(command):
    """Runs a command that composes configs itself, turning bad input into exit code 2."""

    def run(args: list[str]) -> None:
        try:
            command(args)
        except RegsweepError as error:
            if os.environ.get("REGSWEEP_VERBOSE"):
                raise
            print(f"regsweep: error: {error}", file=sys.stderr)
            sys.exit(2)
        except KeyboardInterrupt:
            print("\nregsweep: stopped. Re-run the same command to resume the study.", file=sys.stderr)
            sys.exit(130)
        except BrokenPipeError:  # `regsweep cache info | head`: the reader left, nothing is wrong
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)

    return run


def _ui_command(args: list[str]) -> None:
    from regsweep import ui

    ui.run(args)


COMMANDS = {
    "sweep": _without_hydra(_sweep_command),
    "report": _without_hydra(_report_command),
    "cache": _without_hydra(_cache_command),
    "ui": _without_hydra(_ui_command),
}


def main() -> None:
    args = sys.argv[1:]
    if "--verbose" in args:
        args.remove("--verbose")
        os.environ["REGSWEEP_VERBOSE"] = "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    if args[0] == "train":
        _without_hydra(_check_train_overrides)(args[1:])
        sys.argv = ["regsweep train", *args[1:]]
        train_main()
        return
    command = COMMANDS.get(args[0])
    if command is None:
        print(f"regsweep: error: unknown command '{args[0]}': use one of train, {', '.join(COMMANDS)}", file=sys.stderr)
        sys.exit(2)
    command(args[1:])

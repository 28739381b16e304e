"""The `regsweep` command: parse the command line, dispatch, and turn bad input into one sentence.

`train` is a Hydra app, so `--help`, `--cfg job` and `-m` (multirun) work as Hydra users
expect. `sweep`, `report`, `cache` and `ui` take their flags through argparse and pass
everything else on as Hydra overrides, composed from the same config tree. Bad input the user
can fix is one sentence with exit code 2; `--verbose` (or HYDRA_FULL_ERROR=1) adds the traceback.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import logging
import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from regsweep import cache, faults, progress
from regsweep.config import (
    CONF_DIR,
    RegsweepError,
    compose,
    compose_study,
    config_groups,
    override_key,
    quiet_libraries,
    redact,
    require_extra,
    search_own_conf_first,
    validate,
)
from regsweep.worker import import_tensorflow_quietly

USAGE = """usage: regsweep <command> [options] [hydra overrides]

commands:
  train    one transfer-learning run on the configured data, logged to MLflow
           (regsweep train --help lists every setting)
  sweep    an Optuna study over the knobs: every trial a nested MLflow run, then the
           re-evaluation and the report (regsweep sweep --help)
  report   rebuild the report of a stored study (regsweep report --help)
  cache    the frozen-prefix feature cache: regsweep cache info | regsweep cache clear
  ui       the MLflow UI on the store, and each study's pages in it (regsweep ui --help)
  export   any run's whole model as an MLflow Model (regsweep export --help)

  --version      print regsweep's version
  --quiet, -q    with any command: print only the answer (or where to look), warnings and errors
  --verbose      with any command: print more of what happens, and the Python traceback behind an error
"""

SWEEP_DESCRIPTION = """Runs (or continues) the Optuna study defined by sweeps/<name>.yaml (default: regularization).
Every trial is `regsweep train` composed from conf/ plus the trial's values, logged as a child
of the study's MLflow parent run. The budget sweep.n_trials is the study's total: re-running
the same command tops it up, or only prints the report.

  sweep.n_trials=40 sweep.epsilon=0.05 sweep.objective=pareto   study settings
  model=mobilenet_v2 data=folders data.train_dir=... data.val_dir=...
  model.dropout=0.3                                              fixed for every trial
  model.dropout='interval(0.1, 0.6)' 'optim.lr=tag(log, interval(1e-5, 1e-3))'
  model.unfrozen_blocks='range(0, 4)' model.pooling='choice(avg, max)'
                                                                 searched (added to the space)
"""


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is regsweep's one sentence with exit code 2."""

    def error(self, message: str):
        raise RegsweepError(f"{message}: see {self.prog} --help")


def _parser(command: str, usage: str, description: str = "") -> _Parser:
    return _Parser(
        prog=f"regsweep {command}",
        usage=usage,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def _port(value: str) -> int:
    if not value.isdigit() or not 0 < int(value) < 65536:
        raise argparse.ArgumentTypeError(f"{value} is not a port number: give one from 1 to 65535, such as 5000")
    return int(value)


def _study_and_overrides(words: list[str]) -> tuple[str | None, list[str]]:
    """`[study] [overrides]`: a first word without `=` names the study."""
    if words and "=" not in words[0]:
        return words[0], words[1:]
    return None, words


# --- the commands -----------------------------------------------------------------------------


def train_command(args: list[str]) -> None:
    """`regsweep train`: Hydra's own app.

    Hydra prints and saves the overrides (a failed job's, each multirun job's, multirun.yaml), so
    a URL's password reaches it as an interpolation of this process's environment instead. The
    overrides are composed and the tracking store is reached first (with -m, each sweep at its
    first value and each option of a swept config group), so an unknown key or option, or a store
    that does not answer, is one sentence and exit code 2, not Hydra's paragraph and exit 1 or
    MLflow's minutes of retries. Help, --cfg and Hydra's other flags are left to Hydra.
    """
    if any(override_key(a) == "hydra/launcher" and a.endswith("=joblib") for a in args):  # else Hydra's paragraph
        require_extra("hydra_plugins.hydra_joblib_launcher", "joblib", "hydra/launcher=joblib", "hydra-joblib-launcher")
    args = _passwords_from_environment(args)
    flags = [a for a in args if a.startswith("-")]
    if all(flag in ("-m", "--multirun") for flag in flags):
        from regsweep import tracking  # lazy: MLflow, which the run loads anyway

        overrides = [a for a in args if not a.startswith("-") and not override_key(a).startswith(("hydra.", "hydra/"))]
        first, *others = _sweep_runs(overrides) if flags else [overrides]
        for run in others:
            compose(run)
        cfg = compose(first)
        validate(cfg)
        faults.check_writable(Path(cfg.paths.store))
        tracking.check_reachable(cfg.tracking)
    sys.argv = ["regsweep train", *args]
    search_own_conf_first()
    failed = None
    try:
        _train_app()
    except _RunFailed as escaped:
        failed = escaped.args[0]
    if failed is not None:
        raise failed  # outside Hydra: main's one sentence, or the traceback


def _passwords_from_environment(args: list[str]) -> list[str]:
    """The arguments with each URL password replaced by ${oc.env:REGSWEEP_PASSWORD_<n>}, its
    value set in this process's environment (which multirun's jobs inherit)."""

    names: dict[str, str] = {}

    def hide(password: str) -> str:
        if "${" in password:  # an interpolation already: nothing in clear
            return password
        if password not in names:
            names[password] = f"REGSWEEP_PASSWORD_{len(names) + 1}"
            os.environ[names[password]] = password
        return f"${{oc.env:{names[password]}}}"

    return [redact(a, hide) for a in args]


def _sweep_runs(overrides: list[str]) -> list[list[str]]:
    """The runs of `regsweep train -m` composed before Hydra starts: every sweep (a=1,2, range(),
    choice(), interval()) at its first value, then each other option of a swept config group
    (model=vgg16,resnet50) in turn. Bad syntax is left to compose, which names it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException:
        return [overrides]
    first, options = [], {}
    for line, override in zip(overrides, parsed):
        if not override.is_sweep_override():
            first.append(line)
            continue
        key, group = override.get_key_element(), override.key_or_group in config_groups()
        try:
            values = (
                [str(override.value().start)]
                if override.is_interval_sweep()
                else list(override.sweep_string_iterator())
                if group
                else [next(override.sweep_string_iterator())]
            )
        except (HydraException, StopIteration):  # glob(): its options are Hydra's to list
            continue
        first.append(f"{key}={values[0]}")
        if group:
            options[len(first) - 1] = [f"{key}={value}" for value in values[1:]]
    return [first] + [[*first[:at], option, *first[at + 1 :]] for at, others in options.items() for option in others]


class _RunFailed(BaseException):
    """Carries a run's error (its one argument) past Hydra, which catches only Exception and would
    print the job's overrides and its own traceback with it."""


def _train_task(cfg: DictConfig) -> None:
    try:
        import_tensorflow_quietly()
        from regsweep import train  # lazy: TensorFlow, loaded quietly just above

        result = train.train_and_log(cfg)
    except Exception as error:
        raise _RunFailed(error) from None
    print(train.summary(result, cfg))


_train_app = hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")(_train_task)


def sweep_command(args: list[str]) -> None:
    parser = _parser(
        "sweep",
        "regsweep sweep [sweep=<name>] [sweep.<setting>=<value>] [<key>=<value>] [<key>=<search>]",
        SWEEP_DESCRIPTION,
    )
    parser.add_argument("--cfg", choices=["job"], help="print the composed study config and stop")
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    options = parser.parse_intermixed_args(args)
    if options.cfg:
        print(OmegaConf.to_yaml(compose_study(options.overrides)), end="")
        return
    from regsweep import sweep  # lazy: MLflow and Optuna load only for the command that needs them

    sweep.run_study(options.overrides)


def report_command(args: list[str]) -> None:
    parser = _parser(
        "report",
        "regsweep report [study] [--reevaluate] [--open] [sweep=<name>] [sweep.<setting>=<value>] [overrides]",
        "Rebuilds the report of a stored study from its Optuna storage and MLflow runs.",
    )
    parser.add_argument(
        "--reevaluate",
        action="store_true",
        help="re-train the top settings and the baseline with fresh seeds and score them on the test "
        "split, in rounds while the verdict can't tell (only the runs still missing)",
    )
    parser.add_argument("--open", action="store_true", help="open report.html in a browser, where one exists")
    parser.add_argument("words", nargs="*", help=argparse.SUPPRESS)
    options = parser.parse_intermixed_args(args)
    from regsweep import sweep  # lazy: MLflow, Optuna and matplotlib load only for the command that needs them

    sweep.report_study(
        *_study_and_overrides(options.words), reevaluate_first=options.reevaluate, open_html=options.open
    )


def cache_command(args: list[str]) -> None:
    parser = _parser(
        "cache",
        "regsweep cache {info,clear} [paths.store=<folder>] [cache.dir=<folder>]",
        "  info    the cache folder, its size cap (cache.max_gb), and every entry, least recently used first\n"
        "  clear   delete every entry; the next trials recompute what they need",
    )
    parser.add_argument("action", metavar="info|clear", choices=["info", "clear"], nargs="?", help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    options = parser.parse_intermixed_args(args)
    if options.action is None:
        raise RegsweepError("regsweep cache needs a subcommand: info or clear")
    store = cache.store_for(compose(options.overrides))
    print(cache.clear(store) if options.action == "clear" else cache.info(store))


def ui_command(args: list[str]) -> None:
    parser = _parser(
        "ui",
        "regsweep ui [study] [--host 127.0.0.1] [--port 5000] [--auth] [--optuna] [--optuna-port 8080] [overrides]",
        "Starts the MLflow UI on the project's store (tracking.uri, mlruns/ by default) and prints, for\n"
        "each study the store holds (or only [study]), its runs in the MLflow UI and, with --optuna,\n"
        "its page in optuna-dashboard. With a tracking server (tracking.uri=http://...) nothing is\n"
        "started: the pages on that server are printed.\n"
        "Stop with Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="where the MLflow UI listens (default: this machine only)")
    parser.add_argument("--port", type=_port, default=5000)
    parser.add_argument(
        "--auth",
        action="store_true",
        help="MLflow's login in front of the UI: user admin, password from $REGSWEEP_UI_PASSWORD",
    )
    parser.add_argument("--optuna", action="store_true", help="also start optuna-dashboard on sweep.storage")
    parser.add_argument("--optuna-port", type=_port, default=8080, help="its port (it listens on --host too)")
    parser.add_argument("words", nargs="*", help=argparse.SUPPRESS)
    options = parser.parse_intermixed_args(args)
    from regsweep import ui  # lazy: MLflow's server code (~4 s) loads only for this command

    name, overrides = _study_and_overrides(options.words)
    ui.serve(
        ui.Options(
            options.host,
            options.port,
            options.optuna,
            options.optuna_port,
            ([f"sweep.study={name}"] if name else []) + overrides,
            options.auth,
        )
    )


def export_command(args: list[str]) -> None:
    parser = _parser(
        "export",
        "regsweep export <run id> [--out DIR] [--weights FILE] [tracking.uri=...]",
        "Rebuilds the whole model of any trial or re-evaluation run from what it logged (its trained\n"
        "layers, and the backbone weights it names) and saves it as an MLflow Model: it loads with\n"
        "mlflow.pyfunc.load_model(DIR) or keras.saving.load_model(DIR/data/model.keras), without\n"
        "regsweep, and takes raw 0-255 RGB images.",
    )
    parser.add_argument("--out", help="a new folder for the MLflow Model (default: ./model-<run id>)")
    parser.add_argument("--weights", help="the backbone weights file, when it is not where the run found it")
    parser.add_argument("words", nargs="*", help=argparse.SUPPRESS)
    options = parser.parse_intermixed_args(args)
    run_ids = [word for word in options.words if "=" not in word]
    if len(run_ids) != 1:
        raise RegsweepError(
            "regsweep export needs one run id (a trial's or a re-evaluation's, from the MLflow UI "
            "or the report): regsweep export <run id> [--out DIR]"
        )
    cfg = compose([word for word in options.words if "=" in word])  # where the runs are: tracking.uri, paths.store
    local = Path(str(cfg.tracking.uri).removeprefix("sqlite:///"))
    if str(cfg.tracking.uri).startswith("sqlite:///") and not local.is_file():  # export reads; it creates no store
        raise RegsweepError(
            f"no MLflow store at {local}: run regsweep export in the folder that holds mlruns/, "
            "or give paths.store=<folder> or tracking.uri=<server>"
        )
    from regsweep import tracking  # lazy: MLflow, only for the commands that reach the store

    tracking.check_reachable(cfg.tracking)  # before TensorFlow's seconds of start-up
    import_tensorflow_quietly()
    from regsweep import export  # lazy: TensorFlow, only for the command that builds a model

    tracking.use_store(cfg.tracking)
    run_id = run_ids[0]
    out = export.export_run(run_id, Path(options.out or f"model-{run_id}"), options.weights)
    print(f'MLflow Model of run {run_id} in {out}: load it with mlflow.pyfunc.load_model("{out}")')


COMMANDS = {
    "train": train_command,
    "sweep": sweep_command,
    "report": report_command,
    "cache": cache_command,
    "ui": ui_command,
    "export": export_command,
}


# --- dispatch -----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    level = logging.INFO
    if "--verbose" in args:
        args.remove("--verbose")
        os.environ["REGSWEEP_VERBOSE"] = "1"
        os.environ["HYDRA_FULL_ERROR"] = "1"
        level = logging.DEBUG
    for flag in ("--quiet", "-q"):
        while flag in args:
            args.remove(flag)
            level = progress.ANSWER if level == logging.INFO else level  # --verbose wins
    progress.configure(level)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    if args[0] == "--version":
        print(f"regsweep {importlib.metadata.version('regsweep')}")
        return
    command = COMMANDS.get(args[0])
    quiet_libraries()
    faults.stop_on_signals()
    try:
        if command is None:
            raise RegsweepError(f"unknown command '{args[0]}': use one of {', '.join(COMMANDS)}")
        command(args[1:])
    except RegsweepError as error:
        _fail(error)
    except KeyboardInterrupt as stop:
        print(f"\nregsweep: {_stopped(args[0], stop)}", file=sys.stderr)
        sys.exit(faults.exit_code(stop))
    except BrokenPipeError:  # `regsweep cache info | head`: the reader left, nothing is wrong
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except Exception as error:  # a full, read-only or damaged store, or memory: one sentence too
        found = faults.sentence(error, _store_given(args)) or (
            faults.OUT_OF_MEMORY if faults.out_of_memory(error) else None
        )
        if found is None or os.environ.get("REGSWEEP_VERBOSE"):
            raise
        _fail(RegsweepError(found))


def _stopped(command: str, stop: KeyboardInterrupt) -> str:
    """One line: what the stop request stopped (the notes added on its way up), and what to do."""
    what = "; ".join(getattr(stop, "__notes__", [])) or "nothing was running"
    again = {
        "sweep": "re-run the same command to resume the study",
        "report": "re-run the same command to resume the re-evaluation",
        "train": "re-run the same command to train again",
    }.get(command, "re-run the same command")
    return f"{faults.stop_reason(stop)}: {what}; {again}."


def _store_given(args: list[str]) -> str:
    """paths.store as given on the command line, for a sentence about a store that names no file."""
    return next((a.split("=", 1)[1] for a in reversed(args) if a.startswith("paths.store=")), "mlruns")


def _fail(error: RegsweepError) -> None:
    if os.environ.get("REGSWEEP_VERBOSE"):
        raise error
    print(f"regsweep: error: {error}", file=sys.stderr)
    sys.exit(2)

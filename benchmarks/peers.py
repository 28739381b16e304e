"""regsweep against Keras Tuner: same task, same trial budget, same model, side by side in one run.

Per case, four searches over the same four knobs (read from sweeps/regularization.yaml, where
`range(a, b)` includes b), each with the same trial budget and the same two-phase training:

- **Keras Tuner** `BayesianOptimization` and `RandomSearch`, each in its own process, on a
  `keras_tuner.HyperModel` whose `build(hp)` is regsweep's own classifier builder and whose
  `fit(hp, model)` is regsweep's own two-phase fit (`fit.online` and `fit.two_phases` on the whole
  classifier with online augmentation, exactly as `cache=off` trains; phase 2 unfreezes the top
  blocks at lr × fine_tune_factor and keeps phase 1's weights unless it beats phase 1's best
  val_loss). Its objective is the trained model's val_accuracy (max); its pick is
  `tuner.get_best_hyperparameters(1)`. `executions_per_trial=1`, `seed=0`; the Bayesian tuner
  starts with as many random points as regsweep's TPE (`sweep.sampler.n_startup_trials`).
- **regsweep**, the default study (feature cache) and the same study with `cache=off`: real
  `regsweep sweep` processes (benchmarks/cache_speed.py's `run_sweep`, without the
  re-evaluation). Its pick is the trial the report's rule recommends (`results.recommend`).

Every tool's pick is then re-trained with the same fresh seeds (1, 2, …, as regsweep's own
re-evaluation numbers them) by `train.train_and_log`, by default with `cache=off`, and scored
once on the same untouched test split; that re-training is timed apart from the searches.
Figures: wall time (process start to end), trials/hour, best val_accuracy over the search, the
pick and its test accuracy (mean ± std over the seeds), and per case the ratios regsweep wall ÷
Keras Tuner wall and regsweep pick's test accuracy − Keras Tuner pick's.

Cases: `signs`, a few-shot split of ../shared/data/sign-digits (real photos, 5 classes; 20
training and 40 validation images per class, the rest for the test split), MobileNetV2 with the
real ImageNet weights of ../shared/weights at 128 px; `seed`, generated images (500 training,
1,000 validation and 1,000 test), VGG16 at 150 px with random-init weights. A `cache=off` study
or a Keras Tuner search of the seed case takes hours on 2 cores: with `--project` those rows are
projected instead, from measured epochs of each phase at every `model.unfrozen_blocks` level
and the epochs the cached study's trials actually trained, and labelled as projections. With
`--project-all` the cached study is projected too (on 2 cores, VGG16's unfrozen blocks make even
it a matter of hours): every row from the same measured epochs, online and on cached features,
with every trial at its whole epoch budget and the levels spread evenly: an upper bound.

    python benchmarks/peers.py                          # both cases, all measured: hours on 2 cores
    python benchmarks/peers.py --cases signs            # the real photos only
    python benchmarks/peers.py --project --keep         # the seed case's slow rows projected
    python benchmarks/peers.py --project --retrain cache  # and the picks re-trained on the cache: faster
    python benchmarks/peers.py --cases seed --project-all  # the seed case's rows all projected (~30 min)
    python benchmarks/peers.py --quick                  # smoke test, a few minutes: its figures mean nothing

Needs the bench extra (Keras Tuner): pip install -e '.[bench]'. Not a test: it asserts nothing
and prints a table for benchmarks/README.md ("Against Keras Tuner").
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path

import cache_speed
import search_settings
from regsweep.config import compose, compose_study, quiet_libraries

KT_BAYES, KT_RANDOM, REGSWEEP, REGSWEEP_OFF = (
    "KT BayesianOptimization",
    "KT RandomSearch",
    "regsweep",
    "regsweep cache=off",
)
TOOLS = (KT_BAYES, KT_RANDOM, REGSWEEP, REGSWEEP_OFF)
STUDY = "regularization"  # the default study's name, and its sweep file
KNOB = "model.unfrozen_blocks"
# The knobs of a projection's measured runs, apart from the level: the middle of the space.
MEASURED_KNOBS = {"model.dropout": 0.35, "augment.strength": 0.5, "optim.lr": 1e-3}
STARTED = time.perf_counter()


@dataclass
class Case:
    name: str
    label: str  # what the output says about the data and the model
    overrides: list[str]  # data and model settings, for every tool


@dataclass
class Row:
    """One tool on one case: what the search cost, what it picked, how the pick tests."""

    case: str
    tool: str
    wall: float
    trials: int
    best_val: float = math.nan
    pick: dict | None = None  # the knob values; None for a projected row (nothing was searched)
    pick_label: str = "—"
    projected: str = ""  # "" when measured, else how it was projected
    test: list[float] = field(default_factory=list)
    retrain_s: float = math.nan
    retrain_note: str = ""

    @property
    def per_hour(self) -> float:
        return self.trials * 3600 / self.wall if self.wall > 0 else math.nan


# --- the data ------------------------------------------------------------------------------------


def signs_case(work: Path, per_class: int, validation: int, test_cap: int | None, size: int) -> Case | None:
    """The few-shot split of the real photos; None (with the reason printed) when absent."""
    for path in (search_settings.SIGN_DIGITS, cache_speed.SHARED_WEIGHTS):
        if not path.exists():
            print(f"signs: skipped: {path} is absent (the team's shared data is not beside this checkout)")
            return None
    out = work / "signs-split"
    search_settings.make_split(per_class, out, validation=validation)
    if test_cap is not None:  # --quick: a small test split, so re-training scores quickly
        for class_dir in sorted((out / "test").iterdir()):
            for link in sorted(class_dir.iterdir())[test_cap:]:
                link.unlink()
        print(f"{out}: test split capped at {test_cap} per class")
    return Case(
        "signs",
        f"sign-digits photos, {per_class} train + {validation} validation per class; "
        f"MobileNetV2 ImageNet weights, {size} px",
        [
            "model=mobilenet_v2",
            f"model.weights={cache_speed.SHARED_WEIGHTS}",
            f"model.image_size={size}",
            "data=folders",
            f"data.train_dir={out}/train",
            f"data.val_dir={out}/validation",
            f"data.test_dir={out}/test",
            "data.flip=none",
        ],
    )


def seed_case(work: Path, train: int, val: int, test: int, size: int) -> Case:
    """Generated shapes (cache_speed's), with a test split drawn by another seed: VGG16, random init."""
    root = work / "seed-images"
    cache_speed.generated_images(root, train, val, size=size, seed=0)
    scratch = work / "seed-test-draw"
    cache_speed.generated_images(scratch, test, 0, size=size, seed=1)
    (scratch / "train").rename(root / "test")
    shutil.rmtree(scratch)
    n = len(cache_speed.SHAPES)
    return Case(
        "seed",
        f"generated shapes, {n * train} train / {n * val} validation / {n * test} test; "
        f"VGG16 random-init (model.weights=null), {size} px",
        [
            "model=vgg16",
            "model.weights=null",
            f"model.image_size={size}",
            "data=folders",
            f"data.train_dir={root}/train",
            f"data.val_dir={root}/val",
            f"data.test_dir={root}/test",
        ],
    )


# --- the study's definition, shared by every tool --------------------------------------------------


def study_definition(case: Case) -> tuple[dict[str, str], list[str], int]:
    """The search space expressions, the study's fixed settings (its epoch budget) as overrides,
    and TPE's random start-up trials: what regsweep's default study runs with."""
    from regsweep import space

    settings = compose_study(case.overrides).sweep
    params = {key: str(value) for key, value in settings.params.items()}
    return params, space.as_overrides(dict(settings.fixed or {})), int(settings.sampler.n_startup_trials)


def merge(*override_lists: list[str]) -> list[str]:
    """regsweep's own merge of override lists, later ones winning (imported when first used: MLflow)."""
    from regsweep import reevaluate

    return reevaluate.merge(*override_lists)


def with_values(cfg, values: dict):
    """A copy of a composed config with some keys set (a trial's knobs)."""
    from omegaconf import OmegaConf

    changed = copy.deepcopy(cfg)
    for key, value in values.items():
        OmegaConf.update(changed, key, _plain(value), merge=False)
    return changed


def _plain(value):
    """A Python number for a NumPy one (Keras Tuner's Bayesian oracle proposes NumPy floats)."""
    return value.item() if hasattr(value, "item") else value


# --- one trial's training, as Keras Tuner runs it (regsweep's own functions) -----------------------


def build_trial_model(cfg, num_classes: int, weights):
    """The classifier exactly as train_and_log builds it: a reused, reset backbone and the head
    seeded by train.seed. Returns (classifier, backbone)."""
    from regsweep import fit

    base, classifier = fit.seeded_classifier(cfg, num_classes, weights)
    return classifier, base


def fit_trial(cfg, classifier, base, splits, callbacks: tuple = ()):
    """regsweep's two phases on the whole classifier with online augmentation in the tf.data
    pipeline (train_and_log with cache=off). Returns the kept model's val_accuracy (inference
    mode), the history, phase 2's first epoch and the phase that was evaluated."""
    from regsweep import fit, train

    fitted = fit.two_phases(fit.online(cfg, splits, classifier), base, cfg, callbacks)
    final = fitted.final
    val_accuracy = train.score(final.model, final.datasets.val, len(splits.class_names))[0]
    return val_accuracy, fitted.history, fitted.phase2_start, final


def declare(hp, distributions: dict) -> dict:
    """The regsweep search space as Keras Tuner hyperparameters (same names, ranges, steps, log)."""
    import optuna

    values = {}
    for key, d in distributions.items():
        if isinstance(d, optuna.distributions.CategoricalDistribution):
            values[key] = hp.Choice(key, list(d.choices))
        elif isinstance(d, optuna.distributions.IntDistribution):
            values[key] = hp.Int(key, d.low, d.high, step=None if d.log else d.step, sampling=_sampling(d))
        else:
            values[key] = hp.Float(key, d.low, d.high, step=None if d.log else d.step, sampling=_sampling(d))
    return values


def _sampling(distribution) -> str:
    return "log" if distribution.log else "linear"


def two_phase_hypermodel(cfg, splits, weights, distributions: dict):
    """A keras_tuner.HyperModel made of regsweep's builder and two-phase fit."""
    import keras_tuner

    class TwoPhases(keras_tuner.HyperModel):
        def build(self, hp):
            values = declare(hp, distributions)
            classifier, self.base = build_trial_model(with_values(cfg, values), len(splits.class_names), weights)
            return classifier

        def fit(self, hp, model, *args, callbacks=(), **kwargs):
            run_cfg = with_values(cfg, {key: hp.get(key) for key in distributions})
            val_accuracy = fit_trial(run_cfg, model, self.base, splits, tuple(callbacks))[0]
            return {"val_accuracy": val_accuracy}  # the kept weights' score, as a regsweep trial's

    return TwoPhases()


def kt_child(spec_path: Path) -> None:
    """One Keras Tuner search in this (fresh) process; writes its outcome as JSON."""
    spec = json.loads(spec_path.read_text())
    quiet_libraries()
    from regsweep.worker import import_tensorflow_quietly

    import_tensorflow_quietly()
    import keras_tuner

    from regsweep import data, demo, space

    cfg = compose(spec["overrides"])
    store = Path(cfg.paths.store)
    splits = data.resolve_splits(cfg.data, cfg.model.image_size, store, with_test=False)  # never the test split
    weights = demo.resolve_weights(cfg.model, store)
    distributions = space.parse_space(spec["params"])
    common = {
        "objective": keras_tuner.Objective("val_accuracy", "max"),
        "max_trials": spec["trials"],
        "executions_per_trial": 1,
        "overwrite": True,
        "directory": spec["directory"],
        "project_name": spec["tuner"],
        "seed": 0,
    }
    hypermodel = two_phase_hypermodel(cfg, splits, weights, distributions)
    if spec["tuner"] == "bayesian":
        tuner = keras_tuner.BayesianOptimization(hypermodel, num_initial_points=spec["initial_points"], **common)
    else:
        tuner = keras_tuner.RandomSearch(hypermodel, **common)
    tuner.search(verbose=0)
    scored = [t for t in tuner.oracle.trials.values() if t.score is not None]
    best = tuner.get_best_hyperparameters(1)[0].values
    outcome = {
        "trials": len(scored),
        "failed": len(tuner.oracle.trials) - len(scored),  # Keras Tuner goes on after a failed trial
        "best_val": max(t.score for t in scored),
        "pick": {key: _plain(best[key]) for key in distributions},
    }
    Path(spec["out"]).write_text(json.dumps(outcome))


def run_kt(case: Case, tuner: str, fixed: list[str], params: dict, trials: int, startup: int, work: Path) -> Row:
    """A Keras Tuner search in a child process, timed from its start to its end (as a sweep is)."""
    from regsweep import space

    tool = KT_BAYES if tuner == "bayesian" else KT_RANDOM
    folder = work / case.name / f"kt-{tuner}"
    folder.mkdir(parents=True)
    spec = {
        "tuner": tuner,
        "overrides": merge(fixed, case.overrides, [f"paths.store={folder / 'mlruns'}"]),
        "params": params,
        "trials": trials,
        "initial_points": startup,
        "directory": str(folder / "tuner"),
        "out": str(folder / "outcome.json"),
    }
    (folder / "spec.json").write_text(json.dumps(spec))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    start = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        command = [sys.executable, str(Path(__file__).resolve()), "--kt-child", str(folder / "spec.json")]
        code = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=folder).returncode
    wall = time.perf_counter() - start
    if code != 0:
        sys.stdout.write("".join((folder / "log.txt").read_text().splitlines(keepends=True)[-30:]))
        raise SystemExit(f"the Keras Tuner {tuner} search of case {case.name} failed with exit code {code}")
    outcome = json.loads((folder / "outcome.json").read_text())
    if outcome["failed"]:
        print(f"  {case.name:<6} {tool}: {outcome['failed']} trial(s) failed (see {folder / 'log.txt'})", flush=True)
    pick = outcome["pick"]
    return Row(case.name, tool, wall, outcome["trials"], outcome["best_val"], pick, space.knob_label(pick))


# --- regsweep's rows --------------------------------------------------------------------------------


def run_regsweep(case: Case, tool: str, trials: int, work: Path) -> tuple[Row, Path]:
    """A real `regsweep sweep` process (no re-evaluation) and the trial its report's rule recommends."""
    from regsweep import results, space, study

    store = work / case.name / tool.replace(" ", "-").replace("=", "-") / "mlruns"
    store.mkdir(parents=True)
    extra = ["cache=off"] if tool == REGSWEEP_OFF else []
    wall = cache_speed.run_sweep(store, [f"sweep.n_trials={trials}", *case.overrides, *extra])["wall"]
    figures = cache_speed.study_figures(store, STUDY)
    cfg = compose_study([f"paths.store={store}"])
    stored = study.load_study(cfg.sweep, cfg.tracking.connect_timeout)
    chosen = results.recommend(study.trial_rows(stored), study.study_settings(stored, cfg).epsilon)
    row = Row(case.name, tool, wall, figures["trials"], figures["best_val"])
    if chosen is not None:
        row.pick, row.pick_label = dict(chosen.params), f"#{chosen.number} {space.knob_label(chosen.params)}"
    return row, store


# --- projections (the seed case's slow rows) ----------------------------------------------------


def phase1_epochs(val_losses: list[float], epochs: int, patience: int) -> int:
    """Where phase 1 ended in a logged history, by the rule of its EarlyStopping(val_loss,
    patience) and its epoch budget: the run does not log phase 2's first epoch itself."""
    best, best_at = math.inf, 0
    for i, value in enumerate(val_losses):
        if value < best:
            best, best_at = value, i
        if i + 1 >= epochs or (i - best_at >= patience and i > 0):
            return i + 1
    return len(val_losses)


def cached_workload(store: Path, cfg) -> tuple[list[tuple[int, int, int]], float, float]:
    """(level, phase-1 epochs, phase-2 epochs) of each counted trial of the cached study, its mean
    harness seconds per complete trial, and the sweep's seconds outside its trials (start-up,
    report), this last from the trials' own start and end times."""
    import mlflow
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{store}/optuna.db").get_trials(deepcopy=False)
    client = mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db")
    workload, trial_seconds = [], 0.0
    for trial in trials:
        if trial.state.name not in ("COMPLETE", "PRUNED"):
            continue
        history = client.get_metric_history(trial.user_attrs["mlflow_run_id"], "epoch_val_loss")
        losses = [m.value for m in sorted(history, key=lambda m: m.step)]
        level = int(trial.params[KNOB])
        first = phase1_epochs(losses, cfg.train.epochs, cfg.train.early_stopping_patience) if level else len(losses)
        workload.append((level, first, len(losses) - first))
        trial_seconds += (trial.datetime_complete - trial.datetime_start).total_seconds()
    harness = cache_speed.study_figures(store, STUDY)["mean_trial_s"]["harness"]
    return workload, (0.0 if math.isnan(harness) else harness), trial_seconds


def epoch_clock():
    """A Keras callback that records each epoch's seconds (training steps and validation)."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.seconds, self.started = [], 0.0

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.seconds.append(time.perf_counter() - self.started)

    return EpochClock()


def measure_levels(cfg, levels: list[int], epochs: int) -> dict:
    """Per level: the steady seconds of a phase-1 and a phase-2 epoch, a trial's fixed seconds
    (build, tracing, the val scoring of Keras Tuner's fit) and regsweep's extra scoring of the
    training images; plus the images' decoding, once per search. Level 0 trains `epochs`
    phase-1 epochs (phase 1 costs the same at every level), the others 1 + `epochs`."""
    import keras

    from regsweep import data, demo, train

    store = Path(cfg.paths.store)
    splits = data.resolve_splits(cfg.data, cfg.model.image_size, store, with_test=False)
    weights = demo.resolve_weights(cfg.model, store)
    start = time.perf_counter()
    for folder in (splits.train, splits.val):
        data.load_images(folder, splits.class_names, cfg.model.image_size)
    measured = {"decode_s": time.perf_counter() - start, "levels": {}, "epochs": 0}
    for level in sorted({0, *levels}):
        budget = {"train.epochs": epochs if level == 0 else 1, "train.fine_tune_epochs": epochs}
        run_cfg = with_values(
            cfg, {**MEASURED_KNOBS, KNOB: level, **budget, "train.early_stopping_patience": epochs + 1}
        )
        clock = epoch_clock()
        start = time.perf_counter()
        keras.backend.clear_session(free_memory=False)
        classifier, base = build_trial_model(run_cfg, len(splits.class_names), weights)
        _, history, phase2_start, final = fit_trial(run_cfg, classifier, base, splits, (clock,))
        trial_s = time.perf_counter() - start
        start = time.perf_counter()
        train.score(final.model, final.datasets.train_eval, len(splits.class_names))
        first = phase2_start or len(history["loss"])
        one, two, train_eval_s = clock.seconds[:first], clock.seconds[first:], time.perf_counter() - start
        measured["epochs"] += len(clock.seconds)
        if level == 0:  # the first level measured: phase 1 costs the same at every level
            p1 = statistics.mean(one[1:]) if len(one) > 1 else one[0]
        p2 = statistics.mean(two[1:]) if len(two) > 1 else (two[0] if two else 0.0)
        measured["levels"][level] = {
            "phase1_epoch_s": p1,
            "phase2_epoch_s": p2,
            "fixed_s": max(trial_s - len(one) * p1 - len(two) * p2, 0.0),
            "train_eval_s": train_eval_s,
        }
        print(  # each level as soon as it is measured: a stopped run keeps what it measured
            f"  {KNOB}={level}: phase-1 epoch {p1:.1f} s, phase-2 epoch {p2:.1f} s, per-trial fixed "
            f"{measured['levels'][level]['fixed_s']:.1f} s, scoring the training images {train_eval_s:.1f} s "
            f"(measured over {len(one)} + {len(two)} epochs)",
            flush=True,
        )
    return measured


def measure_cached_levels(cfg, levels: list[int], epochs: int) -> dict:
    """Per level, through train_and_log with the feature cache (as a sweep's trial trains): the
    steady seconds of a phase-1 and a phase-2 epoch on cached features and a trial's fixed
    seconds; plus a fill's seconds per image pass. The top level runs first: its one pass over
    each view writes every lower cut, so the other levels read what it filled."""
    from regsweep import train
    from regsweep.metrics import TRAIN_IMAGES, VAL_IMAGES

    measured = {"levels": {}, "epochs": 0}
    runs = {}
    for level in sorted({0, *levels}, reverse=True):
        budget = {"train.epochs": epochs if level == 0 else 1, "train.fine_tune_epochs": epochs}
        overrides = {**MEASURED_KNOBS, KNOB: level, **budget, "train.early_stopping_patience": epochs + 1}
        run_cfg = with_values(cfg, {**overrides, "tracking.artifacts": "none"})
        clock = epoch_clock()
        start = time.perf_counter()
        metrics = train.train_and_log(run_cfg, callbacks=(clock,), label=f"peers cached level {level}").metrics
        wall = time.perf_counter() - start
        if "fill_s" not in measured:  # clean train and validation, and K augmented views of train
            views = int(cfg.cache.augmented_views) if MEASURED_KNOBS["augment.strength"] > 0 else 0
            passes = metrics[TRAIN_IMAGES] * (1 + views) + metrics[VAL_IMAGES]
            measured["fill_s"] = metrics["seconds_features"]
            measured["fill_s_per_image"] = metrics["seconds_features"] / max(passes, 1)
            measured["train_images"], measured["val_images"] = metrics[TRAIN_IMAGES], metrics[VAL_IMAGES]
        first = budget["train.epochs"] if level else len(clock.seconds)
        fixed = max(wall - sum(clock.seconds) - metrics["seconds_features"], 0.0)  # fills are counted apart
        runs[level] = (clock.seconds[:first], clock.seconds[first:], fixed)
        measured["epochs"] += len(clock.seconds)
    phase1 = runs[0][0]
    p1 = statistics.mean(phase1[1:]) if len(phase1) > 1 else phase1[0]
    for level, (_, two, fixed) in sorted(runs.items()):
        p2 = statistics.mean(two[1:]) if len(two) > 1 else (two[0] if two else 0.0)
        measured["levels"][level] = {"phase1_epoch_s": p1, "phase2_epoch_s": p2, "fixed_s": fixed}
        print(
            f"  cached, {KNOB}={level}: phase-1 epoch {p1:.2f} s, phase-2 epoch {p2:.1f} s, "
            f"per-trial fixed {fixed:.1f} s",
            flush=True,
        )
    print(
        f"  cached: a fill pass {measured['fill_s_per_image'] * 1000:.0f} ms an image "
        f"({measured['fill_s']:.0f} s for the first level's views)",
        flush=True,
    )
    return measured


def budget_workload(levels: list[int], trials: int, cfg) -> list[tuple[int, int, int]]:
    """The upper bound a study can cost when none has run: trials spread evenly over the
    levels, each training its whole epoch budget (no early stop)."""
    return [
        (level, cfg.train.epochs, cfg.train.fine_tune_epochs if level else 0)
        for level in (levels[i % len(levels)] for i in range(trials))
    ]


def project_all(case: Case, fixed: list[str], params: dict, trials: int, epochs: int, work: Path) -> list[Row]:
    """Every row projected, the cached study's too, where even it takes hours: the same measured
    per-level costs for all, on the budget's upper-bound workload (budget_workload)."""
    from regsweep import space
    from regsweep.worker import import_tensorflow_quietly

    import_tensorflow_quietly()
    cfg = compose(merge(fixed, case.overrides, [f"paths.store={work / case.name / 'projection' / 'mlruns'}"]))
    distribution = space.parse_space(params)[KNOB]
    levels = list(range(distribution.low, distribution.high + 1))
    strengths = space.parse_space(params)["augment.strength"]
    visited = round((strengths.high - strengths.low) / strengths.step)  # the non-zero levels a study visits
    print(f"{case.name}: measuring epochs at {KNOB} {levels[0]}–{levels[-1]}, online and cached", flush=True)
    cached = measure_cached_levels(cfg, levels, epochs)
    online = measure_levels(cfg, levels, epochs)
    startup = kt_startup()
    workload = budget_workload(levels, trials, cfg)

    def trial_cost(costs: dict, level: int, one: int, two: int) -> float:
        c = costs["levels"][level]
        return c["fixed_s"] + one * c["phase1_epoch_s"] + two * c["phase2_epoch_s"]

    views = int(cfg.cache.augmented_views)
    fill_passes = cached["train_images"] * (1 + views * visited) + cached["val_images"]
    cached_s = fill_passes * cached["fill_s_per_image"] + sum(trial_cost(cached, *w) for w in workload)
    online_s = sum(trial_cost(online, *w) + online["levels"][w[0]]["train_eval_s"] for w in workload)
    # One round of re-evaluation (the answer, the baseline and top_k - 1 more, `seeds` each, each with
    # its own views at a new seed) and the learning curve's runs, on the mean trial of the workload.
    settings = compose_study(case.overrides).sweep.reevaluate
    reeval_runs = int(settings.top_k + 1) * int(settings.seeds) + len(settings.curve)
    mean_trial = sum(trial_cost(cached, *w) for w in workload) / len(workload)
    reeval_s = reeval_runs * (views * cached["train_images"] * cached["fill_s_per_image"] + mean_trial)
    how = (
        f"projected from {cached['epochs'] + online['epochs']} measured epochs; every trial at its full "
        f"{cfg.train.epochs} + {cfg.train.fine_tune_epochs} epochs, levels {levels[0]}–{levels[-1]} evenly"
    )
    print(
        f"  workload: {trials} trials, {sum(w[1] for w in workload)} phase-1 and {sum(w[2] for w in workload)} "
        f"phase-2 epochs; {fill_passes} fill passes over {visited} non-zero strength levels; decoding "
        f"{online['decode_s']:.1f} s; Keras Tuner's process start-up {startup:.1f} s",
        flush=True,
    )
    print(
        f"  cached study's shares: filling views {fill_passes * cached['fill_s_per_image'] / cached_s:.0%}, "
        f"training {1 - fill_passes * cached['fill_s_per_image'] / cached_s:.0%}; its re-evaluation round and "
        f"learning curve ({reeval_runs} runs) ≈ {reeval_s / 60:.0f} min more",
        flush=True,
    )
    # Every row starts a fresh process that imports TensorFlow, and decodes the images once.
    rows = [
        Row(case.name, REGSWEEP, startup + online["decode_s"] + cached_s, trials, projected=how),
        Row(case.name, REGSWEEP_OFF, startup + online["decode_s"] + online_s, trials, projected=how),
    ]
    for tool in (KT_BAYES, KT_RANDOM):  # a trial costs the same whichever tuner chose it
        rows.append(Row(case.name, tool, startup + online["decode_s"] + online_s, trials, projected=how))
    return rows


def kt_startup() -> float:
    """Seconds a fresh process takes to import Keras Tuner (TensorFlow with it): a search's start-up."""
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import keras_tuner"], check=True, capture_output=True)
    return time.perf_counter() - start


def project(case: Case, fixed: list[str], params: dict, cached: Row, store: Path, epochs: int, work: Path):
    """The cache=off study's and a Keras Tuner search's wall time, projected: the cached study's
    trials, each at its level and with the epochs it trained in each phase, priced at the
    measured per-epoch and per-trial seconds, plus decoding the images once. The Keras Tuner
    figure adds a fresh process's import of Keras Tuner, not the tuner's own per-trial
    bookkeeping (its checkpoint files); the cache=off one adds regsweep's harness per trial and
    the sweep's start-up and report, both as measured on the cached study."""
    from regsweep import space
    from regsweep.worker import import_tensorflow_quietly

    import_tensorflow_quietly()
    cfg = compose(merge(fixed, case.overrides, [f"paths.store={work / case.name / 'projection' / 'mlruns'}"]))
    distribution = space.parse_space(params)[KNOB]
    levels = list(range(distribution.low, distribution.high + 1))
    print(f"{case.name}: measuring epochs at {KNOB} {levels[0]}–{levels[-1]} for the projection", flush=True)
    measured = measure_levels(cfg, levels, epochs)
    startup = kt_startup()
    workload, harness_s, trial_seconds = cached_workload(store, cfg)
    kt_trials = [
        measured["levels"][level]["fixed_s"]
        + one * measured["levels"][level]["phase1_epoch_s"]
        + two * measured["levels"][level]["phase2_epoch_s"]
        for level, one, two in workload
    ]
    off_trials = [
        seconds + measured["levels"][level]["train_eval_s"] + harness_s
        for seconds, (level, _, _) in zip(kt_trials, workload)
    ]
    outside = max(cached.wall - trial_seconds, 0.0)  # the cached sweep's start-up and report
    decode = measured["decode_s"]
    print(
        f"  workload: the cached study's {len(workload)} trials, {sum(w[1] for w in workload)} phase-1 and "
        f"{sum(w[2] for w in workload)} phase-2 epochs; decoding the images {decode:.1f} s; regsweep's harness "
        f"{harness_s:.1f} s a trial and sweep start-up and report {outside:.1f} s; Keras Tuner's process "
        f"start-up {startup:.1f} s",
        flush=True,
    )
    how = f"projected from {measured['epochs']} measured epochs"
    rows = [Row(case.name, REGSWEEP_OFF, decode + sum(off_trials) + outside, len(workload), projected=how)]
    for tool in (KT_BAYES, KT_RANDOM):  # a trial costs the same whichever tuner chose it
        rows.append(Row(case.name, tool, startup + decode + sum(kt_trials), len(workload), projected=how))
    return rows


# --- re-training the picks ---------------------------------------------------------------------------


def retrain(case: Case, rows: list[Row], fixed: list[str], seeds: list[int], mode: str, work: Path) -> None:
    """Each pick re-trained with the same seeds and scored once on the test split, the same way
    for every tool (train_and_log, `cache=off` unless --retrain cache); a pick that another tool
    also picked is not trained twice."""
    from regsweep.worker import import_tensorflow_quietly

    import_tensorflow_quietly()  # before regsweep.train imports it
    from regsweep import space, train
    from regsweep.metrics import TEST_ACCURACY

    store = work / case.name / "retrain" / "mlruns"
    store.mkdir(parents=True, exist_ok=True)
    done: dict[tuple, Row] = {}
    for row in rows:
        if row.pick is None:
            continue
        key = tuple(sorted(row.pick.items()))
        if key in done:
            row.test, row.retrain_s = done[key].test, done[key].retrain_s
            row.retrain_note = f"same setting as {done[key].tool}"
            continue
        start = time.perf_counter()
        for seed in seeds:
            overrides = merge(
                fixed,
                case.overrides,
                space.as_overrides(row.pick),
                [f"train.seed={seed}", "tracking.artifacts=none", f"paths.store={store}"],
                ["cache=off"] if mode == "off" else [],
            )
            result = train.train_and_log(compose(overrides), evaluate_test=True, label=f"peers {row.tool} seed {seed}")
            row.test.append(result.metrics[TEST_ACCURACY])
        row.retrain_s = time.perf_counter() - start
        done[key] = row
        print(
            f"  {case.name:<6} re-trained {row.tool}'s pick, seeds {seeds}: test accuracy {_pm(row.test)} "
            f"({row.retrain_s:.1f} s; elapsed {_elapsed()})",
            flush=True,
        )


# --- one case, and the output ----------------------------------------------------------------------


def run_case(case: Case, args, work: Path) -> list[Row]:
    """The four tools on one case, one after the other (the cached study first: a projection
    reads its trials), then every pick re-trained; rows in the table's order."""
    params, fixed, startup = study_definition(case)
    print(f"\n{case.name}: {case.label}", flush=True)
    print(f"  search space: {json.dumps(params)}; fixed: {' '.join(fixed)}; {args.trials} trials each", flush=True)
    if case.name == "seed" and not args.project and not args.quick:
        print("  the cache=off study and the Keras Tuner searches take hours here; --project projects them")
    if case.name == "seed" and args.project_all:
        rows = project_all(case, fixed, params, args.trials, args.measure_epochs, work)
        for row in rows:
            _progress(row)
        return sorted(rows, key=lambda row: TOOLS.index(row.tool))
    cached, store = run_regsweep(case, REGSWEEP, args.trials, work)
    _progress(cached)
    rows = [cached]
    if case.name == "seed" and args.project:
        projected = project(case, fixed, params, cached, store, args.measure_epochs, work)
        for row in projected:
            _progress(row)
        rows += projected
    else:
        off, _ = run_regsweep(case, REGSWEEP_OFF, args.trials, work)
        _progress(off)
        rows.append(off)
        for tuner in ("bayesian", "random"):
            row = run_kt(case, tuner, fixed, params, args.trials, startup, work)
            _progress(row)
            rows.append(row)
    seeds = _seeds(args.seeds)
    retrain(case, rows, fixed, seeds, args.retrain, work)
    return sorted(rows, key=lambda row: TOOLS.index(row.tool))


def _seeds(count: int) -> list[int]:
    """Fresh seeds that no trial used, numbered as regsweep's re-evaluation numbers them."""
    from regsweep.results import Design

    return Design(seeds=count, max_seeds=count).selection_seeds(count)


def _progress(row: Row) -> None:
    what = row.projected or f"best val {row.best_val:.3f}, pick {row.pick_label}"
    print(
        f"  {row.case:<6} {row.tool:<24} {row.wall:9.1f} s  {row.trials} trials  {what}  (elapsed {_elapsed()})",
        flush=True,
    )


def _elapsed() -> str:
    return f"{time.perf_counter() - STARTED:.0f} s"


def _pm(values: list[float]) -> str:
    if not values:
        return "—"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def _seconds(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:,.0f} s" if value >= 100 else f"{value:.1f} s"


def table(rows: list[Row], seeds: int) -> str:
    lines = [
        f"| case | tool | wall | trials/hour | best val | pick | pick's test accuracy (mean ± std, {seeds} seeds) "
        "| re-training |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        tool = f"{row.tool} ({row.projected})" if row.projected else row.tool
        wall = f"≈ {_seconds(row.wall)}" if row.projected else _seconds(row.wall)
        per_hour = f"{'≈ ' if row.projected else ''}{row.per_hour:,.0f}"
        best = "—" if math.isnan(row.best_val) else f"{row.best_val:.3f}"
        retrained = row.retrain_note or _seconds(row.retrain_s)
        lines.append(
            f"| {row.case} | {tool} | {wall} | {per_hour} | {best} | {row.pick_label} | {_pm(row.test)} | {retrained} |"
        )
    return "\n".join(lines)


def ratios(rows: list[Row]) -> list[str]:
    """Per case: regsweep's wall over each tuner's, and the picks' test accuracy difference."""
    lines = []
    for case in dict.fromkeys(row.case for row in rows):
        by_tool = {row.tool: row for row in rows if row.case == case}
        ours = by_tool.get(REGSWEEP)
        for tool in (KT_BAYES, KT_RANDOM):
            theirs = by_tool.get(tool)
            if ours is None or theirs is None:
                continue
            note = " (Keras Tuner projected)" if theirs.projected else ""
            difference = (
                f"{statistics.mean(ours.test) - statistics.mean(theirs.test):+.3f}"
                if ours.test and theirs.test
                else "— (no Keras Tuner pick: its search was projected, not run)"
            )
            lines.append(
                f"- {case}: regsweep wall ÷ {tool} wall **{ours.wall / theirs.wall:.2f}×**{note}; "
                f"regsweep's pick's test accuracy − {tool}'s pick's: **{difference}**"
            )
        off, bayes = by_tool.get(REGSWEEP_OFF), by_tool.get(KT_BAYES)
        if off is not None and bayes is not None:
            note = " (projected)" if off.projected or bayes.projected else ""
            lines.append(f"- {case}: regsweep cache=off wall ÷ {KT_BAYES} wall {off.wall / bayes.wall:.2f}×{note}")
    return lines


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or platform.machine(),
    )
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}"
        for name in ("tensorflow", "keras", "keras-tuner", "optuna", "mlflow")
    )
    return f"machine: {os.cpu_count()} CPU cores, {cpu}; Python {platform.python_version()}, {versions}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="signs,seed", help="signs, seed or both (default both)")
    parser.add_argument("--trials", type=int, help="trials per search, every tool (default 12; 2 with --quick)")
    parser.add_argument("--seeds", type=int, help="re-training seeds per pick (default 3; 2 with --quick)")
    parser.add_argument("--per-class", type=int, help="signs: training images per class (default 20; 3 with --quick)")
    parser.add_argument("--work", type=Path, help="work folder, absent or empty (default: a new temporary folder)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument(
        "--project",
        action="store_true",
        help="seed case: project the cache=off and Keras Tuner rows from measured epochs instead of running them",
    )
    parser.add_argument(
        "--project-all",
        action="store_true",
        help="seed case: project the cached study too (each tool's whole budget), from measured epochs of each",
    )
    parser.add_argument(
        "--measure-epochs",
        type=int,
        help="seed case: epochs measured per level for a projection (default 3; 2 with --quick); each online "
        "VGG16 epoch is minutes on 2 cores",
    )
    parser.add_argument(
        "--retrain", choices=("off", "cache"), default="off", help="how every pick is re-trained (default cache=off)"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke test: tiny images and splits, 32 px, 2 trials, 2 + 1 epochs; its figures mean nothing",
    )
    parser.add_argument("--kt-child", type=Path, help=argparse.SUPPRESS)  # one Keras Tuner search (internal)
    args = parser.parse_args()
    if args.kt_child is not None:
        kt_child(args.kt_child)
        return
    if find_spec("keras_tuner") is None:
        sys.exit("Keras Tuner is not installed: install the bench extra with pip install -e '.[bench]'.")
    cases = [name for name in args.cases.split(",") if name]
    unknown = sorted(set(cases) - {"signs", "seed"})
    if unknown:
        sys.exit(f"--cases {','.join(unknown)} is not a case: choose signs, seed or both")
    args.trials = args.trials or (2 if args.quick else 12)
    args.seeds = args.seeds or (2 if args.quick else 3)
    args.measure_epochs = args.measure_epochs or (2 if args.quick else 3)
    if args.measure_epochs < 1:
        sys.exit(f"--measure-epochs {args.measure_epochs} is not a count of epochs: give 1 or more")
    if args.work is not None and args.work.exists() and any(args.work.iterdir()):
        sys.exit(f"--work {args.work} is not empty: give an absent or empty folder")
    os.environ.pop("MLFLOW_TRACKING_URI", None)  # the re-training logs to its scratch store, nowhere else
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # here and in the searches' processes
    quiet_libraries()

    print(machine())
    command = shlex.join(["python", "benchmarks/peers.py", *sys.argv[1:]])
    print(f"command: {command}", flush=True)
    if args.quick:
        print("--quick: a smoke test on tiny data; its figures mean nothing")
    work = args.work or Path(tempfile.mkdtemp(prefix="regsweep-peers-"))
    work.mkdir(parents=True, exist_ok=True)
    work = work.resolve()
    quick = ["train.epochs=2", "train.fine_tune_epochs=1"] if args.quick else []
    rows: list[Row] = []
    try:
        for name in cases:
            if name == "signs":
                per_class = args.per_class or (3 if args.quick else 20)
                sizes = (4, 6, 32) if args.quick else (40, None, 128)
                case = signs_case(work, per_class, *sizes)
            else:
                case = seed_case(work, *((4, 6, 6, 32) if args.quick else (100, 200, 200, 150)))
            if case is not None:
                case.overrides += quick
                rows += run_case(case, args, work)
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    mode = "cache=off" if args.retrain == "off" else "the feature cache"
    print(f"\n### Against Keras Tuner\n\n{machine()}\n\nCommand: `{command}`")
    print(f"(re-training: {mode}, seeds {_seeds(args.seeds)})\n")
    print(table(rows, args.seeds))
    print()
    print("\n".join(ratios(rows)))


if __name__ == "__main__":
    main()

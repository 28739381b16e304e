"""Re-evaluation: re-train the top settings and a baseline with fresh seeds, score each once on
the untouched test split, and say whether the recommendation beats doing nothing by more than noise.

A search scored on the validation set overfits it (Cawley & Talbot, JMLR 2010), and one run
carries seed noise. So the recommended setting, the other top non-dominated settings and the
unregularized baseline (sweeps/baselines/<name>.yaml) are each trained S more times, with
seeds the trials never used, and evaluated once on the test split. The runs are nested under
the study's parent run, tagged `reeval`, and found again on the next report, so re-running
trains only what is missing.

The verdict compares seed by seed: every setting runs with the same seeds, so the noise they
share cancels; a mean difference within two standard errors of the per-seed differences is
reported as within noise.

With several workers on one study, one of them re-evaluates: the one that holds the study's
claim (see `claim`); the others leave the re-evaluation and the report to it.

The stable recommendation (documented in the README): among the re-evaluated settings whose
mean gap (train − val) is at most ε, the one with the highest mean − std of val_accuracy
across seeds; if none meets ε, the smallest mean gap. Test accuracy is reported, never used to
choose.
"""

from __future__ import annotations

import hashlib
import math
import os
import socket
import statistics
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import mlflow
from omegaconf import DictConfig, OmegaConf

from regsweep import tracking
from regsweep.config import SWEEPS_DIR, RegsweepError

BASELINES_DIR = SWEEPS_DIR / "baselines"
METRICS = ("test_accuracy", "val_accuracy", "test_gap", "gap", "train_accuracy")
BASELINE = "baseline"


@dataclass
class Setting:
    label: str  # "baseline", or "#<trial number>"
    overrides: list[str]  # the trial's (or baseline's) overrides, before the seed
    trial_number: int | None = None


@dataclass
class Summary:
    label: str
    runs: list[dict[str, float]]  # one metrics dict per seed (with its "seed"), as logged, by seed

    def mean(self, metric: str) -> float:
        return statistics.fmean(run[metric] for run in self.runs)

    def std(self, metric: str) -> float:
        values = [run[metric] for run in self.runs]
        return statistics.stdev(values) if len(values) > 1 else 0.0


# --- what to re-train ----------------------------------------------------------------------------


def candidates(rows, epsilon: float, top_k: int) -> list:
    """The single-trial recommendation, then the other non-dominated trials (gap ≤ ε first,
    then the highest val_accuracy), k in all. When one trial dominates nearly all others the
    front is short, so it is topped up from the next front (non-dominated once it is removed)."""
    from regsweep.report import pareto_front, recommend

    first, _ = recommend(rows, epsilon)
    chosen = [first] if first is not None else []
    remaining = [row for row in rows if first is None or row.number != first.number]
    while len(chosen) < top_k:
        front = pareto_front(remaining)
        if not front:
            break
        chosen += sorted(front, key=lambda r: (r.gap > epsilon, -r.val_accuracy, r.gap, r.number))
        remaining = [row for row in remaining if row not in front]
    return chosen[:top_k]


def baseline_overrides(name: str) -> list[str]:
    """The named baseline (sweeps/baselines/<name>.yaml, dotted keys) as overrides."""
    path = BASELINES_DIR / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(BASELINES_DIR.glob("*.yaml")))
        raise RegsweepError(f"sweep.reevaluate.baseline={name}: no file sweeps/baselines/{name}.yaml; the baselines are: {known}")
    values = OmegaConf.to_container(OmegaConf.load(path), resolve=True) or {}
    return [f"{key}={_format(value)}" for key, value in values.items()]


def settings_to_run(study, rows, settings: DictConfig, base_overrides: list[str]) -> list[Setting]:
    """Baseline first, then the candidates; each trial's recorded overrides, with the caller's
    own overrides (which may hold the passwords the record masks) taking precedence."""
    chosen = [Setting(BASELINE, merge(base_overrides, baseline_overrides(settings.reevaluate.baseline)))]
    for row in candidates(rows, settings.epsilon, settings.reevaluate.top_k):
        trial_values = [f"{key}={_format(value)}" for key, value in row.params.items()]
        chosen.append(Setting(f"#{row.number}", merge(row.overrides, base_overrides, trial_values), row.number))
    return chosen


def merge(*override_lists: list[str]) -> list[str]:
    """Overrides by key, later lists winning (Hydra refuses a key given twice)."""
    merged: dict[str, str] = {}
    for overrides in override_lists:
        for override in overrides:
            merged[override.split("=", 1)[0].lstrip("+~")] = override
    return list(merged.values())


def _format(value) -> str:
    from regsweep.sweep import _format as format_value

    return format_value(value)


# --- training and finding the runs --------------------------------------------------------------


def run(study, cfg: DictConfig, settings: DictConfig, parent_run_id: str, base_overrides: list[str]) -> bool:
    """Trains every (setting, seed) that has no FINISHED re-evaluation run under the parent yet.

    `settings` is the study's sweep settings (its recorded ε); `base_overrides` what every run
    starts from. Returns False when another worker holds the claim and is re-evaluating.
    """
    seeds = int(settings.reevaluate.seeds)
    if seeds < 1:
        raise RegsweepError(f"sweep.reevaluate.seeds={seeds}: re-evaluation needs at least 1 seed, such as 3")
    if not missing_runs(study, cfg, settings, parent_run_id, base_overrides)[1]:
        return True
    token, holder = claim(study)
    if token is None:
        print(f"Another worker ({holder}) is re-evaluating this study; it writes the report when it is done.", flush=True)
        return False
    try:
        # Listed again now that this process holds the claim: a worker that just finished may have trained some.
        planned, todo = missing_runs(study, cfg, settings, parent_run_id, base_overrides)
        if todo:
            _train(study, cfg, planned, todo, seeds, parent_run_id, token)
    finally:
        release(study, token)
    return True


def missing_runs(study, cfg: DictConfig, settings: DictConfig, parent_run_id: str,
                 base_overrides: list[str]) -> tuple[list[Setting], list[tuple[Setting, int]]]:
    """The settings to re-evaluate, and the (setting, seed) pairs with no FINISHED run yet."""
    from regsweep.report import trial_rows

    rows = trial_rows(study)
    if not any(row.state == "COMPLETE" for row in rows):
        return [], []  # nothing to compare with the baseline yet
    planned = settings_to_run(study, rows, settings, base_overrides)
    done = {run.data.tags.get("regsweep.reeval_key") for run in logged_runs(cfg, parent_run_id)}
    seeds = seed_values(cfg, int(settings.reevaluate.seeds))
    return planned, [(setting, seed) for setting in planned for seed in seeds if run_key(setting, seed) not in done]


def _train(study, cfg: DictConfig, planned: list[Setting], todo: list, seeds: int, parent_run_id: str, token: str) -> None:
    from regsweep.cli import import_tensorflow_quietly
    from regsweep.config import compose

    import_tensorflow_quietly()
    from regsweep import train

    print(f"Re-evaluating {len(planned)} settings x {seeds} seeds on the test split ({len(todo)} runs to train)", flush=True)
    for index, (setting, seed) in enumerate(todo, start=1):
        if not renew(study, token):
            print("This worker's re-evaluation claim was taken over by another worker; leaving the rest to it.", flush=True)
            return
        overrides = merge(setting.overrides, [f"train.seed={seed}", "tracking.artifacts=none"])
        run_cfg = compose(overrides)
        tags = {"regsweep.study": study.study_name, "regsweep.role": "reeval", "reeval": setting.label,
                "regsweep.reeval_key": run_key(setting, seed)}
        if setting.trial_number is not None:
            tags["regsweep.trial_number"] = str(setting.trial_number)
        result = train.run(run_cfg, parent_run_id=parent_run_id, tags=tags, evaluate_test=True,
                           label=f"reeval {setting.label} seed {seed}")
        metrics = result.metrics
        print(f"  {index}/{len(todo)} {setting.label} seed {seed}: test {metrics['test_accuracy']:.3f} "
              f"val {metrics['val_accuracy']:.3f} test gap {metrics['test_gap']:.3f}", flush=True)


# --- one worker re-evaluates -------------------------------------------------------------------

CLAIM = "reevaluation_claim"


def claim(study, settle_seconds: float = 5.0) -> tuple[str | None, str]:
    """Claims the study's re-evaluation for this process: (token, this worker), or (None, the
    holder) when another worker holds it.

    Workers that finish together all write their claim, wait `settle_seconds`, and read it back:
    the last write wins for every reader, so exactly one goes on. A worker that arrives later
    finds a claim renewed within the lease (`lease_seconds`) and leaves the work to its holder;
    a claim whose holder died (no renewal for a lease) is taken over. Optuna's storage is the
    one store every worker shares, so the claim lives there, as a study attribute.
    """
    held = study.user_attrs.get(CLAIM)
    if held and time.time() - held["renewed"] < lease_seconds(study):
        return None, held["worker"]
    token, worker = uuid.uuid4().hex, f"{socket.gethostname()} pid {os.getpid()}"
    study.set_user_attr(CLAIM, {"token": token, "worker": worker, "renewed": time.time()})
    time.sleep(settle_seconds)
    held = study.user_attrs.get(CLAIM) or {}
    return (token, worker) if held.get("token") == token else (None, held.get("worker", "unknown"))


def renew(study, token: str) -> bool:
    """Keeps the claim fresh while its holder works; False if another worker has taken it over."""
    held = study.user_attrs.get(CLAIM) or {}
    if held.get("token") != token:
        return False
    study.set_user_attr(CLAIM, {**held, "renewed": time.time()})
    return True


def release(study, token: str) -> None:
    if (study.user_attrs.get(CLAIM) or {}).get("token") == token:
        study.set_user_attr(CLAIM, None)


def lease_seconds(study) -> float:
    """How long a claim holds without renewal: three of the study's longest trials, at least 10
    minutes, so one re-evaluation run (a trial's training plus a test pass) always fits."""
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in study.get_trials(deepcopy=False)
                 if t.datetime_complete is not None and t.datetime_start is not None]
    return max(600.0, 3 * max(durations, default=0.0))


def seed_values(cfg: DictConfig, seeds: int) -> list[int]:
    """Seeds no trial used: the trials all ran with train.seed."""
    return [int(cfg.train.seed) + 1 + i for i in range(seeds)]


def run_key(setting: Setting, seed: int) -> str:
    return hashlib.sha256(repr((sorted(setting.overrides), seed)).encode()).hexdigest()[:16]


def logged_runs(cfg: DictConfig, parent_run_id: str) -> list:
    tracking.use_store(cfg.tracking)
    client = mlflow.MlflowClient()
    experiment_id = client.get_run(parent_run_id).info.experiment_id
    return client.search_runs(
        [experiment_id],
        f"tags.`mlflow.parentRunId` = '{parent_run_id}' and tags.`regsweep.role` = 'reeval' "
        "and attributes.status = 'FINISHED'",
        max_results=10000,
    )


def collect(cfg: DictConfig, parent_run_id: str | None) -> list[Summary]:
    """The finished re-evaluation runs under the parent, per setting (baseline first)."""
    if parent_run_id is None:
        return []
    by_label: dict[str, dict[str, dict[str, float]]] = {}
    for logged in logged_runs(cfg, parent_run_id):
        metrics = logged.data.metrics
        if all(name in metrics for name in METRICS):
            by_label.setdefault(logged.data.tags["reeval"], {})[logged.data.tags["regsweep.reeval_key"]] = {
                "seed": int(logged.data.params["train.seed"]), **{name: metrics[name] for name in METRICS}}
    order = sorted(by_label, key=lambda label: (label != BASELINE, int(label[1:]) if label[1:].isdigit() else 0))
    return [Summary(label, sorted(by_label[label].values(), key=lambda run: run["seed"])) for label in order]


# --- the answer -----------------------------------------------------------------------------------


def stable_choice(summaries: list[Summary], epsilon: float) -> Summary | None:
    """See the module docstring: good on average across seeds, not once."""
    tried = [s for s in summaries if s.label != BASELINE]
    feasible = [s for s in tried if s.mean("gap") <= epsilon]
    if feasible:
        return max(feasible, key=lambda s: (s.mean("val_accuracy") - s.std("val_accuracy"), -s.mean("gap")))
    return min(tried, key=lambda s: s.mean("gap")) if tried else None


def paired(a: Summary, b: Summary, metric: str) -> list[float]:
    """b − a for each seed both ran. Every setting is re-trained with the same seeds (the same
    head initialisation, shuffling and augmentation draws), so comparing seed by seed removes
    the noise the two share."""
    by_seed = {run["seed"]: run[metric] for run in a.runs}
    return [run[metric] - by_seed[run["seed"]] for run in b.runs if run["seed"] in by_seed]


def noise(a: Summary, b: Summary, metric: str) -> float:
    """Two standard errors of the mean seed-by-seed difference (of the difference of the means
    when fewer than two seeds pair up): smaller differences are noise."""
    differences = paired(a, b, metric)
    if len(differences) > 1:
        return 2 * statistics.stdev(differences) / math.sqrt(len(differences))
    return 2 * math.sqrt(a.std(metric) ** 2 / len(a.runs) + b.std(metric) ** 2 / len(b.runs))


def gap_reduction(baseline: Summary, chosen: Summary) -> tuple[float, float]:
    """Relative test-gap reduction vs the baseline, mean ± std over seeds (paired by seed)."""
    reference = baseline.mean("test_gap")
    if reference <= 0:
        return math.nan, math.nan
    reductions = [-difference / reference for difference in paired(baseline, chosen, "test_gap")]
    if not reductions:
        return math.nan, math.nan
    return statistics.fmean(reductions), statistics.stdev(reductions) if len(reductions) > 1 else 0.0


def verdict(baseline: Summary, chosen: Summary) -> str:
    """One plain sentence on whether the chosen settings beat the baseline by more than noise."""
    def pm(summary: Summary, metric: str) -> str:
        return f"{summary.mean(metric):.2f} ± {summary.std(metric):.2f}"

    gap_change = chosen.mean("test_gap") - baseline.mean("test_gap")
    accuracy_change = chosen.mean("test_accuracy") - baseline.mean("test_accuracy")
    # With every seed paired these are the mean seed-by-seed differences that noise() measures.
    accuracy = f"test accuracy moves from {pm(baseline, 'test_accuracy')} to {pm(chosen, 'test_accuracy')}"
    if abs(accuracy_change) <= noise(baseline, chosen, "test_accuracy"):
        accuracy += " (within noise)"
    n = len(chosen.runs)
    if abs(gap_change) <= noise(baseline, chosen, "test_gap"):
        return (f"Within noise: the recommended settings' test gap {pm(chosen, 'test_gap')} does not differ from the "
                f"baseline's {pm(baseline, 'test_gap')} by more than two standard errors (seed by seed, {n} seeds); {accuracy}.")
    direction = "shrink" if gap_change < 0 else "widen"
    return (f"Recommended settings {direction} the test gap from {pm(baseline, 'test_gap')} to "
            f"{pm(chosen, 'test_gap')} while {accuracy}.")


def has_test_split(cfg: DictConfig) -> bool:
    from regsweep import data

    return data.resolve_splits(cfg.data, cfg.model.image_size, Path(cfg.paths.store)).test is not None

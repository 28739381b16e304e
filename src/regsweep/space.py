"""The sweep definition: search-space expressions → Optuna distributions, the study settings,
the sampler and the pruner, and the baseline a study is measured against.

The search space is written in Hydra's sweeper syntax (interval, range, choice, tag(log, …)),
so Hydra users recognise it, and Optuna samples it.
"""

from __future__ import annotations

import math
import shlex
from collections.abc import Callable

import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from omegaconf import DictConfig, OmegaConf

from regsweep.config import BLOCKS, RegsweepError, sweep_files

OBJECTIVES = ("accuracy", "constrained", "pareto")
SAMPLERS = ("tpe", "random", "nsgaii")
PRUNERS = ("median", "hyperband", "none")


def parse_distribution(key: str, expression: str) -> optuna.distributions.BaseDistribution:
    """Hydra sweeper syntax → Optuna distribution.

    interval(a, b) float · tag(log, interval(a, b)) log float · int(interval(a, b)) int ·
    range(a, b) int from a to b inclusive · range(a, b, step=s) with floats: stepped float ·
    choice(x, y, …) categorical.
    """
    try:
        sweep = OverridesParser.create().parse_override(f"{key}={expression}").value()
    except Exception as error:
        raise RegsweepError(
            f"sweep.params {key}: {expression!r} is not search-space syntax ({str(error).splitlines()[0]}): "
            "use interval(a, b), tag(log, interval(a, b)), range(a, b) or choice(x, y)"
        ) from None
    log = "log" in getattr(sweep, "tags", set())
    if isinstance(sweep, ChoiceSweep):
        return optuna.distributions.CategoricalDistribution(list(sweep.list))
    if isinstance(sweep, IntervalSweep) and sweep.start < sweep.end:
        if isinstance(sweep.start, int) and isinstance(sweep.end, int):
            return optuna.distributions.IntDistribution(sweep.start, sweep.end, log=log)
        return optuna.distributions.FloatDistribution(float(sweep.start), float(sweep.end), log=log)
    if isinstance(sweep, RangeSweep) and sweep.start < sweep.stop:
        if all(isinstance(v, int) for v in (sweep.start, sweep.stop, sweep.step)):
            return optuna.distributions.IntDistribution(sweep.start, sweep.stop, step=sweep.step, log=log)
        return optuna.distributions.FloatDistribution(
            float(sweep.start), float(sweep.stop), step=float(sweep.step), log=log
        )
    raise RegsweepError(
        f"sweep.params {key}: {expression!r} is not a usable search dimension: "
        "give interval(low, high) or range(low, high) with low < high, or choice(x, y, ...)"
    )


def parse_space(expressions: dict[str, str]) -> dict[str, optuna.distributions.BaseDistribution]:
    return {key: parse_distribution(key, expression) for key, expression in expressions.items()}


def split_cli_overrides(args: list[str]) -> tuple[list[str], dict[str, str]]:
    """Separates plain overrides (fixed values) from sweep-syntax ones (searched keys)."""
    parser = OverridesParser.create()
    plain, searched = [], {}
    for arg in args:
        try:
            override = parser.parse_override(arg)
        except Exception:
            plain.append(arg)  # let composition report it with its own message
            continue
        if override.is_sweep_override():
            searched[override.key_or_group] = arg.split("=", 1)[1]
        else:
            plain.append(arg)
    return plain, searched


def suggest(trial: optuna.Trial, key: str, distribution: optuna.distributions.BaseDistribution):
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return trial.suggest_categorical(key, distribution.choices)
    if isinstance(distribution, optuna.distributions.IntDistribution):
        return trial.suggest_int(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)
    return trial.suggest_float(key, distribution.low, distribution.high, step=distribution.step, log=distribution.log)


def override_value(value) -> str:
    """A config value as a Hydra override value (floats keep full precision for exact replay)."""
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def as_overrides(values: dict) -> list[str]:
    return [f"{key}={override_value(value)}" for key, value in values.items()]


def knob_label(values: dict) -> str:
    """`dropout=0.42 strength=0.61 lr=3.2e-04 unfrozen_blocks=1`: the last key segment and a short value."""

    def short(value):
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    return " ".join(f"{key.rsplit('.', 1)[-1]}={short(value)}" for key, value in values.items())


def check_settings(settings: DictConfig, expressions: dict[str, str]) -> None:
    """The study settings (cfg.sweep), each bad value named with its fix."""
    if settings.objective not in OBJECTIVES:
        raise RegsweepError(f"sweep.objective={settings.objective} is unknown: use one of {', '.join(OBJECTIVES)}")
    if settings.sampler.name not in SAMPLERS:
        raise RegsweepError(f"sweep.sampler.name={settings.sampler.name} is unknown: use one of {', '.join(SAMPLERS)}")
    if settings.pruner.name not in PRUNERS:
        raise RegsweepError(f"sweep.pruner.name={settings.pruner.name} is unknown: use one of {', '.join(PRUNERS)}")
    if not isinstance(settings.n_trials, int) or settings.n_trials < 1:
        raise RegsweepError(f"sweep.n_trials={settings.n_trials} must be a positive integer")
    if not isinstance(settings.max_failures, int) or settings.max_failures < 1:
        raise RegsweepError(
            f"sweep.max_failures={settings.max_failures} must be a positive integer: the failed trials "
            "after which one invocation stops, such as 5"
        )
    if not isinstance(settings.trials_per_worker, int) or settings.trials_per_worker < 0:
        raise RegsweepError(
            f"sweep.trials_per_worker={settings.trials_per_worker} must be an integer >= 0 "
            "(0 runs trials in the sweep's own process)"
        )
    if not isinstance(settings.heartbeat_seconds, int) or settings.heartbeat_seconds < 1:
        raise RegsweepError(
            f"sweep.heartbeat_seconds={settings.heartbeat_seconds} must be a whole number of seconds >= 1"
        )
    if not isinstance(settings.epsilon, (int, float)) or settings.epsilon < 0:
        raise RegsweepError(f"sweep.epsilon={settings.epsilon} must be a number >= 0 (the largest acceptable gap)")
    check_reevaluation(settings.reevaluate)
    if not expressions:
        raise RegsweepError(
            "the search space is empty: give sweep.params in the sweep file or key=interval(a, b) on the command line"
        )


def check_reevaluation(reeval: DictConfig, needs_seeds: bool = False) -> None:
    """sweep.reevaluate, each bad value named with its fix; `needs_seeds` for a command that
    re-evaluates whatever the study said (`regsweep report --reevaluate`)."""
    for key in ("seeds", "top_k"):
        if not isinstance(reeval[key], int) or reeval[key] < (0 if key == "seeds" else 1):
            raise RegsweepError(
                f"sweep.reevaluate.{key}={reeval[key]} must be an integer >= {0 if key == 'seeds' else 1}"
            )
    if needs_seeds and reeval.seeds < 1:
        raise RegsweepError(f"sweep.reevaluate.seeds={reeval.seeds}: re-evaluation needs at least 1 seed, such as 3")
    max_seeds = reeval.get("max_seeds", reeval.seeds)
    if not isinstance(max_seeds, int) or max_seeds < 0:
        raise RegsweepError(
            f"sweep.reevaluate.max_seeds={max_seeds} must be an integer >= 0: the most seeds the choice "
            "and the baseline get while the verdict can't tell (at or below seeds: one round only)"
        )
    race_seeds = reeval.get("race_seeds", reeval.seeds)
    if not isinstance(race_seeds, int) or race_seeds < 0:
        raise RegsweepError(
            f"sweep.reevaluate.race_seeds={race_seeds} must be an integer >= 0: the most seeds a candidate gets "
            "while the race on validation can't separate it from the leader (at or below seeds: one race look)"
        )
    screen = reeval.get("screen", 0)
    if not isinstance(screen, int) or screen < 0:
        raise RegsweepError(
            f"sweep.reevaluate.screen={screen} must be an integer >= 0: how many of the first trials in the rule's "
            "order get one seed each before top_k of them race (at or below top_k: no screening)"
        )
    margin = reeval.get("margin", 0.02)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 < margin < 1:
        raise RegsweepError(
            f"sweep.reevaluate.margin={margin} must be a test-accuracy difference between 0 and 1, "
            "such as 0.02: smaller differences count as no effect"
        )
    baseline_overrides(reeval.baseline)  # the named baseline file exists and reads
    curve = reeval.get("curve")
    if not OmegaConf.is_list(curve) or not all(
        isinstance(f, (int, float)) and not isinstance(f, bool) and 0 < f < 1 for f in curve
    ):
        raise RegsweepError(
            f"sweep.reevaluate.curve={curve}: give shares of the training images strictly between 0 and 1, "
            "such as [0.25,0.5], or [] to skip the learning curve"
        )


def baseline_overrides(name: str) -> list[str]:
    """The named re-evaluation baseline (sweeps/baselines/<name>.yaml, dotted keys) as overrides."""
    baselines = sweep_files("baselines")
    if name not in baselines:
        raise RegsweepError(
            f"sweep.reevaluate.baseline={name} is not a known baseline: choose one of "
            f"{', '.join(baselines)}, or write sweeps/baselines/{name}.yaml in the working directory"
        )
    return as_overrides(OmegaConf.to_container(OmegaConf.load(baselines[name]), resolve=True) or {})


def baseline_values(space: dict[str, optuna.distributions.BaseDistribution], base: DictConfig) -> dict:
    """The searched keys at their un-swept values (your config as given), where in range.

    Enqueued as trial 0, so every report can compare the recommendation with doing nothing.
    """
    values = {}
    for key, distribution in space.items():
        value = OmegaConf.select(base, key)
        if isinstance(distribution, optuna.distributions.CategoricalDistribution):
            inside = value in distribution.choices
        else:
            inside = isinstance(value, (int, float)) and distribution.low <= value <= distribution.high
        if inside:
            values[key] = value
    return values


def make_sampler(settings: DictConfig) -> optuna.samplers.BaseSampler:
    """The study's sampler; with sweep.sampler.seed, each trial drawn by its own seeded one
    (`PerTrialSeed`). TPE and NSGA-II honour each trial's `gap − ε` constraint in constrained
    mode (Trial.set_constraint)."""
    if settings.sampler.seed is None:
        return _sampler(settings, None)
    return PerTrialSeed(lambda seed: _sampler(settings, seed), int(settings.sampler.seed))


def _sampler(settings: DictConfig, seed: int | None) -> optuna.samplers.BaseSampler:
    name = settings.sampler.name
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=settings.sampler.n_startup_trials)
    if name == "nsgaii":
        return optuna.samplers.NSGAIISampler(seed=seed)
    return optuna.samplers.RandomSampler(seed=seed)


class PerTrialSeed(optuna.samplers.BaseSampler):
    """Draws trial n with a fresh sampler seeded sweep.sampler.seed + n.

    Trial numbers are unique in a study, so workers that start together never draw the same
    points, a resumed study does not replay its random start-up points, and a single worker's
    study is reproducible, with nothing recorded about who started when. The samplers keep
    their state in the study (past trials), not in themselves, so a fresh one per trial draws
    as a long-lived one would.
    """

    def __init__(self, make: Callable[[int], optuna.samplers.BaseSampler], seed: int):
        self.make, self.seed = make, seed
        self.running: dict[int, optuna.samplers.BaseSampler] = {}  # by trial number, until it ends

    def _for(self, trial: optuna.trial.FrozenTrial) -> optuna.samplers.BaseSampler:
        if trial.number not in self.running:
            self.running[trial.number] = self.make((self.seed + trial.number) % 2**32)
        return self.running[trial.number]

    def infer_relative_search_space(self, study, trial):
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):
        self._for(trial).after_trial(study, trial, state, values)
        self.running.pop(trial.number, None)

    def reseed_rng(self) -> None:
        """Nothing to reseed: every trial's sampler is seeded by its number."""


def make_pruner(settings: DictConfig) -> optuna.pruners.BasePruner:
    """Per-epoch pruning on val_accuracy; not in pareto mode (Optuna prunes single-objective studies)."""
    pruner = settings.pruner
    if settings.objective == "pareto" or pruner.name == "none":
        return optuna.pruners.NopPruner()
    if pruner.name == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=pruner.n_startup_trials, n_warmup_steps=pruner.n_warmup_steps
        )
    return optuna.pruners.HyperbandPruner(min_resource=pruner.get("min_resource", 3))


# --- the edges of the search space ------------------------------------------------------------

EDGE_SHARE = 0.1  # a value in the outer tenth of its range sits at its edge
# How far each knob can go at all (a range already at the limit has no wider range to try).
KNOB_LIMITS = {"model.dropout": (0.0, 0.9), "augment.strength": (0.0, 1.0), "optim.lr": (0.0, math.inf)}


def edges(
    params: dict, searched: dict[str, optuna.distributions.BaseDistribution], base: DictConfig, command: str
) -> list[str]:
    """A sentence for each knob whose value lies in the outer tenth of its range (or on the end of
    a discrete one) where the range could be wider, with the command line that searches the
    wider range in a new study. `command` holds `{widened}` where the wider range goes."""
    found = []
    for key, distribution in searched.items():
        value = params.get(key)
        if isinstance(distribution, optuna.distributions.CategoricalDistribution) or not isinstance(
            value, (int, float)
        ):
            continue
        side = _edge_side(value, distribution)
        if side is None:
            continue
        wider = _widened(key, distribution, side, base)
        if wider is None:
            continue
        where = "top" if side == "high" else "bottom"
        found.append(
            f"{key}={value:.4g} lies at the {where} of its searched range "
            f"[{distribution.low:g}, {distribution.high:g}], where a wider range may do better: "
            f"`{command.format(widened=shlex.quote(f'{key}={wider}'))}`"
        )
    return found


def _edge_side(value: float, distribution) -> str | None:
    low, high = distribution.low, distribution.high
    if distribution.step is not None:  # a discrete range: its two ends
        return "high" if math.isclose(value, high) else "low" if math.isclose(value, low) else None
    if distribution.log:
        low, high, value = math.log(low), math.log(high), math.log(value)
    position = (value - low) / (high - low)
    return "high" if position >= 1 - EDGE_SHARE else "low" if position <= EDGE_SHARE else None


def _widened(key: str, distribution, side: str, base: DictConfig) -> str | None:
    """The expression of the range widened on `side`, within the knob's limits; None at a limit."""
    floor, ceiling = KNOB_LIMITS.get(key, (0.0 if distribution.low >= 0 else -math.inf, math.inf))
    if key == "model.unfrozen_blocks":
        floor, ceiling = 0, len(BLOCKS.get(str(base.model.backbone), ()))
    low, high, step = distribution.low, distribution.high, distribution.step
    if distribution.log:
        low, high = (low, min(high * 10, ceiling)) if side == "high" else (max(low / 10, floor or low / 10), high)
    elif side == "high":
        high = min(high + max((high - low) / 2, step or 0), ceiling)
    else:
        low = max(low - max((high - low) / 2, step or 0), floor)
    if step is not None:  # stay on the grid
        low = distribution.low - math.floor((distribution.low - low) / step + 1e-9) * step
        high = distribution.low + math.floor((high - distribution.low) / step + 1e-9) * step
    if (low, high) == (distribution.low, distribution.high):
        return None
    if isinstance(distribution, optuna.distributions.IntDistribution):
        low, high = int(low), int(high)
        inner = f"range({low}, {high})" if step == 1 else f"range({low}, {high}, step={step})"
    elif step is not None:
        inner = f"range({_float(low)}, {_float(high)}, step={_float(step)})"
    else:
        inner = f"interval({_float(low)}, {_float(high)})"
    return f"tag(log, {inner})" if distribution.log else inner


def _float(value: float) -> str:
    """A float that Hydra's parser reads back as a float (0.0, not 0)."""
    text = f"{value:g}"
    return text if any(c in text for c in ".e") else f"{text}.0"

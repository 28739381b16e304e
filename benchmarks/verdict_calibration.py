"""Calibration of the verdict: how often it claims what is not there, how often it finds what is.

Measured, not assumed: the decision code itself (`regsweep.results.verdict`, and `rounds` for
the whole re-evaluation with its candidates and looks) is driven with simulated re-evaluations
whose truth is known, and, on real training, with A/A comparisons on the demo.

The simulated world: a model from seed s of setting X gets test image i right when

    a_X + u[X, s] + difficulty * z[i] + shape * w[X, i] + e[X, s, i] > 0,

with standard normal z (hard images are hard for every model: correlated per-image errors),
w (images a setting suits better or worse, the same for every seed of it), e (which images one
model happens to miss), and u ~ N(0, tau^2) a seed's luck, scaled so that one seed's accuracy
spreads by `seed_spread`. The validation and training images follow the same model with the
same u: a lucky seed is lucky on every split, which is what makes choosing on validation risky.
An A/A comparison sets two settings identical (same a, same w) and re-trains them on different
seeds; a planted effect moves a (test accuracy) or the training images' a (the gap only).

    python benchmarks/verdict_calibration.py            # the full tables (several minutes)
    python benchmarks/verdict_calibration.py --quick    # fewer repeats, for a look
    python benchmarks/verdict_calibration.py --real 20  # plus a real A/A on the demo, 20 repeats
    python benchmarks/verdict_calibration.py --real 20 --real-only
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import sys
import time
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from regsweep import results
from regsweep.results import BASELINE, Design, Summary

ADOPTING = (results.BETTER, results.LESS_OVERFIT)
CLAIMING = (results.BETTER, results.LESS_OVERFIT, results.TRADE_OFF)


@dataclass(frozen=True)
class World:
    """One simulated task: the split sizes, the baseline's accuracies and the noise."""

    accuracy: float = 0.84  # the baseline's expected test (and validation) accuracy
    train_accuracy: float = 0.99  # its expected accuracy on its own training images
    seed_spread: float = 0.05  # the standard deviation of one seed's test accuracy
    images: int = 576  # test images
    val_images: int = 300
    train_images: int = 25
    difficulty: float = 1.0  # how much errors concentrate on hard images, for every model alike
    shape: float = 0.5  # images one setting suits better than another (0 for identical settings)
    pairing: float = 0.0  # share of a seed's luck common to every setting trained with it

    @property
    def tau(self) -> float:
        return _tau(self.accuracy, self.seed_spread, self.difficulty, self.shape)


def _scale(tau: float, difficulty: float, shape: float) -> float:
    return math.sqrt(1 + difficulty**2 + shape**2 + tau**2)


@functools.cache
def _tau(accuracy: float, spread: float, difficulty: float, shape: float) -> float:
    """The seed-luck scale whose seeds' accuracies spread by `spread` (bisection on quadrature)."""
    if spread <= 0:
        return 0.0
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    weights = weights / weights.sum()

    def spread_of(tau: float) -> float:
        a = stats.norm.ppf(accuracy) * _scale(tau, difficulty, shape)
        per_seed = stats.norm.cdf((a + tau * nodes) / math.sqrt(1 + difficulty**2 + shape**2))
        mean = (weights * per_seed).sum()
        return math.sqrt((weights * (per_seed - mean) ** 2).sum())

    low, high = 0.0, 10.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if spread_of(middle) < spread else (low, middle)
    return (low + high) / 2


@dataclass(frozen=True)
class Setting:
    """A setting's truth: its expected test and training accuracy, and which images suit it."""

    label: str
    accuracy: float
    train_accuracy: float
    shape_seed: int  # settings with the same shape_seed suit the same images (A/A: identical)


def _bits(correct: np.ndarray) -> str:
    return (correct.astype(np.uint8) + 48).tobytes().decode("ascii")


class Simulation:
    """Draws the images once per repeat, then any setting's runs on them, seed by seed."""

    def __init__(self, world: World, rng: np.random.Generator, max_seeds: int = 0):
        self.world, self.rng, self.max_seeds = world, rng, max_seeds
        sizes = {"test": world.images, "validation": world.val_images, "train": world.train_images}
        self.z = {split: rng.standard_normal(n) for split, n in sizes.items()}
        self.common_luck: dict[int, float] = {}  # a seed's luck shared by every setting trained with it
        self.shapes: dict[int, dict[str, np.ndarray]] = {}

    def _shape(self, key: int) -> dict[str, np.ndarray]:
        if key not in self.shapes:
            self.shapes[key] = {split: self.rng.standard_normal(len(z)) for split, z in self.z.items()}
        return self.shapes[key]

    def _common(self, seed: int) -> float:
        if seed not in self.common_luck:
            self.common_luck[seed] = float(self.rng.standard_normal())
        return self.common_luck[seed]

    def runs(self, setting: Setting, seed_offset: int = 0, seeds: list[int] | None = None) -> Summary:
        """The setting's runs at these seeds (1 … max_seeds by default), as regsweep logs them.
        `seed_offset` draws its luck from other seeds than a setting with offset 0 (an A/A on
        disjoint seeds)."""
        seeds = list(range(1, self.max_seeds + 1)) if seeds is None else list(seeds)
        w, tau = self.world, self.world.tau
        scale = _scale(tau, w.difficulty, w.shape)
        a = {
            "test": stats.norm.ppf(setting.accuracy) * scale,
            "validation": stats.norm.ppf(setting.accuracy) * scale,
            "train": stats.norm.ppf(setting.train_accuracy) * scale,
        }
        shape = self._shape(setting.shape_seed)
        own_luck = self.rng.standard_normal(len(seeds))
        common = (
            np.array([self._common(seed) for seed in seeds])
            if seed_offset == 0
            else self.rng.standard_normal(len(seeds))
        )
        luck = tau * (math.sqrt(w.pairing) * common + math.sqrt(1 - w.pairing) * own_luck)
        runs = []
        for index, seed in enumerate(seeds):
            run = {"seed": seed}
            for split, z in self.z.items():
                noise = self.rng.standard_normal(len(z))
                correct = a[split] + luck[index] + w.difficulty * z + w.shape * shape[split] + noise > 0
                run[f"{split}_correct"] = _bits(correct)
                run[results.ACCURACY[split]] = float(correct.mean())
                run[results.IMAGE_COUNT[split]] = len(z)
            run["gap"] = run["train_accuracy"] - run["val_accuracy"]
            run["test_gap"] = run["train_accuracy"] - run["test_accuracy"]
            runs.append(run)
        return Summary(setting.label, runs)


def paired_t_finds(baseline: Summary, chosen: Summary, metric: str = "test_accuracy", sign: int = 1) -> bool:
    """The limit: one pre-specified one-sided paired t test on the per-seed differences, at
    ALPHA / 2 (the level a "better" claim has when nothing else is claimed). `sign` -1 tests a
    decrease (a smaller test gap)."""
    differences = [sign * (b[metric] - a[metric]) for a, b in results.paired(baseline, chosen)]
    spread = float(np.std(differences, ddof=1)) if len(differences) > 1 else 0.0
    if spread == 0:
        return bool(differences) and min(differences) > 0
    t = float(np.mean(differences)) / (spread / math.sqrt(len(differences)))
    return t > stats.t.ppf(1 - results.ALPHA / 2, len(differences) - 1)


def truth(baseline: Setting, other: Setting) -> tuple[float, float]:
    """The true differences other − baseline: test accuracy, and test gap."""
    accuracy = other.accuracy - baseline.accuracy
    return accuracy, (other.train_accuracy - other.accuracy) - (baseline.train_accuracy - baseline.accuracy)


def first(summary: Summary, seeds: int) -> Summary:
    return Summary(summary.label, summary.runs[:seeds])


# --- one verdict: the chosen setting against the baseline ----------------------------------------


def one_verdict(world: World, seeds: int, effect: tuple[float, float], repeats: int, rng: np.random.Generator) -> dict:
    """Rates for `verdict(baseline, chosen)` at a fixed number of seeds: effect = (test accuracy,
    gap) planted in the chosen setting; (0, 0) is an A/A."""
    base = Setting(BASELINE, world.accuracy, world.train_accuracy, 0)
    aa = effect == (0.0, 0.0)
    # An accuracy effect leaves the training images' accuracy as it was (so the gap shrinks by as
    # much); a gap effect lowers the training images' accuracy alone.
    chosen = Setting("#1", world.accuracy + effect[0], world.train_accuracy + effect[1], 0 if aa else 1)
    true_accuracy, true_gap = truth(base, chosen)
    counts = {
        "adopt": 0,
        "claim": 0,
        "decided": 0,
        "cover_accuracy": 0,
        "cover_gap": 0,
        "cover95": 0,
        "detect": 0,
        "limit": 0,
    }
    for _ in range(repeats):
        simulation = Simulation(world, rng, seeds)
        baseline_runs = simulation.runs(base)
        chosen_runs = simulation.runs(chosen, seed_offset=1 if aa else 0)
        judged = results.verdict(baseline_runs, chosen_runs)
        low, high = judged.accuracy_interval
        glow, ghigh = judged.gap_interval
        plain_low, plain_high = judged.accuracy.interval(0.05)
        counts["adopt"] += judged.case in ADOPTING
        counts["claim"] += judged.case in CLAIMING
        counts["decided"] += judged.case != results.CANT_TELL
        counts["cover_accuracy"] += low <= true_accuracy <= high
        counts["cover_gap"] += glow <= true_gap <= ghigh
        counts["cover95"] += plain_low <= true_accuracy <= plain_high
        gap_only = effect[0] == 0 and not aa  # the limit for a gap effect: a smaller test gap
        counts["limit"] += paired_t_finds(
            baseline_runs, chosen_runs, "test_gap" if gap_only else "test_accuracy", -1 if gap_only else 1
        )
        counts["detect"] += (
            judged.case == results.BETTER
            if effect[0] > 0
            else judged.case == results.LESS_OVERFIT
            if effect[1] < 0
            else False
        )
    return {key: value / repeats for key, value in counts.items()}


# --- the whole re-evaluation: candidates, the choice, the rounds -----------------------------------


class Runs:
    """One simulated study's re-evaluation runs: trained once per (setting, seed), as regsweep
    logs them, and the rounds replayed from them as `regsweep.reevaluate` does."""

    def __init__(self, simulation: Simulation, settings: dict[str, Setting]):
        self.simulation, self.settings = simulation, settings
        self.made: dict[str, dict[int, dict]] = {label: {} for label in settings}

    @property
    def count(self) -> int:
        return sum(len(runs) for runs in self.made.values())

    def train(self, label: str, seeds: list[int]) -> Summary:
        """The setting's runs at these seeds, training the missing ones. A/A: every setting on its
        own seeds' luck; with effects, paired seeds share theirs."""
        setting, made = self.settings[label], self.made[label]
        offset = 1 if setting.shape_seed == 0 and label != BASELINE else 0
        missing = [seed for seed in seeds if seed not in made]
        if missing:
            for run in self.simulation.runs(setting, offset, missing).runs:
                made[run["seed"]] = run
        return Summary(label, [made[seed] for seed in seeds])

    def rounds(
        self, labels: list[str], design: Design, epsilon: float, searched: dict[str, float] | None = None
    ) -> results.Rounds:
        """Trains what each round asks for until the rounds stop; their final state."""
        while True:
            logged = [Summary(label, [self.made[label][seed] for seed in sorted(self.made[label])]) for label in labels]
            state = results.rounds(labels, logged, design, epsilon, searched)
            if not state.todo:
                return state
            for label, seeds in state.todo.items():
                self.train(label, seeds)


def whole_decision(
    world: World, design: Design, effects: list[float], repeats: int, rng: np.random.Generator, epsilon: float = 0.1
) -> dict:
    """Rates for the whole re-evaluation: the baseline and len(effects) candidates (test accuracy
    effect each; all 0 is an A/A of every candidate), the race on validation, and the
    confirmation's looks of `results.rounds` until they stop. Also the runs it trained, and the
    limit: the power of one pre-specified one-sided paired t test of the truly best candidate
    against the baseline at max_seeds seeds, on the same simulated runs where the rounds trained
    them."""
    base = Setting(BASELINE, world.accuracy, world.train_accuracy, 0)
    settings = [base] + [
        Setting(f"#{i + 1}", world.accuracy + e, world.train_accuracy, 0 if e == 0 else i + 1)
        for i, e in enumerate(effects)
    ]
    by_label = {s.label: s for s in settings}
    labels = [s.label for s in settings]
    counts = {"adopt": 0, "claim": 0, "decided": 0, "detect": 0, "runs": 0, "wrong": 0, "limit": 0, "picked": 0}
    best = max(effects)
    best_label = labels[1 + effects.index(best)]
    for _ in range(repeats):
        runs = Runs(Simulation(world, rng), by_label)
        state = runs.rounds(labels, design, epsilon)
        counts["runs"] += runs.count
        case = state.verdict.case if state.verdict else results.CANT_TELL
        counts["adopt"] += case in ADOPTING
        counts["claim"] += case in CLAIMING
        counts["decided"] += case != results.CANT_TELL
        chosen_label = state.race[0].label if state.race else None
        counts["picked"] += chosen_label is not None and effects[labels.index(chosen_label) - 1] == best
        adopted_effect = effects[labels.index(chosen_label) - 1] if case in ADOPTING else None
        counts["detect"] += adopted_effect is not None and adopted_effect > 0
        counts["wrong"] += adopted_effect is not None and adopted_effect <= 0 < best
        seeds = design.confirmation_seeds(design.max_seeds)
        counts["limit"] += paired_t_finds(runs.train(BASELINE, seeds), runs.train(best_label, seeds))
    return {key: value / repeats for key, value in counts.items()}


def search_decision(
    world: World, design: Design, effects: list[float], screen: int, top_k: int, repeats: int, rng: np.random.Generator
) -> dict:
    """Rates for a whole study: a search of one run per trial (the baseline trial #0 and one trial
    per effect, each trained once at seed 0), the candidates the rule takes from it
    (`results.candidates` with top_k and `screen`), then the screening, the race and the
    confirmation of `results.rounds`. Also how often the truly best trial raced and was picked,
    the true gain of the choice, and the runs the re-evaluation trained."""
    epsilon = 0.1
    base = Setting(BASELINE, world.accuracy, world.train_accuracy, 0)
    trials = [
        Setting(f"#{i + 1}", world.accuracy + e, world.train_accuracy, 0 if e == 0 else i + 1)
        for i, e in enumerate(effects)
    ]
    by_label = {s.label: s for s in [base, *trials]}
    effect_of = {s.label: e for s, e in zip(trials, effects)} | {BASELINE: 0.0}
    best = max(effects)
    counts = dict.fromkeys(["adopt", "better", "gain", "raced", "picked", "runs"], 0.0)
    plan = replace(design, entrants=top_k if screen > top_k else 0)
    for _ in range(repeats):
        simulation = Simulation(world, rng)
        rows = []
        for number, setting in enumerate([base, *trials]):
            run = simulation.runs(setting, 0 if number == 0 or setting.shape_seed else 1, [0]).runs[0]
            rows.append(
                results.TrialRow(
                    number,
                    "COMPLETE",
                    {},
                    run["val_accuracy"],
                    run["train_accuracy"],
                    run["gap"],
                    world.val_images,
                    baseline=number == 0,
                )
            )
        picked = results.candidates(rows, epsilon, top_k, screen)
        labels = [BASELINE] + [f"#{row.number}" for row in picked]
        searched = {f"#{row.number}": row.val_accuracy for row in picked}
        runs = Runs(simulation, by_label)
        state = runs.rounds(labels, plan, epsilon, searched)
        counts["runs"] += runs.count
        racing = [e.label for e in state.race if not e.left.startswith("screened out")]
        counts["raced"] += any(effect_of[label] == best for label in racing)
        choice = state.race[0].label if state.race else BASELINE
        counts["picked"] += effect_of[choice] == best
        adopted = state.verdict is not None and state.verdict.case in ADOPTING
        counts["adopt"] += adopted
        counts["better"] += adopted and effect_of[choice] > 0
        counts["gain"] += effect_of[choice] if adopted else 0.0
    return {key: value / repeats for key, value in counts.items()}


LANDSCAPES = {
    "A/A: 23 trials as good as the baseline": [0.0] * 23,
    "one best (+0.06), four at +0.03, 18 from 0 to −0.15": [0.06] + [0.03] * 4 + list(np.linspace(0, -0.15, 18)),
    "one best (+0.04), five at +0.02, 17 from 0 to −0.15": [0.04] + [0.02] * 5 + list(np.linspace(0, -0.15, 17)),
    "a plateau: six at +0.04, 17 from 0 to −0.15": [0.04] * 6 + list(np.linspace(0, -0.15, 17)),
}


SEARCH_DESIGNS = (("top_k 3", 3, 0), ("top_k 3, screen 6", 3, 6), ("top_k 3, screen 9", 3, 9), ("top_k 6", 6, 0))


def search_table(repeats: int, rng: np.random.Generator) -> None:
    """Which candidates race: top_k from single runs, or more of them screened on a second seed."""
    print("## Candidates from the search: single runs, or screened on a second seed\n")
    print(
        "A study of 24 single runs (the baseline trial and 23 others), 1,000 validation and 1,000 test images, "
        "accuracy 0.75; then the defaults' re-evaluation. `top_k 3`: the first 3 trials in the rule's order race "
        "(before #33's item 3). `screen 6`: the first 6 trials in the rule's order get one seed each, and the 3 "
        'best over two runs race (`screen 9`: the first 9). `top_k 6`: all 6 race. "true gain": the mean true '
        "effect of the adopted setting (0 when the baseline stays).\n"
    )
    rows = []
    for spread, (name, effects), (design_name, top_k, screen) in itertools.product(
        (0.03, 0.05), LANDSCAPES.items(), SEARCH_DESIGNS
    ):
        world = World(accuracy=0.75, seed_spread=spread, images=1000, val_images=1000, pairing=0.5)
        rates = search_decision(world, DEFAULT, effects, screen, top_k, repeats, rng)
        aa = max(effects) == 0
        rows.append(
            [
                f"{spread:.2f}",
                name,
                design_name,
                "" if aa else pct(rates["raced"]),
                "" if aa else pct(rates["picked"]),
                pct(rates["adopt"]) if aa else pct(rates["better"]),
                "" if aa else f"{rates['gain']:+.4f}",
                f"{rates['runs']:.1f}",
            ]
        )
    header = [
        "seed spread",
        "landscape",
        "candidates",
        "best raced",
        "best picked",
        "adopts (A/A: false)",
        "true gain",
        "runs",
    ]
    print(table(header, rows), "\n", flush=True)


# --- printing ------------------------------------------------------------------------------------


def pct(value: float) -> str:
    return f"{100 * value:5.1f} %"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats: a look, not a measurement")
    parser.add_argument("--repeats", type=int, default=None, help="repeats per cell (default 2000, --quick 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--real", type=int, default=0, help="also an A/A on real demo training, this many repeats")
    parser.add_argument("--store", default="/tmp/regsweep-calibration", help="the real A/A's scratch store")
    parser.add_argument("--real-only", action="store_true", help="only the real A/A (with --real N)")
    parser.add_argument(
        "--sections", default="targets,aa,planted,whole,search", help="which simulated tables, comma-separated"
    )
    options = parser.parse_args(argv)
    sections = set(options.sections.split(","))
    if options.real_only:
        real_aa(options.real or 20, options.store)
        return 0
    repeats = options.repeats or (300 if options.quick else 2000)
    rng = np.random.default_rng(options.seed)
    started = time.perf_counter()
    print(
        f"# Verdict calibration ({repeats} repeats per cell; python benchmarks/verdict_calibration.py "
        f"{' '.join(sys.argv[1:])})\n"
    )

    if "targets" in sections:
        targets_table(repeats, rng)
    if "aa" in sections:
        aa_table(repeats, rng)
    if "planted" in sections:
        planted_table(repeats, rng)
    if "whole" in sections:
        whole_table(repeats, rng)
    if "search" in sections:
        search_table(repeats // 4, rng)
    if options.real:
        real_aa(options.real, options.store)
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


def aa_table(repeats: int, rng: np.random.Generator) -> None:
    print("## A/A through results.verdict(baseline, chosen): no true difference\n")
    print("Targets: false adoption ≤ 2.5 %, any claim ≤ 5 %, coverage of the plain 95 % interval ≥ 93 %.\n")
    rows = []
    for spread, seeds, images in itertools.product((0.0, 0.05, 0.10), (2, 3, 5, 8, 10), (100, 576, 2000, 5000)):
        if images == 5000 and seeds not in (3, 10):
            continue
        world = World(seed_spread=spread, images=images)
        rates = one_verdict(world, seeds, (0.0, 0.0), repeats, rng)
        rows.append(
            [
                f"{spread:.2f}",
                str(seeds),
                str(images),
                pct(rates["adopt"]),
                pct(rates["claim"]),
                pct(rates["cover95"]),
                pct(rates["cover_accuracy"]),
                pct(rates["cover_gap"]),
            ]
        )
    print(
        table(
            [
                "seed spread",
                "seeds",
                "test images",
                "false adoption",
                "any claim",
                "95 % coverage",
                "verdict coverage (acc)",
                "verdict coverage (gap)",
            ],
            rows,
        ),
        "\n",
        flush=True,
    )


def planted_table(repeats: int, rng: np.random.Generator) -> None:
    print("## Planted effects through results.verdict: power and coverage\n")
    rows = []
    for (accuracy, gap), spread, seeds, images in itertools.product(
        ((0.03, 0.0), (0.05, 0.0), (0.10, 0.0), (0.0, -0.10), (0.0, -0.20)), (0.0, 0.05, 0.10), (3, 5, 8), (576, 2000)
    ):
        world = World(seed_spread=spread, images=images, train_accuracy=0.99 if gap == 0 else 0.995)
        rates = one_verdict(world, seeds, (accuracy, gap), repeats // 2, rng)
        rows.append(
            [
                f"{signed(accuracy)} / {signed(gap)}",
                f"{spread:.2f}",
                str(seeds),
                str(images),
                pct(rates["detect"]),
                pct(rates["limit"]),
                ratio(rates["detect"], rates["limit"]),
                pct(rates["decided"]),
                pct(rates["cover95"]),
                pct(rates["cover_accuracy"]),
                pct(rates["cover_gap"]),
            ]
        )
    print(
        table(
            [
                "effect (acc / gap)",
                "seed spread",
                "seeds",
                "test images",
                "power",
                "limit (paired t)",
                "ratio",
                "decided",
                "95 % coverage",
                "verdict coverage (acc)",
                "verdict coverage (gap)",
            ],
            rows,
        ),
        "\n",
        flush=True,
    )


DEFAULT = Design(seeds=3, max_seeds=12, race_seeds=6)  # sweep.reevaluate's defaults


def whole_table(repeats: int, rng: np.random.Generator) -> None:
    print("## The whole re-evaluation: 3 candidates race on validation, the choice is confirmed on fresh seeds\n")
    print(
        "Fixed: 3 seeds each, one look. Adaptive (the defaults): the race gives candidates within noise of the "
        "leader 3 more seeds, up to 6; the confirmation gives the choice and the baseline 3 fresh seeds a look, up "
        "to 12. Every seed's luck is shared by val and test, the worst case for choosing on validation. The limit: "
        "one pre-specified one-sided paired t test of the truly best candidate against the baseline at the "
        "confirmation's maximum seeds.\n"
    )
    rows = []
    designs = {"fixed 3": Design(seeds=3, max_seeds=3), "adaptive to 12": DEFAULT}
    for (name, design), spread, images, effects in itertools.product(
        designs.items(),
        (0.0, 0.05, 0.10),
        (576, 2000),
        ([0.0, 0.0, 0.0], [0.05, 0.0, 0.0], [0.10, 0.0, 0.0], [0.10, 0.05, 0.0]),
    ):
        world = World(seed_spread=spread, images=images, pairing=0.5)
        rates = whole_decision(world, design, effects, repeats // 4, rng)
        rows.append(whole_row(name, world, effects, rates))
    print(table(WHOLE_HEADER, rows), "\n", flush=True)


WHOLE_HEADER = [
    "design",
    "seed spread",
    "test images",
    "candidates' effects",
    "false adoption",
    "any claim",
    "power (adopts a better one)",
    "limit (paired t)",
    "ratio",
    "picked the best",
    "decided",
    "runs trained",
]


def whole_row(name: str, world: World, effects: list[float], rates: dict) -> list[str]:
    aa = max(effects) == 0
    return [
        name,
        f"{world.seed_spread:.2f}",
        str(world.images),
        "A/A" if aa else "+" + "/".join(f"{e:.2f}" for e in effects),
        pct(rates["adopt"]) if aa else "",
        pct(rates["claim"]) if aa else "",
        "" if aa else pct(rates["detect"]),
        pct(rates["limit"]),
        "" if aa else ratio(rates["detect"], rates["limit"]),
        "" if aa else pct(rates["picked"]),
        pct(rates["decided"]),
        f"{rates['runs']:.1f}",
    ]


def targets_table(repeats: int, rng: np.random.Generator) -> None:
    """The issue's cells: seed spread 0.05, 12 seeds, 1,000 test (and validation) images, accuracy
    0.75. Targets: the single verdict ≥ 0.9× the limit, the whole re-evaluation ≥ 0.85× it, A/A
    false adoption ≤ 2.5 %, any claim ≤ 5 %, coverage ≥ 93 %."""
    print("## Targets: seed spread 0.05, 12 seeds, 1,000 test images, accuracy 0.75\n")
    world = World(accuracy=0.75, seed_spread=0.05, images=1000, val_images=1000)
    rows = []
    for effect in ((0.0, 0.0), (0.05, 0.0), (0.10, 0.0)):
        rates = one_verdict(world, 12, effect, repeats, rng)
        aa = effect == (0.0, 0.0)
        rows.append(
            [
                "results.verdict, 12 seeds",
                "A/A" if aa else f"+{effect[0]:.2f}",
                pct(rates["adopt"]) if aa else "",
                pct(rates["claim"]) if aa else "",
                pct(rates["cover95"]),
                "" if aa else pct(rates["detect"]),
                pct(rates["limit"]),
                "" if aa else ratio(rates["detect"], rates["limit"]),
                "",
                "24",
            ]
        )
    paired = World(accuracy=0.75, seed_spread=0.05, images=1000, val_images=1000, pairing=0.5)
    for effects in ([0.0, 0.0, 0.0], [0.05, 0.0, 0.0], [0.10, 0.0, 0.0]):
        rates = whole_decision(paired, DEFAULT, effects, repeats // 2, rng)
        aa = max(effects) == 0
        rows.append(
            [
                "the whole re-evaluation (defaults), 3 candidates",
                "A/A" if aa else "+" + "/".join(f"{e:.2f}" for e in effects),
                pct(rates["adopt"]) if aa else "",
                pct(rates["claim"]) if aa else "",
                "",
                "" if aa else pct(rates["detect"]),
                pct(rates["limit"]),
                "" if aa else ratio(rates["detect"], rates["limit"]),
                "" if aa else pct(rates["picked"]),
                f"{rates['runs']:.1f}",
            ]
        )
    print(
        table(
            [
                "decision",
                "effects",
                "false adoption",
                "any claim",
                "95 % coverage",
                "power",
                "limit (paired t, 2.5 %)",
                "ratio",
                "picked the best",
                "runs trained (mean)",
            ],
            rows,
        ),
        "\n",
        flush=True,
    )


def ratio(power: float, limit: float) -> str:
    return f"{power / limit:.2f}×" if limit > 0 else ""


def signed(value: float) -> str:
    return f"{value:+.2f}"


# --- real training: an A/A on the demo -----------------------------------------------------------


def real_aa(repeats: int, store: str, seeds: int = 3) -> None:
    """The demo's baseline re-trained on 2 × repeats × seeds different seeds, logged as
    re-evaluation runs are, then compared in disjoint pairs of seed sets as if they were two
    settings: every claim is false."""
    from pathlib import Path

    import mlflow

    from regsweep import tracking
    from regsweep.config import compose
    from regsweep.worker import import_tensorflow_quietly

    import_tensorflow_quietly()
    from regsweep import train

    Path(store).mkdir(parents=True, exist_ok=True)
    print(
        f"## Real A/A on the demo: the baseline setting on {2 * repeats} disjoint sets of {seeds} seeds\n", flush=True
    )
    runs = []
    started = time.perf_counter()
    for seed in range(1, 2 * repeats * seeds + 1):
        cfg = compose(
            [
                f"paths.store={store}",
                "tracking.artifacts=none",
                f"train.seed={1000 + seed}",
                "model.dropout=0.0",
                "augment.strength=0.0",
                "model.unfrozen_blocks=0",
            ]
        )
        result = train.train_and_log(cfg, evaluate_test=True, tags={"regsweep.role": "calibration"})
        logged = mlflow.get_run(result.run_id)
        per_image = tracking.load_per_image_correct(logged.info.artifact_uri)
        runs.append(
            {
                **{
                    k: result.metrics[k]
                    for k in (
                        "test_accuracy",
                        "val_accuracy",
                        "train_accuracy",
                        "gap",
                        "test_gap",
                        "train_images",
                        "val_images",
                        "test_images",
                    )
                },
                **{f"{split}_correct": value for split, value in per_image.items()},
            }
        )
    counts = {"adopt": 0, "claim": 0}
    spreads = []
    for repeat in range(repeats):
        block = runs[2 * repeat * seeds : (2 * repeat + 2) * seeds]
        a = Summary(BASELINE, [{**run, "seed": i + 1} for i, run in enumerate(block[:seeds])])
        b = Summary("#1", [{**run, "seed": i + 1} for i, run in enumerate(block[seeds:])])
        judged = results.verdict(a, b)
        counts["adopt"] += judged.adopt
        counts["claim"] += judged.case in CLAIMING
        spreads.append(a.std("test_accuracy"))
        print(
            f"  {repeat + 1:2d}: {judged.case:26s} test accuracy {results.with_interval(judged.accuracy, judged.alpha)}"
        )
    print(
        f"\nReal A/A, {repeats} comparisons of {seeds} vs {seeds} seeds ({len(runs)} runs, "
        f"{time.perf_counter() - started:.0f} s; seed spread of test accuracy {np.mean(spreads):.3f}): "
        f"false adoptions {counts['adopt']}, any claim {counts['claim']}.\n"
    )


if __name__ == "__main__":
    sys.exit(main())

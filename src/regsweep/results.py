"""The decisions: which setting to recommend, the trade-off front, and whether it beats doing
nothing by more than noise.

Plain data in, plain data out: no MLflow, no Optuna, no TensorFlow, no rendering. The same
rules drive the progress line, the report, the re-evaluation and the best-settings file, so
they live here once, testable in milliseconds.

The single-trial rule, the same in both objective modes: among COMPLETE trials whose gap is at
most ε, the one with the highest val_accuracy (ties: the smaller gap, then the earlier trial).
If no trial meets the constraint, the closest one: the smallest gap (ties: the higher
val_accuracy).

The stable rule, after re-evaluation: among the re-evaluated settings whose mean gap
(train − val) is at most ε, the one with the highest mean − std of val_accuracy across seeds;
if none meets ε, the smallest mean gap. Test accuracy is reported, never used to choose.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from regsweep.config import redact

BASELINE = "baseline"  # the re-evaluation label of the unregularized reference


@dataclass
class TrialRow:
    """One Optuna trial as the decisions see it."""

    number: int
    state: str
    params: dict
    val_accuracy: float = math.nan
    train_accuracy: float = math.nan
    gap: float = math.nan
    val_images: int = 0  # the validation set's size: how much of an accuracy difference is noise
    overrides: list[str] = field(default_factory=list)
    run_id: str = ""
    baseline: bool = False
    fail_reason: str = ""


@dataclass
class Summary:
    """One re-evaluated setting: its runs, one per seed, as logged."""

    label: str  # BASELINE, or "#<trial number>"
    runs: list[dict[str, float]]  # one metrics dict per seed (with its "seed"), by seed

    def mean(self, metric: str) -> float:
        return statistics.fmean(run[metric] for run in self.runs)

    def std(self, metric: str) -> float:
        values = [run[metric] for run in self.runs]
        return statistics.stdev(values) if len(values) > 1 else 0.0


# --- single trials ------------------------------------------------------------------------------


def complete(rows: list[TrialRow]) -> list[TrialRow]:
    return [r for r in rows if r.state == "COMPLETE" and not math.isnan(r.gap)]


def baseline_row(rows: list[TrialRow]) -> TrialRow | None:
    return next((r for r in complete(rows) if r.baseline), None)


def recommend(rows: list[TrialRow], epsilon: float) -> tuple[TrialRow | None, bool]:
    """(the recommended trial, whether it meets gap ≤ ε); see the module docstring."""
    done = complete(rows)
    feasible = [r for r in done if r.gap <= epsilon]
    if feasible:
        return min(feasible, key=lambda r: (-r.val_accuracy, r.gap, r.number)), True
    if done:
        return min(done, key=lambda r: (r.gap, -r.val_accuracy, r.number)), False
    return None, False


def pareto_front(rows: list[TrialRow]) -> list[TrialRow]:
    """Non-dominated COMPLETE trials in (max val_accuracy, min gap), by increasing gap."""
    done = complete(rows)

    def dominated(r: TrialRow) -> bool:
        return any(
            o.val_accuracy >= r.val_accuracy and o.gap <= r.gap and (o.val_accuracy > r.val_accuracy or o.gap < r.gap)
            for o in done
        )

    return sorted((r for r in done if not dominated(r)), key=lambda r: (r.gap, -r.val_accuracy))


def ranked(rows: list[TrialRow], epsilon: float) -> list[TrialRow]:
    """COMPLETE trials for a "top trials" table: within ε first, then by val_accuracy."""
    return sorted(complete(rows), key=lambda r: (r.gap > epsilon, -r.val_accuracy, r.gap))


def leads(rows: list[TrialRow], finished: TrialRow, objective: str, epsilon: float) -> bool:
    """Whether a just-finished trial would be recommended (constrained) or is on the front
    (pareto) among `rows` and itself.

    A trial the report finally recommends necessarily led when it ended, so with
    tracking.artifacts=best every recommendable trial has its plots and model.
    """
    rows = [r for r in rows if r.number != finished.number] + [finished]
    if objective == "constrained":
        chosen, _ = recommend(rows, epsilon)
        return chosen is not None and chosen.number == finished.number
    return any(row.number == finished.number for row in pareto_front(rows))


def candidates(rows: list[TrialRow], epsilon: float, top_k: int) -> list[TrialRow]:
    """What to re-evaluate: the single-trial recommendation, then the other non-dominated
    trials (gap ≤ ε first, then the highest val_accuracy), k in all. When one trial dominates
    nearly all others the front is short, so it is topped up from the next front
    (non-dominated once it is removed)."""
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


def caveats(rows: list[TrialRow], chosen: TrialRow | None, met: bool, epsilon: float) -> list[str]:
    """Plain warnings a user must read before adopting the recommendation."""
    if chosen is None:
        return []
    notes = []
    done = complete(rows)
    if not met:
        most_accurate = max(done, key=lambda r: (r.val_accuracy, -r.gap))
        notes.append(
            f"No trial met gap <= {epsilon:g}. Shown instead is the closest, trial #{chosen.number} "
            f"(gap {chosen.gap:.4f}, val_accuracy {chosen.val_accuracy:.4f}); the most accurate is trial "
            f"#{most_accurate.number} (val_accuracy {most_accurate.val_accuracy:.4f}, gap {most_accurate.gap:.4f}). "
            "Consider a larger sweep.epsilon, more trials, or stronger regularization in the search space."
        )
    baseline = baseline_row(rows)
    if baseline is not None and baseline is not chosen and chosen.val_accuracy < baseline.val_accuracy:
        notes.append(
            f"The recommendation gives up {baseline.val_accuracy - chosen.val_accuracy:.4f} of val_accuracy "
            f"against the baseline (trial #{baseline.number}) to bring the gap from {baseline.gap:.4f} "
            f"to {chosen.gap:.4f}: adopt it only if that trade is worth it."
        )
    return notes


def failures_by_reason(rows: list[TrialRow]) -> list[tuple[str, list[int]]]:
    """FAIL trials grouped by their reason (exception type and message), most frequent first."""
    groups: dict[str, list[int]] = {}
    for row in rows:
        if row.state == "FAIL":
            groups.setdefault(redact(row.fail_reason or "unknown (no reason was recorded)"), []).append(row.number)
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[1][0]))


# --- across seeds -------------------------------------------------------------------------------


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
    """One plain sentence on whether the chosen settings beat the baseline by more than noise.

    The verdict compares seed by seed: every setting runs with the same seeds, so the noise they
    share cancels; a mean difference within two standard errors of the per-seed differences is
    within noise.
    """
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

"""The report: the answer first (what to use, the verdict against the baseline with its
intervals, the warnings, what else would help), then the evidence and how to replay it, as
report.md, a self-contained report.html, its plots and the terminal summary.

It only renders. What is recommended is decided in regsweep.results, and the end of a study
(regsweep.sweep.end_study) gathers the facts, registers the model and logs what is written here.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import shlex
import webbrowser
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.ticker
import numpy as np
import optuna
from hydra.core.override_parser.overrides_parser import OverridesParser
from markdown_it import MarkdownIt
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf

from regsweep import progress, results
from regsweep.config import config_groups
from regsweep.metrics import GAP, TEST_ACCURACY, TEST_GAP, TEST_IMAGES, VAL_ACCURACY
from regsweep.results import (
    BASELINE,
    Answer,
    CurvePoint,
    Summary,
    TrialRow,
    baseline_row,
    caveats,
    complete,
    failures_by_reason,
    in_rule_order,
    pareto_front,
    pruned_by_level,
)

log = logging.getLogger(__name__)


def replay_command(overrides: list[str]) -> str:
    """A shell line that replays the settings: each override quoted for POSIX shells."""
    return "regsweep train " + " ".join(shlex.quote(o) for o in overrides)


def best_config(overrides: list[str], origin: str) -> str:
    """The overrides as a Hydra `experiment` config (`# @package _global_`)."""
    parser = OverridesParser.create()
    group_choices, values = [], OmegaConf.create()
    groups = config_groups()  # an override of a config group becomes a defaults-list entry
    for text in overrides:
        override = parser.parse_override(text)
        key = override.key_or_group
        if key in groups:
            group_choices.append(f"  - override /{key}: {override.value()}")
        else:
            OmegaConf.update(values, key, override.value(), force_add=True)
    header = f"# @package _global_\n# Recommended by regsweep: {origin}.\n"
    defaults = "defaults:\n" + "\n".join(group_choices) + "\n" if group_choices else ""
    return header + defaults + OmegaConf.to_yaml(values)


# --- figures ----------------------------------------------------------------------------------


def front_figure(rows: list[TrialRow], front: list[TrialRow], answer: Answer | None, epsilon: float):
    """val_accuracy against gap for every trial, the front, ε, the baseline and the answer."""
    figure = Figure(figsize=(6.5, 4.8))  # matplotlib's object API: no pyplot state, no backend switch
    axis = figure.subplots()
    done = complete(rows)
    axis.scatter([r.gap for r in done], [r.val_accuracy for r in done], color="lightgrey", label="trials")
    axis.plot([r.gap for r in front], [r.val_accuracy for r in front], "o-", color="tab:blue", label="front")
    axis.axvline(epsilon, color="tab:red", linestyle="--", label=f"gap = ε ({epsilon:g})")
    chosen = answer.row if answer is not None else None
    if chosen is not None:  # a hollow star under the baseline's square: neither hides the other
        if answer.verdict is None:
            label = "the answer (single trials)"
        elif answer.keep_baseline:
            label = "the answer: keep the baseline"
        else:
            label = "the answer (after re-evaluation)"
        star = {"marker": "*", "s": 380, "facecolors": "none", "edgecolors": "tab:orange", "linewidths": 2}
        axis.scatter([chosen.gap], [chosen.val_accuracy], **star, zorder=3, label=label)
    baseline = baseline_row(rows)
    if baseline is not None:
        axis.scatter(
            [baseline.gap],
            [baseline.val_accuracy],
            marker="s",
            s=60,
            color="black",
            zorder=4,
            label=f"baseline (trial #{baseline.number})",
        )
    axis.set_xlabel("gap = train_accuracy − val_accuracy (inference mode)")
    axis.set_ylabel("val_accuracy")
    axis.set_title("trade-off: validation accuracy vs gap, one run per trial")
    if answer is not None and answer.verdict is not None:
        note = (
            f"The answer is chosen by re-evaluation: {len(answer.chosen.runs)} seeds each, judged on the test split "
            f"({answer.verdict.case})."
        )
    else:
        note = "The answer is chosen from these single runs: not yet re-evaluated on a test split."
    figure.text(0.01, 0.01, note, fontsize="small", color="dimgray")
    axis.legend(fontsize="small")
    figure.tight_layout(rect=(0, 0.04, 1, 1))
    return figure


def effects_figure(rows: list[TrialRow], space: dict[str, optuna.distributions.BaseDistribution], epsilon: float):
    """val_accuracy and gap against each knob; discrete levels jittered and translucent, the
    ε line on the gap row, the baseline trial marked."""
    keys = list(space)
    done = complete(rows)
    baseline = baseline_row(rows)
    jitter = np.random.default_rng(0)  # the same picture every time
    figure = Figure(figsize=(3.6 * len(keys), 6.4))
    axes = figure.subplots(2, len(keys), squeeze=False)
    for column, key in enumerate(keys):
        distribution = space[key]
        categorical = isinstance(distribution, optuna.distributions.CategoricalDistribution)
        levels = _levels(distribution)
        for row_index, metric in enumerate((VAL_ACCURACY, GAP)):
            axis = axes[row_index][column]
            points = [(r.params[key], getattr(r, metric), r is baseline) for r in done if key in r.params]
            if categorical:
                labels = [str(c) for c in distribution.choices]
                position = {label: index for index, label in enumerate(labels)}
                xs = [position[str(x)] for x, _, _ in points]
                axis.set_xticks(range(len(labels)), labels, rotation=30)
            else:
                xs = [x for x, _, _ in points]
                if getattr(distribution, "log", False):
                    axis.set_xscale("log")
                    axis.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # labels would overlap
            if levels is not None:  # few levels: spread the points sideways so repeats show
                width = 0.15 * (levels[1] - levels[0] if len(levels) > 1 else 1)
                xs = [x + width * jitter.uniform(-1, 1) for x in xs]
            axis.scatter(
                xs,
                [y for _, y, _ in points],
                alpha=0.55,
                edgecolors="none",
                color="tab:blue" if metric == VAL_ACCURACY else "tab:red",
            )
            marked = [(x, y) for x, (_, y, is_baseline) in zip(xs, points) if is_baseline]
            if marked:
                axis.scatter(*zip(*marked), marker="s", s=50, color="black", label="baseline")
            if metric == GAP:
                axis.axhline(epsilon, color="tab:red", linestyle="--", linewidth=1, label=f"ε = {epsilon:g}")
            axis.set_xlabel(key)
            axis.set_ylabel(metric)
            if column == 0 and axis.get_legend_handles_labels()[0]:
                axis.legend(fontsize="x-small", loc="best")
    figure.suptitle("effect of each knob (complete trials, one run each)")
    figure.tight_layout()
    return figure


def _levels(distribution: optuna.distributions.BaseDistribution) -> list[float] | None:
    """The values of a knob with a handful of discrete levels (categorical: their positions)."""
    if isinstance(distribution, optuna.distributions.CategoricalDistribution):
        return list(range(len(distribution.choices)))
    step = getattr(distribution, "step", None)
    if step is None or (distribution.high - distribution.low) / step > 12:
        return None
    return [distribution.low + i * step for i in range(round((distribution.high - distribution.low) / step) + 1)]


def curve_figure(curves: dict[str, list[CurvePoint]]):
    """Validation accuracy against training-set size (log scale, ticks at the sizes measured)."""
    figure = Figure(figsize=(6.5, 4.5))
    axis = figure.subplots()
    sizes = sorted({p.train_images for points in curves.values() for p in points})
    for label, points in curves.items():
        axis.errorbar(
            [p.train_images for p in points],
            [p.val_accuracy for p in points],
            yerr=[p.std for p in points],
            marker="o",
            capsize=3,
            label=label if label == BASELINE else f"trial {label}",
        )
    axis.set_xscale("log", base=2)
    axis.set_xticks(sizes, [str(size) for size in sizes])
    axis.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    axis.set_xlabel("training images")
    axis.set_ylabel("val_accuracy (mean ± std over seeds)")
    axis.set_title("would more data help? learning curve")
    axis.legend(fontsize="small")
    figure.tight_layout()
    return figure


# --- the report -------------------------------------------------------------------------------


def _fmt(value) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _table(header: list[str], body: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in body]
    return "\n".join(lines)


@dataclass
class Facts:
    """What every part of the report is rendered from, gathered once (regsweep.sweep.end_study)."""

    name: str
    settings: DictConfig
    space: dict[str, optuna.distributions.BaseDistribution]  # the searched knobs
    rows: list[TrialRow]
    answer: Answer | None
    single: TrialRow | None  # the rule on single trials
    summaries: list[Summary]  # every re-evaluation run, per setting
    curves: dict[str, list[CurvePoint]]
    shared: list[list[str]]  # images in more than one split
    baseline_overrides: list[str]  # the re-evaluation baseline as overrides
    importance: dict[str, dict[str, float]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)  # trials by state
    edges: list[str] = field(default_factory=list)  # the answer's knobs at the edge of their range
    replay: str = ""
    experiment: str = ""
    reevaluate_command: str = ""  # `regsweep report <study> --reevaluate`, to settle an open verdict
    registered: dict[str, tuple[str, dict]] = field(default_factory=dict)  # alias → (version, run)
    not_registered: str = ""  # why registering failed, when it did
    compare: str = ""  # MLflow's comparison page of the re-evaluated settings' runs (regsweep.ui.compare_page)
    in_progress: str = ""  # "in progress: 1 complete, 1 running, 2 to go": the answer is provisional

    @property
    def keys(self) -> list[str]:
        return list(self.space)


def _knobs(facts: Facts, row: TrialRow | None) -> str:
    """The searched knobs' values of a trial; the baseline's overrides where it has no trial row
    (its trial was stopped and never completed)."""
    if row is None:
        return " ".join(facts.baseline_overrides)
    return " ".join(f"{key}={_fmt(row.params.get(key, '—'))}" for key in facts.keys)


def answer_lines(facts: Facts) -> list[str]:
    """The answer in a few plain lines, markdown-marked: what to use, the verdict against the
    baseline with its intervals, the seeds behind it, what would settle an open one, the
    warnings and what else would help."""
    answer = facts.answer
    provisional = (
        [f"**Provisional**: the study is {facts.in_progress}, so this answer can still change."]
        if facts.in_progress
        else []
    )
    if answer is None:
        return [*provisional, results.missing_baseline(facts.rows) or "No trial has completed yet."]
    return provisional + _answer_lines(facts, answer)


def _answer_lines(facts: Facts, answer: Answer) -> list[str]:
    verdict = answer.verdict
    baseline = " ".join(facts.baseline_overrides)
    if verdict is None:  # single trials only
        if answer.keep_baseline:
            trial = f"trial #{answer.row.number}: " if answer.row is not None else ""
            lines = [
                f"**Keep your baseline** ({trial}{_knobs(facts, answer.row) if answer.row else baseline}, everything "
                "else as given): no searched setting matched its validation accuracy while overfitting less."
            ]
        else:
            lines = [f"**Use trial {answer.label}**: {_knobs(facts, answer.row)}."]
        lines.append(f"From one run each: val_accuracy {answer.row.val_accuracy:.4f}, gap {answer.row.gap:.4f}.")
    else:
        chosen = results.setting_name(answer.chosen.label)
        row = {f"#{r.number}": r for r in facts.rows}.get(answer.chosen.label)
        its = f" ({_knobs(facts, row)})" if row is not None else ""
        kept = f"**Keep your baseline** ({baseline}, everything else as given)"
        lines = [
            {
                results.NO_EFFECT: f"{kept}: these knobs don't help on this data.",
                results.TRADE_OFF: f"{kept}: {chosen}{its}, the best the search found, costs test accuracy.",
                results.CANT_TELL: f"{kept} for now: can't tell yet whether {chosen}{its} helps.",
            }.get(verdict.case, f"**Use {chosen}**: {_knobs(facts, answer.row)}.")
        ]
        images = answer.baseline.runs[0].get(TEST_IMAGES)
        where = f"on the test split ({images} images)" if images else "on the test split"
        line = f"**Verdict {where}, wrong at most 5 % of the time:** {verdict.sentence}"
        if verdict.settle:
            line += f" To settle it: {verdict.settle}"
            if verdict.seeds_needed and facts.reevaluate_command:
                line += f": `{facts.reevaluate_command} sweep.reevaluate.max_seeds={verdict.seeds_needed}`"
            line += "."
        lines.append(line)
        lines.append(f"**Seeds:** {seeds_line(answer)}.")
    lines += [f"**Edge of the search space:** {edge}" for edge in facts.edges]
    lines += [f"**Warning:** {warning}" for warning in answer.warnings]
    if answer.more_data:
        lines.append(f"**What else would help:** {answer.more_data}")
    return lines


def seeds_line(answer: Answer) -> str:
    """How many seeds each setting got, in the race and in the confirmation, why each candidate
    is not the choice, and why the re-evaluation stopped."""
    state = answer.rounds
    confirmed = len(state.chosen.runs) if state.chosen else 0
    parts = [f"the baseline {len(state.baseline.runs) if state.baseline else 0}"]
    for entrant in state.race:
        name = results.setting_name(entrant.label)
        if not entrant.left:
            raced = f"{len(entrant.runs.runs)} in the race on validation, then " if entrant.runs.runs else ""
            parts.append(f"{name} {raced}{confirmed} on the test split (the choice)")
        else:
            parts.append(f"{name} {len(entrant.runs.runs)} ({entrant.left})")
    why = {
        results.DECIDED: "the verdict was decided",
        results.AT_MAX_SEEDS: f"it reached sweep.reevaluate.max_seeds ({state.design.max_seeds})",
        results.ONLY_IMAGES: "more seeds could not settle it (the test split is too small)",
    }.get(state.reason, state.reason or "a round is unfinished")
    looks = f"{state.looks} look{'s' * (state.looks != 1)}"
    return f"{'; '.join(parts)}. It stopped after {looks} because {why}"


def levels_line(state: results.Rounds) -> str:
    """How the verdict's intervals are drawn, and what their levels answer for."""
    design, looks = state.design, state.design.looks()
    accuracy = _listed([_level(design.alpha_at(i, results.ACCURACY_SHARE)) for i in range(len(looks))])
    gap = _listed([_level(design.alpha_at(i, 1 - results.ACCURACY_SHARE)) for i in range(len(looks))])
    where = (
        f"looks after {_listed([str(n) for n in looks])} seeds" if len(looks) > 1 else f"look after {looks[0]} seeds"
    )
    if design.candidates > 1:
        chosen = (
            f"The choice was made on the same seeds that judge it, so the levels answer for the "
            f"{design.candidates} settings it could have fallen on."
        )
    else:
        chosen = (
            "The choice was made on validation accuracy in the race, and the verdict judges it on seeds it never "
            "saw, so it is one pre-specified comparison, whatever the number of candidates."
        )
    return (
        "Intervals: a t interval with Welch–Satterthwaite degrees of freedom over the seed-to-seed spread of the "
        "paired differences and the per-image differences on the test images, never narrower than the paired t "
        f"interval over the seeds alone. {chosen} Test accuracy is drawn at {accuracy} and the test gap at {gap} "
        f"at the {where} (group-sequential, O'Brien–Fleming-type alpha spending), so that a verdict adopts "
        "a setting that is no better at most 2.5 % of the time and claims anything false at most 5 %, however "
        "many looks it takes."
    )


def markdown(facts: Facts) -> str:
    s, rows, keys, counts = facts.settings, facts.rows, facts.keys, facts.counts
    out = [f"# regsweep report — study `{facts.name}`", "", "## The answer", ""]
    out += [f"- {line}" for line in answer_lines(facts)]
    if facts.compare:
        out.append(f"- **Side by side in MLflow:** [{COMPARE_WHAT}]({facts.compare}){COMPARE_NOTE}")
    out.append("")
    if facts.replay:
        out += ["Replay:", "", "```bash", facts.replay, *[facts.experiment] * bool(facts.experiment), "```", ""]
    registry = registry_lines(facts)
    out += ([*registry, ""]) if registry else []
    out += [
        f"How it was chosen: among the re-evaluated settings within noise of the highest validation accuracy, the "
        f"smallest gap (gap ≤ ε = {s.epsilon:g} preferred); adopted only if, on the test split, it is more accurate "
        f"than the baseline, or as accurate (within ±{facts.settings.reevaluate.get('margin', results.MARGIN):g}) "
        "and less overfit, by intervals that hold together 95 % of the time. Search objective: "
        + {
            "accuracy": "maximize val_accuracy",
            "constrained": "maximize val_accuracy subject to gap ≤ ε",
            "pareto": "maximize val_accuracy and minimize gap (Pareto)",
        }[s.objective]
        + f". Trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed"
        + (f", {counts['RUNNING']} running" if counts["RUNNING"] else "")
        + ".",
        "",
    ]
    if facts.summaries:
        out += reevaluation_markdown(facts)
    if facts.curves:
        out += [
            "## Would more data help?",
            "",
            "![learning curve](learning_curve.png)",
            "",
            _table(
                ["setting", "training images", "val_accuracy (mean)", "std over seeds"],
                [
                    [results.setting_name(label), p.train_images, p.val_accuracy, p.std]
                    for label, points in facts.curves.items()
                    for p in points
                ],
            ),
            "",
        ]
    single = facts.single
    out += ["## Single-trial choice", ""]
    if single is None:
        out += ["No trial has completed yet.", ""]
    else:
        out += [f"**{note}**\n" for note in caveats(rows, single, s.epsilon)]
        out += [_table(["knob", "value"], [[k, single.params.get(k, "—")] for k in keys]), ""]
        out += [
            f"Trial #{single.number}: val_accuracy **{_fmt(single.val_accuracy)}**, gap **{_fmt(single.gap)}**, "
            f"train_accuracy {_fmt(single.train_accuracy)} (MLflow run `{single.run_id}`).",
            "",
        ]
        baseline = baseline_row(rows)
        if baseline is not None:
            out += [
                f"Baseline (the config as given, trial #{baseline.number}): "
                f"val_accuracy {_fmt(baseline.val_accuracy)}, gap {_fmt(baseline.gap)}, "
                f"train_accuracy {_fmt(baseline.train_accuracy)}.",
                "",
            ]
    if counts["PRUNED"]:
        out += pruning_markdown(rows, keys)

    def knobs(row: TrialRow) -> list:
        return [row.params.get(k, "—") for k in keys]

    out += ["## Trade-off front (non-dominated in val_accuracy vs gap)", ""]
    out += [
        _table(
            ["trial", "val_accuracy", "gap", *keys],
            [[r.number, r.val_accuracy, r.gap, *knobs(r)] for r in pareto_front(rows)],
        ),
        "",
    ]
    out += ["![trade-off front](front.png)", ""]
    out += ["## Parameter importances", ""]
    importance = facts.importance
    if importance:
        out += [
            _table(
                ["knob", "for val_accuracy", "for gap"],
                [[k, importance[VAL_ACCURACY].get(k, math.nan), importance[GAP].get(k, math.nan)] for k in keys],
            ),
            "",
        ]
    else:
        out += ["Not enough complete trials to estimate importances.", ""]
    out += ["## Effect of each knob", "", "![effects](effects.png)", ""]
    top = in_rule_order(rows, s.epsilon)[:10]
    out += [
        "## Top trials, in the rule's order",
        "",
        _table(
            ["trial", "val_accuracy", "gap", "train_accuracy", *keys],
            [[r.number, r.val_accuracy, r.gap, r.train_accuracy, *knobs(r)] for r in top],
        ),
        "",
    ]
    failures = failures_by_reason(rows)
    if failures:
        out += [
            "## Failed trials, by reason",
            "",
            _table(
                ["reason", "count", "trials"],
                [[reason, len(numbers), ", ".join(f"#{n}" for n in numbers)] for reason, numbers in failures],
            ),
            "",
        ]
    if facts.shared:
        out += ["## Images in more than one split", "", "Same content, found by hashing every file:", ""]
        out += [f"- {' = '.join(group)}" for group in facts.shared[:50]]
        out += [f"- … and {len(facts.shared) - 50} more" if len(facts.shared) > 50 else "", ""]
    return "\n".join(out)


def pruning_markdown(rows: list[TrialRow], keys: list[str]) -> list[str]:
    """Pruned trials by knob level: pruning judges early val_accuracy, and regularized trials
    learn more slowly, so it can fall on exactly the settings a study is about."""
    body = [
        [key, level, done, pruned, f"{100 * pruned / (done + pruned):.0f} %"]
        for key in keys
        for level, done, pruned in pruned_by_level(rows, key)
        if done + pruned
    ]
    return [
        "## Pruned trials, by knob level",
        "",
        "Pruning stops a trial whose early val_accuracy trails the median; regularized settings learn more "
        "slowly, so a level pruned far more often than the others was explored less "
        "(sweep.pruner.name=none turns pruning off).",
        "",
        _table(["knob", "level", "complete", "pruned", "pruned share"], body),
        "",
    ]


def terminal_summary(facts: Facts) -> str:
    counts = facts.counts
    lines = [
        f"\nStudy '{facts.name}': {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed"
    ]
    lines += [f"  failed {len(numbers)}x: {reason}" for reason, numbers in failures_by_reason(facts.rows)]
    lines += ["", "The answer"] + [f"  {line.replace('**', '').replace('`', '')}" for line in answer_lines(facts)]
    if facts.compare:  # the address last, alone at the end of its line, for a terminal to open
        lines.append(f"  Side by side in MLflow ({COMPARE_SHORT}): {facts.compare}")
    if facts.summaries:
        lines += ["", "Re-evaluation (mean ± std over seeds):"]
        lines += [
            f"  {results.setting_name(s.label):13s} {len(s.runs):2d} seeds  test {s.pm(TEST_ACCURACY, 3)}  "
            f"val {s.pm(VAL_ACCURACY, 3)}  test gap {s.pm(TEST_GAP, 3)}"
            for s in facts.summaries
        ]
    top = in_rule_order(facts.rows, facts.settings.epsilon)[:5]
    if top:
        lines.append("Top trials, in the rule's order:   #  val_acc   gap    knobs")
        for r in top:
            knobs = " ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in r.params.items())
            lines.append(f"           {r.number:4d}  {r.val_accuracy:.4f}  {r.gap:+.4f}  {knobs}")
    if facts.replay:
        lines += ["Replay:", f"  {facts.replay}"] + [f"  {facts.experiment}"] * bool(facts.experiment)
    if not facts.not_registered:  # a registration that failed ends the command with that sentence
        lines += [line.replace("`", "") for line in registry_lines(facts)]
    return "\n".join(lines)


def reevaluation_markdown(facts: Facts) -> list[str]:
    """The re-evaluation: each setting's seeds and mean ± std, then every candidate against the
    baseline as intervals, and how they are drawn."""
    answer = facts.answer
    state = answer.rounds if answer is not None else None
    stable = answer.chosen if answer is not None else None
    single = facts.single
    out = [
        "## Re-evaluation on the test split",
        "",
        "Each setting re-trained with seeds no trial used and scored once on the test split, which no trial ever "
        "saw: the candidates first race on validation accuracy (after a screening, when sweep.reevaluate.screen "
        "exceeds top_k: one seed each for the first trials in the rule's order, the top_k best over two runs racing), "
        "then the choice and the baseline get seeds of their "
        "own, the same values for both, on which the verdict is read. Here the test gap is train_accuracy − "
        "test_accuracy. Mean ± std over all of a setting's seeds.",
        "",
    ]

    def name(summary):
        if summary.label == BASELINE:
            return f"baseline ({facts.settings.reevaluate.baseline})"
        notes = [
            note
            for note, label in (
                ("the race's choice", stable.label if stable else None),
                ("single-trial choice", f"#{single.number}" if single else None),
            )
            if label == summary.label
        ]
        return f"trial {summary.label}" + (f" ({', '.join(notes)})" if notes else "")

    out += [
        _table(
            ["setting", "seeds", "test_accuracy", "val_accuracy", "gap (val)", "test gap"],
            [
                [
                    name(s),
                    len(s.runs),
                    s.pm(TEST_ACCURACY, 4),
                    s.pm(VAL_ACCURACY, 4),
                    s.pm(GAP, 4),
                    s.pm(TEST_GAP, 4),
                ]
                for s in facts.summaries
            ],
        ),
        "",
    ]
    if state is None or state.verdict is None:
        return out
    if len(state.race) > 1:
        out += [
            "The race on validation (the choice's seeds and the others', the screening's seed included; validation "
            "accuracy only):",
            "",
        ]
        out += [
            _table(
                ["setting", "race seeds", "val_accuracy", "outcome"],
                [
                    [
                        name(entrant.runs),
                        len(entrant.runs.runs),
                        entrant.runs.pm(VAL_ACCURACY, 4) if entrant.runs.runs else "",
                        entrant.left or "the choice",
                    ]
                    for entrant in state.race
                ],
            ),
            "",
        ]
    verdict = state.verdict
    out += [
        "The choice against the baseline on the test split (paired by seed and by image, seeds the choice never saw):",
        "",
        _table(
            ["setting", "paired seeds", "test accuracy, difference", "test gap, difference"],
            [
                [
                    name(state.chosen),
                    len(state.chosen.runs),
                    results.with_interval(verdict.accuracy, verdict.alpha),
                    results.with_interval(verdict.gap, verdict.gap_alpha),
                ]
            ],
        ),
        "",
        f"{levels_line(state)} Seeds: {seeds_line(answer)}.",
        "",
    ]
    return out


def _level(alpha: float) -> str:
    """An interval's level, with the decimals that tell it from 100 %: 96.02 %, 99.9962 %."""
    if alpha < 1e-5:
        return "over 99.999 %"
    digits = min(4, max(2, math.ceil(-math.log10(100 * alpha)) + 1))
    return f"{100 * (1 - alpha):.{digits}f} %"


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


ALIASES = ("recommended", "baseline")

COMPARE_WHAT = "the baseline and the re-evaluated settings: knobs, val and test accuracy, gaps"
COMPARE_NOTE = ", one run a setting (the seed that stands for it in the registry); a local store needs `regsweep ui`"
COMPARE_SHORT = "knobs, val and test accuracy, gaps; a local store needs regsweep ui"


def registry_lines(facts: Facts) -> list[str]:
    """Where the answer's model is, and how to load it anywhere."""
    if facts.not_registered:
        return [f"The model was not registered: {facts.not_registered}"]
    if "recommended" not in facts.registered:
        return []
    version, run = facts.registered["recommended"]
    baseline_version, _ = facts.registered["baseline"]
    uri = f"models:/{facts.name}@recommended"
    return [
        f"The answer's model is registered as `{uri}` (version {version}: run `{run['run_id']}`, seed {run['seed']}; "
        f"the baseline is `@baseline`, version {baseline_version}). Load it anywhere with "
        f'`mlflow.pyfunc.load_model("{uri}")`: raw 0–255 RGB images of any size in, one probability per class out.'
    ]


def render(facts: Facts, out_dir: Path) -> Path:
    """Writes report.md, report.html and their plots into out_dir; returns report.md's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = facts.rows
    figures = {"front.png": front_figure(rows, pareto_front(rows), facts.answer, facts.settings.epsilon)}
    if facts.space and complete(rows):
        figures["effects.png"] = effects_figure(rows, facts.space, facts.settings.epsilon)
    if facts.curves:
        figures["learning_curve.png"] = curve_figure(facts.curves)
    for name, figure in figures.items():
        figure.savefig(out_dir / name, dpi=110)
    text = markdown(facts)
    (out_dir / "report.md").write_text(text)
    (out_dir / "report.html").write_text(html_report(text, out_dir, f"regsweep report — {facts.name}"))
    return out_dir / "report.md"


def html_report(markdown_text: str, folder: Path, title: str) -> str:
    """report.md as one self-contained HTML file: the plots are embedded as data URIs."""
    body = MarkdownIt("commonmark").enable("table").render(markdown_text)
    for image in ("front.png", "effects.png", "learning_curve.png"):
        if (folder / image).is_file():
            encoded = base64.b64encode((folder / image).read_bytes()).decode()
            body = body.replace(f'src="{image}"', f'src="data:image/png;base64,{encoded}"')
    style = (
        "body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.4}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}"
        "img{max-width:100%}pre{background:#f4f4f4;padding:.5rem;overflow-x:auto}"
    )
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
        f"<style>{style}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )


def open_in_browser(path: Path) -> None:
    try:
        webbrowser.get()
    except webbrowser.Error:
        log.log(progress.ANSWER, f"No browser found here; open {path} on a machine with one.")
        return
    webbrowser.open(path.resolve().as_uri())

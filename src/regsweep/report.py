"""`regsweep report`: the answer first (what to use, the verdict against the baseline, the
warnings, what else would help), then the evidence and how to replay it, as report.md, a
self-contained report.html, the terminal summary and the parent run's artifacts.

What is recommended is decided in regsweep.results; this module only shows it. It trains
nothing, except on `regsweep report --reevaluate` (regsweep.reevaluate).
"""

from __future__ import annotations

import base64
import html
import math
import shlex
import warnings
import webbrowser
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import mlflow  # noqa: E402
import optuna  # noqa: E402
from hydra.core.override_parser.overrides_parser import OverridesParser  # noqa: E402
from markdown_it import MarkdownIt  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

from regsweep import reevaluate, space, study, tracking  # noqa: E402
from regsweep.config import RegsweepError, compose, compose_study, config_groups  # noqa: E402
from regsweep.results import (BASELINE, Answer, CurvePoint, Summary, TrialRow, answer, baseline_row,  # noqa: E402
                              caveats, complete, failures_by_reason, in_rule_order, pareto_front, pruned_by_level,
                              recommend, representative_run)
from regsweep.worker import import_tensorflow_quietly  # noqa: E402


def importances(optuna_study: optuna.Study) -> dict[str, dict[str, float]]:
    """Optuna's parameter importances for val_accuracy and for gap ({} when too few trials).

    Optuna's default evaluator (PED-ANOVA) explains *low* target values: val_accuracy is negated.
    """
    signs = {"val_accuracy": -1.0, "gap": 1.0}
    result = {}
    for metric, sign in signs.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the "low target values" note: handled by sign
                result[metric] = optuna.importance.get_param_importances(
                    optuna_study, target=lambda t, m=metric, s=sign: s * t.user_attrs.get(m, math.nan)
                )
        except (ValueError, RuntimeError, ZeroDivisionError):
            return {}
    return result


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


def front_figure(rows: list[TrialRow], front: list[TrialRow], chosen: TrialRow | None, epsilon: float):
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    done = complete(rows)
    axis.scatter([r.gap for r in done], [r.val_accuracy for r in done], color="lightgrey", label="trials")
    axis.plot([r.gap for r in front], [r.val_accuracy for r in front], "o-", color="tab:blue", label="front")
    axis.axvline(epsilon, color="tab:red", linestyle="--", label=f"gap = ε ({epsilon:g})")
    baseline = baseline_row(rows)
    if baseline is not None:
        axis.scatter([baseline.gap], [baseline.val_accuracy], marker="s", s=90, color="black", label="baseline")
    if chosen is not None:
        axis.scatter([chosen.gap], [chosen.val_accuracy], marker="*", s=260, color="tab:orange", label="recommended")
    axis.set_xlabel("gap = train_accuracy − val_accuracy (inference mode)")
    axis.set_ylabel("val_accuracy")
    axis.set_title("trade-off: validation accuracy vs gap")
    axis.legend(fontsize="small")
    figure.tight_layout()
    return figure


def effects_figure(rows: list[TrialRow], space: dict[str, optuna.distributions.BaseDistribution]):
    keys = list(space)
    done = complete(rows)
    figure, axes = plt.subplots(2, len(keys), figsize=(3.6 * len(keys), 6), squeeze=False)
    for column, key in enumerate(keys):
        distribution = space[key]
        categorical = isinstance(distribution, optuna.distributions.CategoricalDistribution)
        for row_index, metric in enumerate(("val_accuracy", "gap")):
            axis = axes[row_index][column]
            points = [(r.params[key], getattr(r, metric)) for r in done if key in r.params]
            if categorical:
                labels = [str(c) for c in distribution.choices]
                xs = [labels.index(str(x)) for x, _ in points]
                axis.set_xticks(range(len(labels)), labels, rotation=30)
            else:
                xs = [x for x, _ in points]
                if getattr(distribution, "log", False):
                    axis.set_xscale("log")
            axis.scatter(xs, [y for _, y in points], color="tab:blue" if metric == "val_accuracy" else "tab:red")
            axis.set_xlabel(key)
            axis.set_ylabel(metric)
    figure.suptitle("effect of each knob (complete trials)")
    figure.tight_layout()
    return figure


def curve_figure(curves: dict[str, list[CurvePoint]]):
    """Validation accuracy against training-set size (log scale), one line per setting."""
    figure, axis = plt.subplots(figsize=(6.5, 4.5))
    for label, points in curves.items():
        axis.errorbar([p.train_images for p in points], [p.val_accuracy for p in points], yerr=[p.std for p in points],
                      marker="o", capsize=3, label=label if label == BASELINE else f"trial {label}")
    axis.set_xscale("log", base=2)
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
    """What every part of the report is rendered from, gathered once."""

    name: str
    settings: DictConfig
    keys: list[str]  # the searched knobs
    rows: list[TrialRow]
    answer: Answer | None
    single: TrialRow | None  # the rule on single trials
    summaries: list[Summary]
    curves: dict[str, list[CurvePoint]]
    shared: list[list[str]]  # images in more than one split
    baseline_overrides: list[str]  # the re-evaluation baseline as overrides
    replay: str = ""
    experiment: str = ""
    registered: dict[str, tuple[str, dict]] = field(default_factory=dict)  # alias → (version, run)
    not_registered: str = ""  # why registering failed, when it did


def answer_lines(facts: Facts) -> list[str]:
    """The answer in 3–6 plain lines, markdown-marked: what to use, its test result against the
    baseline, the verdict, the warnings and what else would help."""
    answer = facts.answer
    if answer is None:
        return ["No trial has completed yet."]
    if answer.row is not None and (not answer.keep_baseline or answer.verdict is None):
        knobs = " ".join(f"{key}={_fmt(answer.row.params.get(key, '—'))}" for key in facts.keys)
    else:
        knobs = " ".join(facts.baseline_overrides)
    if answer.keep_baseline:
        why = ("these knobs don't help on this data" if answer.verdict is not None
               else "no searched setting matched its validation accuracy while overfitting less")
        trial = f"trial #{answer.row.number}: " if answer.row is not None and answer.verdict is None else ""
        lines = [f"**Keep your baseline** ({trial}{knobs}, everything else as given): {why}."]
    else:
        lines = [f"**Use trial {answer.label}**: {knobs}."]
    verdict = answer.verdict
    if verdict is not None:
        images = answer.baseline.runs[0].get("test_images")
        where = f"on the test split ({images} images)" if images else "on the test split"
        versus = f", {_setting_name(answer.chosen.label)} against the baseline" if answer.chosen.label != BASELINE else ""
        line = f"**Verdict {where}{versus}:** {verdict.sentence}"
        if verdict.settle:
            line += f" To settle it: {verdict.settle}."
        lines.append(line)
    elif answer.row is not None:
        lines.append(f"From one run each: val_accuracy {answer.row.val_accuracy:.4f}, gap {answer.row.gap:.4f}.")
    lines += [f"**Warning:** {warning}" for warning in answer.warnings]
    if answer.more_data:
        lines.append(f"**What else would help:** {answer.more_data}")
    return lines


def _setting_name(label: str) -> str:
    return "the baseline" if label == BASELINE else f"trial {label}"


def markdown(facts: Facts, importance: dict, counts: dict[str, int]) -> str:
    s, rows, keys = facts.settings, facts.rows, facts.keys
    out = [f"# regsweep report — study `{facts.name}`", "", "## The answer", ""]
    out += [f"- {line}" for line in answer_lines(facts)] + [""]
    if facts.replay:
        out += ["Replay:", "", "```bash", facts.replay, facts.experiment, "```", ""]
    registry = registry_lines(facts)
    out += (registry + [""]) if registry else []
    out += [f"How it was chosen: among settings within noise of the highest validation accuracy, the smallest gap "
            f"(gap ≤ ε = {s.epsilon:g} preferred); adopted only if, on the test split, it is more accurate than the "
            "baseline, or as accurate and less overfit, beyond noise. Search objective: "
            + {"accuracy": "maximize val_accuracy", "constrained": "maximize val_accuracy subject to gap ≤ ε",
               "pareto": "maximize val_accuracy and minimize gap (Pareto)"}[s.objective]
            + f". Trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed"
            + (f", {counts['RUNNING']} running" if counts["RUNNING"] else "") + ".", ""]
    if facts.summaries:
        out += reevaluation_markdown(facts)
    if facts.curves:
        out += ["## Would more data help?", "", "![learning curve](learning_curve.png)", "",
                _table(["setting", "training images", "val_accuracy (mean)", "std over seeds"],
                       [[_setting_name(label), p.train_images, p.val_accuracy, p.std]
                        for label, points in facts.curves.items() for p in points]), ""]
    single = facts.single
    out += ["## Single-trial choice", ""]
    if single is None:
        out += ["No trial has completed yet.", ""]
    else:
        out += [f"**{note}**\n" for note in caveats(rows, single, s.epsilon)]
        out += [_table(["knob", "value"], [[k, single.params.get(k, "—")] for k in keys]), ""]
        out += [f"Trial #{single.number}: val_accuracy **{_fmt(single.val_accuracy)}**, gap **{_fmt(single.gap)}**, "
                f"train_accuracy {_fmt(single.train_accuracy)} (MLflow run `{single.run_id}`).", ""]
        baseline = baseline_row(rows)
        if baseline is not None:
            out += [f"Baseline (the config as given, trial #{baseline.number}): val_accuracy {_fmt(baseline.val_accuracy)}, "
                    f"gap {_fmt(baseline.gap)}, train_accuracy {_fmt(baseline.train_accuracy)}.", ""]
    if counts["PRUNED"]:
        out += pruning_markdown(rows, keys)
    def knobs(row: TrialRow) -> list:
        return [row.params.get(k, "—") for k in keys]

    out += ["## Trade-off front (non-dominated in val_accuracy vs gap)", ""]
    out += [_table(["trial", "val_accuracy", "gap", *keys], [[r.number, r.val_accuracy, r.gap, *knobs(r)]
                                                           for r in pareto_front(rows)]), ""]
    out += ["![trade-off front](front.png)", ""]
    out += ["## Parameter importances", ""]
    if importance:
        out += [_table(["knob", "for val_accuracy", "for gap"],
                       [[k, importance["val_accuracy"].get(k, math.nan), importance["gap"].get(k, math.nan)] for k in keys]), ""]
    else:
        out += ["Not enough complete trials to estimate importances.", ""]
    out += ["## Effect of each knob", "", "![effects](effects.png)", ""]
    top = in_rule_order(rows, s.epsilon)[:10]
    out += ["## Top trials, in the rule's order", "",
            _table(["trial", "val_accuracy", "gap", "train_accuracy", *keys],
                   [[r.number, r.val_accuracy, r.gap, r.train_accuracy, *knobs(r)] for r in top]), ""]
    failures = failures_by_reason(rows)
    if failures:
        out += ["## Failed trials, by reason", "", _table(["reason", "count", "trials"], [
            [reason, len(numbers), ", ".join(f"#{n}" for n in numbers)] for reason, numbers in failures]), ""]
    if facts.shared:
        out += ["## Images in more than one split", "", "Same content, found by hashing every file:", ""]
        out += [f"- {' = '.join(group)}" for group in facts.shared[:50]]
        out += [f"- … and {len(facts.shared) - 50} more" if len(facts.shared) > 50 else "", ""]
    return "\n".join(out)


def pruning_markdown(rows: list[TrialRow], keys: list[str]) -> list[str]:
    """Pruned trials by knob level: pruning judges early val_accuracy, and regularized trials
    learn more slowly, so it can fall on exactly the settings a study is about."""
    body = [[key, level, done, pruned, f"{100 * pruned / (done + pruned):.0f} %"]
            for key in keys for level, done, pruned in pruned_by_level(rows, key) if done + pruned]
    return ["## Pruned trials, by knob level", "",
            "Pruning stops a trial whose early val_accuracy trails the median; regularized settings learn more slowly, "
            "so a level pruned far more often than the others was explored less (sweep.pruner.name=none turns pruning off).", "",
            _table(["knob", "level", "complete", "pruned", "pruned share"], body), ""]


def terminal_summary(facts: Facts, counts: dict[str, int]) -> str:
    lines = [f"\nStudy '{facts.name}': {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed"]
    lines += [f"  failed {len(numbers)}x: {reason}" for reason, numbers in failures_by_reason(facts.rows)]
    lines += ["", "The answer"] + [f"  {line.replace('**', '')}" for line in answer_lines(facts)]
    if facts.summaries:
        lines += ["", "Re-evaluation (mean ± std over seeds):"]
        lines += [f"  {_setting_name(s.label):13s} test {s.pm('test_accuracy', 3)}  val {s.pm('val_accuracy', 3)}  "
                  f"test gap {s.pm('test_gap', 3)}" for s in facts.summaries]
    top = in_rule_order(facts.rows, facts.settings.epsilon)[:5]
    if top:
        lines.append("Top trials, in the rule's order:   #  val_acc   gap    knobs")
        for r in top:
            knobs = " ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in r.params.items())
            lines.append(f"           {r.number:4d}  {r.val_accuracy:.4f}  {r.gap:+.4f}  {knobs}")
    if facts.replay:
        lines += ["Replay:", f"  {facts.replay}", f"  {facts.experiment}"]
    lines += [line.replace("`", "") for line in registry_lines(facts)]
    return "\n".join(lines)


def reevaluation_markdown(facts: Facts) -> list[str]:
    """The re-evaluation table (mean ± std over seeds) and how its noise is measured."""
    stable = facts.answer.chosen if facts.answer is not None else None
    single = facts.single
    seeds = max(len(s.runs) for s in facts.summaries)
    out = ["## Re-evaluation on the test split", "",
           f"Each setting re-trained with {seeds} fresh seeds and scored once on the test split, which no "
           "trial ever saw. Here the test gap is train_accuracy − test_accuracy. Mean ± std over seeds. "
           "A difference is beyond noise when it exceeds two standard errors, from the seed-to-seed spread of the "
           "paired differences and the spread over the test images of the per-image differences.", ""]

    def name(summary):
        if summary.label == BASELINE:
            return f"baseline ({facts.settings.reevaluate.baseline})"
        notes = [note for note, label in (("chosen across seeds", stable.label if stable else None),
                                          ("single-trial choice", f"#{single.number}" if single else None))
                 if label == summary.label]
        return f"trial {summary.label}" + (f" ({', '.join(notes)})" if notes else "")

    out += [_table(["setting", "seeds", "test_accuracy", "val_accuracy", "gap (val)", "test gap"],
                   [[name(s), len(s.runs), s.pm("test_accuracy", 4), s.pm("val_accuracy", 4), s.pm("gap", 4),
                     s.pm("test_gap", 4)] for s in facts.summaries]), ""]
    return out


ALIASES = ("recommended", "baseline")


def register_models(name: str, found: Answer | None) -> dict[str, tuple[str, dict]]:
    """After re-evaluation, the answer's setting and the baseline, one seed each, as versions of
    the registered model `name` under the aliases `recommended` and `baseline`.

    A run already registered is not registered again, so a report with the same answer changes
    nothing, and one whose answer changed moves the alias to the new setting's version.
    """
    if found is None or found.verdict is None:
        return {}
    recommended = found.baseline if found.keep_baseline else found.chosen
    registered = {}
    for alias, summary in zip(ALIASES, (recommended, found.baseline)):
        run = representative_run(summary)
        version = tracking.registered_version(name, run["run_id"])
        if version is None:
            import_tensorflow_quietly()
            from regsweep import export  # lazy: TensorFlow, only to build a model not registered yet

            version = export.register(name, run["run_id"])
        tracking.set_alias(name, alias, version)
        registered[alias] = (version, run)
    return registered


def registry_lines(facts: Facts) -> list[str]:
    """Where the answer's model is, and how to load it anywhere."""
    if facts.not_registered:
        return [f"The model was not registered: {facts.not_registered}"]
    if "recommended" not in facts.registered:
        return []
    version, run = facts.registered["recommended"]
    baseline_version, _ = facts.registered["baseline"]
    uri = f"models:/{facts.name}@recommended"
    return [f"The answer's model is registered as `{uri}` (version {version}: run `{run['run_id']}`, seed {run['seed']}; "
            f"the baseline is `@baseline`, version {baseline_version}). Load it anywhere with "
            f"`mlflow.pyfunc.load_model(\"{uri}\")`: raw 0–255 RGB images of any size in, one probability per class out."]


def write_report(optuna_study: optuna.Study, cfg: DictConfig, parent_run_id: str | None, open_html: bool = False) -> Path:
    """Writes report.md, report.html, their plots and the best-settings config; logs them to the
    parent run. It trains nothing: re-evaluation runs already logged under the parent are read."""
    settings = study.study_settings(optuna_study, cfg)
    store = Path(cfg.paths.store)
    out_dir = store / "reports" / optuna_study.study_name
    out_dir.mkdir(parents=True, exist_ok=True)
    searched = space.parse_space(optuna_study.user_attrs.get("search_space", {}))
    rows = study.trial_rows(optuna_study)
    summaries = reevaluate.collect(cfg, parent_run_id)
    curves = reevaluate.collect_curve(cfg, parent_run_id, summaries)
    shared = optuna_study.user_attrs.get(study.SHARED_IMAGES_ATTR, [])
    base_overrides = list(optuna_study.user_attrs.get("base_overrides", []))
    baseline_overrides = space.baseline_overrides(settings.reevaluate.baseline)
    facts = Facts(optuna_study.study_name, settings, list(searched), rows,
                  answer(rows, summaries, settings.epsilon, curves, len(shared)), recommend(rows, settings.epsilon),
                  summaries, curves, shared, baseline_overrides)
    if facts.answer is not None:
        chosen = facts.answer.row
        if facts.answer.keep_baseline and (chosen is None or facts.answer.verdict is not None):
            overrides, origin = reevaluate.merge(base_overrides, baseline_overrides), "keep the baseline"
        else:
            overrides, origin = chosen.overrides, f"trial #{chosen.number} (MLflow run {chosen.run_id})"
        facts.replay = replay_command(overrides)
        config_dir = store / "configs" / "experiment"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / f"{optuna_study.study_name}_best.yaml").write_text(best_config(overrides, origin))
        config_flag = "" if str(cfg.paths.store) == "mlruns" else f"--config-dir {store / 'configs'} "
        facts.experiment = f"regsweep train {config_flag}+experiment={optuna_study.study_name}_best"
    if parent_run_id is not None:
        tracking.use_store(cfg.tracking)
        try:
            facts.registered = register_models(optuna_study.study_name, facts.answer)
        except RegsweepError as error:  # the report stands without it; it says why
            facts.not_registered = str(error)
    answer_row = facts.answer.row if facts.answer is not None else None
    front_figure(rows, pareto_front(rows), answer_row, settings.epsilon).savefig(out_dir / "front.png", dpi=110)
    if searched and complete(rows):
        effects_figure(rows, searched).savefig(out_dir / "effects.png", dpi=110)
    if curves:
        curve_figure(curves).savefig(out_dir / "learning_curve.png", dpi=110)
    plt.close("all")
    counts = {state: sum(r.state == state for r in rows) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    text = markdown(facts, importances(optuna_study), counts)
    (out_dir / "report.md").write_text(text)
    (out_dir / "report.html").write_text(html_report(text, out_dir, f"regsweep report — {optuna_study.study_name}"))
    if parent_run_id is not None:
        client = mlflow.MlflowClient()
        client.log_artifacts(parent_run_id, str(out_dir), artifact_path="report")
        if answer_row is not None:
            for metric in ("val_accuracy", "gap", "train_accuracy"):
                client.log_metric(parent_run_id, f"recommended_{metric}", getattr(answer_row, metric))
        if facts.answer is not None:
            client.set_tag(parent_run_id, tracking.RECOMMENDED_TRIAL_TAG, facts.answer.label.lstrip("#"))
    print(terminal_summary(facts, counts))
    print(f"Report: {out_dir / 'report.md'} (and report.html)")
    if open_html:
        open_in_browser(out_dir / "report.html")
    return out_dir / "report.md"


def html_report(markdown_text: str, folder: Path, title: str) -> str:
    """report.md as one self-contained HTML file: the plots are embedded as data URIs."""
    body = MarkdownIt("commonmark").enable("table").render(markdown_text)
    for image in ("front.png", "effects.png", "learning_curve.png"):
        if (folder / image).is_file():
            encoded = base64.b64encode((folder / image).read_bytes()).decode()
            body = body.replace(f'src="{image}"', f'src="data:image/png;base64,{encoded}"')
    style = ("body{font-family:sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.4}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}"
             "img{max-width:100%}pre{background:#f4f4f4;padding:.5rem;overflow-x:auto}")
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{style}</style>\n</head>\n<body>\n{body}</body>\n</html>\n")


def open_in_browser(path: Path) -> None:
    try:
        webbrowser.get()
    except webbrowser.Error:
        print(f"No browser found here; open {path} on a machine with one.")
        return
    webbrowser.open(path.resolve().as_uri())


def report_stored_study(study_name: str | None, overrides: list[str], reevaluate_first: bool = False,
                        open_html: bool = False) -> Path:
    """`regsweep report [study] [--reevaluate] [--open] [overrides]`: rebuilds the report from the
    stored study.

    It needs only where the study and the runs are stored, not the data or a search space;
    --reevaluate also re-trains (see regsweep.reevaluate), which needs the study's data.
    """
    if study_name is not None:
        overrides = [f"sweep.study={study_name}", *overrides]
    cfg = compose_study(overrides)
    stored = study.load_study(cfg.sweep, cfg.tracking.connect_timeout)
    parent = stored.user_attrs.get(study.PARENT_RUN_ATTR)
    if reevaluate_first and parent is not None:
        # The recorded overrides mask passwords: the ones given here (tracking.uri=...) win.
        given = [a for a in overrides if not a.startswith(("sweep.", "sweep=", "hydra."))]
        start_from = reevaluate.merge(stored.user_attrs.get("base_overrides", []), given)
        if not reevaluate.has_test_split(compose(start_from)):
            raise RegsweepError("--reevaluate needs a test split: give data.test_dir (data=folders) "
                                "or data.test_fraction (data=split) with the study's other data settings")
        reevaluate.reevaluate_missing(stored, cfg, study.study_settings(stored, cfg), parent, start_from)
    return write_report(stored, cfg, parent, open_html=open_html)

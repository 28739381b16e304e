"""`regsweep report`: the recommended settings, the whole trade-off, and how to replay them,
as report.md, a self-contained report.html, the terminal summary and the parent run's artifacts.

What is recommended is decided in regsweep.results; this module only shows it. It trains
nothing, except on `regsweep report --reevaluate` (regsweep.reevaluate).
"""

from __future__ import annotations

import base64
import html
import math
import warnings
import webbrowser
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
from regsweep.config import CONF_DIR, RegsweepError, compose, compose_study  # noqa: E402
from regsweep.results import (BASELINE, TrialRow, baseline_row, caveats, complete, failures_by_reason,  # noqa: E402
                              gap_reduction, pareto_front, ranked, recommend, stable_choice, verdict)

# Config groups (the folders of conf/): an override of one becomes a defaults-list entry.
GROUPS = frozenset(p.name for p in CONF_DIR.iterdir() if p.is_dir())


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


def replay_command(row: TrialRow) -> str:
    return "regsweep train " + " ".join(_quote(o) for o in row.overrides)


def _quote(override: str) -> str:
    return f"'{override}'" if any(c in override for c in " ()[]{},*?$") else override


def best_config(row: TrialRow) -> str:
    """The trial's overrides as a Hydra `experiment` config (`# @package _global_`)."""
    parser = OverridesParser.create()
    group_choices, values = [], OmegaConf.create()
    for text in row.overrides:
        override = parser.parse_override(text)
        key = override.key_or_group
        if key in GROUPS:
            group_choices.append(f"  - override /{key}: {override.value()}")
        else:
            OmegaConf.update(values, key, override.value(), force_add=True)
    header = f"# @package _global_\n# Recommended by regsweep: trial #{row.number} (MLflow run {row.run_id}).\n"
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


# --- the report -------------------------------------------------------------------------------


def _fmt(value) -> str:
    if isinstance(value, float):
        return "—" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _table(header: list[str], body: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in body]
    return "\n".join(lines)


def markdown(optuna_study: optuna.Study, settings: DictConfig, rows, chosen, met, front, importance, replay: str, experiment: str,
             reeval_section: list[str] = ()) -> str:
    keys = list(optuna_study.user_attrs.get("search_space", {}))
    counts = {state: sum(r.state == state for r in rows) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    objective = (
        f"maximize val_accuracy subject to gap ≤ ε = {settings.epsilon:g}" if settings.objective == "constrained"
        else f"maximize val_accuracy and minimize gap (Pareto); recommended: the most accurate front point with gap ≤ ε = {settings.epsilon:g}"
    )
    out = [f"# regsweep report — study `{optuna_study.study_name}`", "", f"Objective: {objective}.", "",
           f"Trials: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed"
           + (f", {counts['RUNNING']} running" if counts["RUNNING"] else "") + ".", ""]
    out += ["## Recommended settings", ""]
    if chosen is None:
        out += ["No trial has completed yet.", ""]
    else:
        if reeval_section:
            out += ["Chosen by the re-evaluation across seeds: see [below](#re-evaluation-on-the-test-split) "
                    "for its test accuracy, gap and the verdict against the baseline.", ""]
        out += [f"**{note}**\n" for note in caveats(rows, chosen, met, settings.epsilon)]
        out += [_table(["knob", "value"], [[k, chosen.params.get(k, "—")] for k in keys]), ""]
        out += [f"Trial #{chosen.number}: val_accuracy **{_fmt(chosen.val_accuracy)}**, gap **{_fmt(chosen.gap)}**, "
                f"train_accuracy {_fmt(chosen.train_accuracy)} (MLflow run `{chosen.run_id}`).", ""]
        baseline = baseline_row(rows)
        if baseline is not None:
            out += [f"Baseline (the config as given, trial #{baseline.number}): val_accuracy {_fmt(baseline.val_accuracy)}, "
                    f"gap {_fmt(baseline.gap)}, train_accuracy {_fmt(baseline.train_accuracy)}.", ""]
        out += ["Replay:", "", "```bash", replay, experiment, "```", ""]
    out += list(reeval_section)
    out += ["## Trade-off front (non-dominated in val_accuracy vs gap)", ""]
    out += [_table(["trial", "val_accuracy", "gap", *keys], [[r.number, r.val_accuracy, r.gap, *[r.params.get(k, "—") for k in keys]] for r in front]), ""]
    out += ["![trade-off front](front.png)", ""]
    out += ["## Parameter importances", ""]
    if importance:
        out += [_table(["knob", "for val_accuracy", "for gap"],
                       [[k, importance["val_accuracy"].get(k, math.nan), importance["gap"].get(k, math.nan)] for k in keys]), ""]
    else:
        out += ["Not enough complete trials to estimate importances.", ""]
    out += ["## Effect of each knob", "", "![effects](effects.png)", ""]
    top = ranked(rows, settings.epsilon)[:10]
    out += ["## Top trials", "", _table(["trial", "val_accuracy", "gap", "train_accuracy", *keys],
                                         [[r.number, r.val_accuracy, r.gap, r.train_accuracy, *[r.params.get(k, "—") for k in keys]] for r in top]), ""]
    failures = failures_by_reason(rows)
    if failures:
        out += ["## Failed trials, by reason", "", _table(["reason", "count", "trials"], [
            [reason, len(numbers), ", ".join(f"#{n}" for n in numbers)] for reason, numbers in failures]), ""]
    return "\n".join(out)


def terminal_summary(optuna_study: optuna.Study, settings: DictConfig, rows, chosen, met, replay: str, experiment: str) -> str:
    lines = [f"\nStudy '{optuna_study.study_name}': " + ", ".join(
        f"{sum(r.state == s for r in rows)} {s.lower()}" for s in ("COMPLETE", "PRUNED", "FAIL"))]
    lines += [f"  failed {len(numbers)}x: {reason}" for reason, numbers in failures_by_reason(rows)]
    if chosen is None:
        return "\n".join(lines + ["No trial has completed yet."])
    lines += [f"Note: {note}" for note in caveats(rows, chosen, met, settings.epsilon)]
    lines.append(f"Recommended (trial #{chosen.number}): val_accuracy {chosen.val_accuracy:.4f}, gap {chosen.gap:.4f}")
    for key, value in chosen.params.items():
        lines.append(f"  {key:24s} {_fmt(value)}")
    baseline = baseline_row(rows)
    if baseline is not None:
        lines.append(f"Baseline (trial #{baseline.number}):  val_accuracy {baseline.val_accuracy:.4f}, gap {baseline.gap:.4f}")
    top = ranked(rows, settings.epsilon)[:5]
    lines.append("Top trials:   #  val_acc   gap    knobs")
    for r in top:
        knobs = " ".join(f"{k.rsplit('.', 1)[-1]}={_fmt(v)}" for k, v in r.params.items())
        lines.append(f"           {r.number:4d}  {r.val_accuracy:.4f}  {r.gap:+.4f}  {knobs}")
    lines += ["Replay:", f"  {replay}", f"  {experiment}"]
    return "\n".join(lines)


def reevaluation_markdown(summaries, stable, single, settings: DictConfig) -> list[str]:
    """The re-evaluation table (mean ± std over seeds), the stable choice and the verdict."""
    baseline = next((s for s in summaries if s.label == BASELINE), None)
    seeds = max(len(s.runs) for s in summaries)
    out = ["## Re-evaluation on the test split", "",
           f"Each setting re-trained with {seeds} fresh seeds and scored once on the test split, which no "
           "trial ever saw. Here the gap is train_accuracy − test_accuracy. Mean ± std over seeds.", ""]

    def pm(summary, metric):
        return f"{summary.mean(metric):.4f} ± {summary.std(metric):.4f}"

    def name(summary):
        if summary.label == BASELINE:
            return f"baseline ({settings.reevaluate.baseline})"
        notes = [note for note, row in (("stable choice", stable), ("best single trial", single))
                 if row is not None and row.label == summary.label]
        return f"trial {summary.label}" + (f" ({', '.join(notes)})" if notes else "")

    out += [_table(["setting", "seeds", "test_accuracy", "val_accuracy", "test gap"],
                   [[name(s), len(s.runs), pm(s, "test_accuracy"), pm(s, "val_accuracy"), pm(s, "test_gap")]
                    for s in summaries]), ""]
    if stable is not None and stable.mean("gap") <= settings.epsilon:
        out += [f"Recommended after re-evaluation: trial {stable.label}, the highest mean − std of val_accuracy "
                f"among settings with mean gap ≤ ε = {settings.epsilon:g} (test accuracy is never used to choose).", ""]
    elif stable is not None:
        out += [f"Recommended after re-evaluation: trial {stable.label}. No setting kept its mean gap ≤ ε = "
                f"{settings.epsilon:g} across seeds; this one has the smallest (test accuracy is never used to choose).", ""]
    if stable is not None and baseline is not None:
        reduction, spread = gap_reduction(baseline, stable)
        if not math.isnan(reduction):
            out += [f"Relative test-gap reduction vs baseline: {100 * reduction:.0f} % ± {100 * spread:.0f} % "
                    "(per seed, paired by seed).", ""]
        out += [f"**Verdict:** {verdict(baseline, stable)}", ""]
    return out


def write_report(optuna_study: optuna.Study, cfg: DictConfig, parent_run_id: str | None, open_html: bool = False) -> Path:
    """Writes report.md, report.html, their plots and the best-settings config; logs them to the
    parent run. It trains nothing: re-evaluation runs already logged under the parent are read."""
    settings = study.study_settings(optuna_study, cfg)
    store = Path(cfg.paths.store)
    out_dir = store / "reports" / optuna_study.study_name
    out_dir.mkdir(parents=True, exist_ok=True)
    searched = space.parse_space(optuna_study.user_attrs.get("search_space", {}))
    rows = study.trial_rows(optuna_study)
    chosen, met = recommend(rows, settings.epsilon)
    front = pareto_front(rows)
    summaries = reevaluate.collect(cfg, parent_run_id)
    reeval_section = []
    if summaries:
        single = next((s for s in summaries if chosen is not None and s.label == f"#{chosen.number}"), None)
        stable = stable_choice(summaries, settings.epsilon)
        reeval_section = reevaluation_markdown(summaries, stable, single, settings)
        if stable is not None:  # across seeds beats a single lucky trial
            chosen = next(r for r in rows if f"#{r.number}" == stable.label)
            met = chosen.gap <= settings.epsilon  # the trial's own; the section below speaks for the seeds
    replay = experiment = ""
    if chosen is not None:
        replay = replay_command(chosen)
        config_dir = store / "configs" / "experiment"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / f"{optuna_study.study_name}_best.yaml").write_text(best_config(chosen))
        config_flag = "" if str(cfg.paths.store) == "mlruns" else f"--config-dir {store / 'configs'} "
        experiment = f"regsweep train {config_flag}+experiment={optuna_study.study_name}_best"
    front_figure(rows, front, chosen, settings.epsilon).savefig(out_dir / "front.png", dpi=110)
    if searched and complete(rows):
        effects_figure(rows, searched).savefig(out_dir / "effects.png", dpi=110)
    plt.close("all")
    text = markdown(optuna_study, settings, rows, chosen, met, front, importances(optuna_study), replay, experiment,
                    reeval_section)
    (out_dir / "report.md").write_text(text)
    (out_dir / "report.html").write_text(html_report(text, out_dir, f"regsweep report — {optuna_study.study_name}"))
    if parent_run_id is not None:
        tracking.use_store(cfg.tracking)
        client = mlflow.MlflowClient()
        client.log_artifacts(parent_run_id, str(out_dir), artifact_path="report")
        if chosen is not None:
            for metric in ("val_accuracy", "gap", "train_accuracy"):
                client.log_metric(parent_run_id, f"recommended_{metric}", getattr(chosen, metric))
            client.set_tag(parent_run_id, tracking.RECOMMENDED_TRIAL_TAG, str(chosen.number))
    print(terminal_summary(optuna_study, settings, rows, chosen, met, replay, experiment))
    if reeval_section:  # its table and verdict, as in report.md
        print("\n".join(line.replace("**", "") for line in reeval_section if line.startswith(("|", "**Verdict:**"))))
    print(f"Report: {out_dir / 'report.md'} (and report.html)")
    if open_html:
        open_in_browser(out_dir / "report.html")
    return out_dir / "report.md"


def html_report(markdown_text: str, folder: Path, title: str) -> str:
    """report.md as one self-contained HTML file: the plots are embedded as data URIs."""
    body = MarkdownIt("commonmark").enable("table").render(markdown_text)
    for image in ("front.png", "effects.png"):
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
    stored = study.load_study(cfg.sweep)
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

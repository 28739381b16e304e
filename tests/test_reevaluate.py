"""Re-evaluation: an untouched test split, fresh seeds for the top settings and a baseline, and a
verdict that says "within noise" when it is."""

from __future__ import annotations

import dataclasses
import math
import re
import statistics
from html.parser import HTMLParser
from pathlib import Path

import mlflow
import pytest

from regsweep import data, reevaluate, report, results, sweep, train
from regsweep import study as studies
from regsweep.config import compose_study

TINY = ["train.epochs=3", "train.fine_tune_epochs=1", "tracking.artifacts=none", "sweep.trials_per_worker=0"]
# One look of 2 seeds in the race and in the confirmation: no adaptive rounds.
FIXED_2 = ["sweep.reevaluate.seeds=2", "sweep.reevaluate.max_seeds=2", "sweep.reevaluate.race_seeds=2"]


class _Checker(HTMLParser):
    VOID = frozenset({"meta", "img", "br", "hr", "link", "input"})

    def __init__(self):
        super().__init__()
        self.open, self.images, self.errors = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs)["src"])
        elif tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag):
        if tag in self.VOID:  # <img ... />
            return
        if not self.open or self.open.pop() != tag:
            self.errors.append(tag)


def test_the_html_report_is_well_formed_and_embeds_its_plots(tmp_path):
    from matplotlib.figure import Figure

    for name in ("front.png", "effects.png"):
        figure = Figure()
        figure.subplots().plot([0, 1], [1, 0])
        figure.savefig(tmp_path / name)
    text = (
        "# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
        "![front](front.png)\n\n![effects](effects.png)\n\n**Verdict:** x < y\n"
    )
    page = report.html_report(text, tmp_path, "regsweep <study>")
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert page.startswith("<!DOCTYPE html>") and not checker.errors and checker.open == []
    assert len(checker.images) == 2 and all(src.startswith("data:image/png;base64,") for src in checker.images)
    assert "<table>" in page and "x &lt; y" in page and "regsweep &lt;study&gt;" in page


def count_calls(monkeypatch, module, name: str) -> list:
    """A list that grows by one each time module.name is called (it still runs)."""
    calls, real = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.slow
def test_a_sweep_never_touches_the_test_split_and_reevaluation_is_nested_tagged_and_reported(store, monkeypatch):
    """The whole path a user's study takes, once: 4 trials, then every stage of the re-evaluation
    (screening, race, confirmation), the learning curve, the report, the registry and a second
    report that trains nothing. About 90 s on 2 cores (9 re-evaluation and 2 curve runs): each
    stage must really train and log for the seeds, tags and means checked here to mean anything,
    and splitting it would train the shared first part twice."""
    loaded = []
    real_load = data.load_images

    def spy(folder, *args, **kwargs):
        loaded.append(Path(folder).name)
        return real_load(folder, *args, **kwargs)

    monkeypatch.setattr(data, "load_images", spy)
    args = [f"paths.store={store}", *TINY, "sweep.study=reeval", "sweep.n_trials=4", "sweep.reevaluate.seeds=0"]
    study = sweep.run_study(args)
    assert "test" not in loaded  # no trial decoded a test image
    client = mlflow.MlflowClient(f"sqlite:///{store}/mlflow.db")
    experiment = client.get_experiment_by_name("regsweep").experiment_id
    trial_runs = client.search_runs([experiment], "tags.`regsweep.study` = 'reeval'")
    assert len(trial_runs) == 5  # parent + 4 trials
    assert not any(name.startswith("test_") for r in trial_runs for name in r.data.metrics)
    assert (
        len(
            {r.data.params.get("data.test_fingerprint") for r in trial_runs if "data.test_fingerprint" in r.data.params}
        )
        == 1
    )

    # The demo's test split is disjoint from train and validation, by name and by content.
    splits = data.resolve_splits(sweep.prepare(args).base.data, 32, store)
    contents = {
        name: {p.read_bytes() for p in getattr(splits, name).rglob("*.png")} for name in ("train", "val", "test")
    }
    assert contents["test"] and not (contents["test"] & contents["train"] or contents["test"] & contents["val"])

    # Which runs list or read the test split's files: only the re-evaluation's, never the learning curve's.
    test_folder = splits.test.resolve()
    reads_by_role = []
    real_image_files, real_train = data.image_files, train.train_and_log

    def listing_spy(folder, class_name):
        if reads_by_role and Path(folder).resolve() == test_folder:  # inside a run
            reads_by_role[-1][1] += 1
        return real_image_files(folder, class_name)

    def train_spy(cfg, **kwargs):
        reads_by_role.append([kwargs["tags"]["regsweep.role"], 0])
        return real_train(cfg, **kwargs)

    monkeypatch.setattr(data, "image_files", listing_spy)
    monkeypatch.setattr(train, "train_and_log", train_spy)
    reads, rounds = count_calls(monkeypatch, reevaluate, "collect"), count_calls(monkeypatch, reevaluate, "_round_line")
    # The 3 candidates are screened, the best 2 over two runs race.
    reevaluation = [*FIXED_2, "sweep.reevaluate.top_k=2", "sweep.reevaluate.screen=3", "sweep.reevaluate.curve=[0.5]"]
    path = sweep.report_study("reeval", [f"paths.store={store}", *TINY, *reevaluation], reevaluate_first=True)
    monkeypatch.setattr(data, "image_files", real_image_files)
    # The runs are read once per look: before the claim, after it, after each round, after the curve.
    assert len(rounds) == 3 and len(reads) == 2 + len(rounds) + 1  # screening, race, confirmation
    curve_reads = [reads for role, reads in reads_by_role if role == "curve"]
    assert curve_reads and curve_reads == [0] * len(curve_reads)
    assert all(reads > 0 for role, reads in reads_by_role if role == "reeval")
    parent = study.user_attrs["mlflow_parent_run_id"]
    reeval_runs = client.search_runs([experiment], "tags.`regsweep.role` = 'reeval'")
    # The screening: 3 settings x 1 seed; the race: its 2 best x 1 more; the confirmation: the choice and
    # the baseline x 2.
    assert len(reeval_runs) == 9
    assert {r.data.tags["mlflow.parentRunId"] for r in reeval_runs} == {parent}
    seeds = {
        label: {r.data.params["train.seed"] for r in reeval_runs if r.data.tags["reeval"] == label}
        for label in {r.data.tags["reeval"] for r in reeval_runs}
    }
    # Seeds no trial used; the confirmation's are seeds the race (which chose on them) never used.
    assert seeds.pop("baseline") == {"1001", "1002"}
    assert sorted(map(sorted, seeds.values())) == [["1"], ["1", "1001", "1002", "2"], ["1", "2"]]
    assert "screened out: val_accuracy" in path.read_text()
    baseline_runs = [r for r in reeval_runs if r.data.tags["reeval"] == "baseline"]
    assert {
        (r.data.params["model.dropout"], r.data.params["augment.strength"], r.data.params["model.unfrozen_blocks"])
        for r in baseline_runs
    } == {("0.0", "0.0", "0")}

    # The report's means and stds are those of the logged runs.
    text = path.read_text()
    for label in {r.data.tags["reeval"] for r in reeval_runs}:
        values = [r.data.metrics["test_accuracy"] for r in reeval_runs if r.data.tags["reeval"] == label]
        mean, std = statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        row = next(
            line
            for line in text.splitlines()
            if line.startswith(f"| {'baseline' if label == 'baseline' else 'trial ' + label}")
        )
        assert f"| {mean:.4f} ± {std:.4f} |" in row
    assert text.index("## The answer") < text.index("## Re-evaluation") and "**Verdict on the test split" in text
    html = path.with_name("report.html").read_text()
    assert "data:image/png;base64," in html and "Verdict on the test split" in html

    # The learning curve: half the training images (at least one per class), validation only, in the report.
    curve_runs = client.search_runs([experiment], "tags.`regsweep.role` = 'curve'")
    assert len(curve_runs) == len(curve_reads) == 2  # the answer's setting x 2 seeds
    classes = len(splits.class_names)
    [full] = {int(r.data.metrics["train_images"]) for r in reeval_runs}
    assert {r.data.metrics["train_images"] for r in curve_runs} == {math.ceil(full // classes / 2) * classes}
    assert all(
        r.data.params["data.test_fingerprint"] == "none" and "test_accuracy" not in r.data.metrics for r in curve_runs
    )
    assert "## Would more data help?" in text and "![learning curve](learning_curve.png)" in text
    artifacts = {a.path for a in client.list_artifacts(parent, "report")}
    assert {"report/report.html", "report/learning_curve.png"} <= artifacts

    # The Model Registry: the answer's setting and the baseline, each by its seed most accurate on validation.
    cfg = compose_study([f"paths.store={store}", "sweep.study=reeval"])
    summaries = reevaluate.collect(cfg, parent)
    settings = studies.study_settings(study, cfg)
    state = reevaluate.Reevaluation(study, cfg, settings, parent, [f"paths.store={store}"]).look().rounds
    found = results.answer(studies.trial_rows(study), state, settings.epsilon)
    recommended = client.get_model_version_by_alias("reeval", "recommended")
    adopted = found.baseline if found.keep_baseline else found.chosen
    assert recommended.run_id == results.representative_run(adopted)["run_id"]
    assert (
        client.get_model_version_by_alias("reeval", "baseline").run_id
        == results.representative_run(found.baseline)["run_id"]
    )
    assert "`models:/reeval@recommended`" in text
    versions = len(client.search_model_versions("name = 'reeval'"))

    # Again: nothing new is trained or registered, the same numbers come back, from one read.
    reads.clear()
    again = sweep.report_study("reeval", [f"paths.store={store}", *TINY, *reevaluation], reevaluate_first=True)
    assert len(reads) == 1
    assert len(client.search_runs([experiment], "tags.`regsweep.role` = 'reeval'")) == 9
    assert len(client.search_runs([experiment], "tags.`regsweep.role` = 'curve'")) == len(curve_runs)
    assert re.findall(r"± [0-9.]+", again.read_text()) == re.findall(r"± [0-9.]+", text)
    assert len(client.search_model_versions("name = 'reeval'")) == versions

    # An answer that changes moves the alias to a new version; the baseline's stays.
    other = next(s for s in summaries if s.label not in (results.BASELINE, adopted.label))
    sweep.register_models("reeval", dataclasses.replace(found, label=other.label, chosen=other))
    moved = client.get_model_version_by_alias("reeval", "recommended")
    assert moved.run_id == results.representative_run(other)["run_id"] and int(moved.version) == versions + 1
    assert (
        client.get_model_version_by_alias("reeval", "baseline").run_id
        == results.representative_run(found.baseline)["run_id"]
    )


@pytest.mark.slow
def test_a_test_split_unlike_validation_is_flagged_and_the_answer_never_loses_test_accuracy(store):
    """Validation and test from different distributions (the test images inverted, as if from
    another camera): the answer warns, and whatever it adopts holds its test accuracy against
    the baseline."""
    from PIL import Image, ImageOps

    splits = data.resolve_splits(sweep.prepare([f"paths.store={store}", *TINY]).base.data, 32, store)
    dark = store.parent / "other-camera"
    for image in splits.test.rglob("*.png"):
        target = dark / image.parent.name / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        ImageOps.invert(Image.open(image).convert("RGB")).save(target)
    args = [
        f"paths.store={store}",
        *TINY,
        "train.epochs=8",
        "sweep.study=dark",
        "sweep.n_trials=3",
        *FIXED_2,
        "sweep.reevaluate.top_k=1",
        "sweep.reevaluate.curve=[]",
        "data=folders",
        "data.flip=none",
        "data.batch_size=8",
        f"data.train_dir={splits.train}",
        f"data.val_dir={splits.val}",
        f"data.test_dir={dark}",
    ]
    study = sweep.run_study(args)
    text = (store / "reports" / "dark" / "report.md").read_text()
    answer = text.split("## The answer")[1].split("\n## ")[0]
    assert "Validation and test disagree on the baseline" in answer

    cfg = sweep.prepare(args).cfg
    settings = studies.study_settings(study, cfg)
    parent = study.user_attrs["mlflow_parent_run_id"]
    state = reevaluate.Reevaluation(study, cfg, settings, parent, args).look().rounds
    found = results.answer(studies.trial_rows(study), state, epsilon=0.1)
    adopted = found.baseline if found.keep_baseline else found.chosen
    baseline = found.baseline
    assert found.verdict is not None and found.verdict.case in results.CASES
    assert results.difference(baseline, adopted, "test_accuracy").interval()[1] >= 0  # no loss beyond noise


def test_open_shows_the_html_report_in_a_browser_or_says_where_it_is(tmp_path, monkeypatch, capsys):
    import webbrowser

    page = tmp_path / "report.html"
    page.write_text("<!DOCTYPE html><html></html>")

    def no_browser(*args):
        raise webbrowser.Error("could not locate runnable browser")

    monkeypatch.setattr(webbrowser, "get", no_browser)
    report.open_in_browser(page)
    assert f"No browser found here; open {page}" in capsys.readouterr().out

    opened = []
    monkeypatch.setattr(webbrowser, "get", lambda *args: object())
    monkeypatch.setattr(webbrowser, "open", opened.append)
    report.open_in_browser(page)
    assert opened == [page.resolve().as_uri()]


def test_the_replay_line_survives_a_shell_whatever_the_values_hold():
    import shlex

    overrides = [
        "data.train_dir=/data/my photos/train",
        "model.pooling=choice(avg, max)",
        "tracking.uri=http://h/$HOME",
        "data.val_dir=/data/it's/val",
        "model.dropout=0.5",
    ]
    line = report.replay_command(overrides)
    assert shlex.split(line) == ["regsweep", "train", *overrides]
    assert "model.dropout=0.5" in line.split()  # plain values stay unquoted

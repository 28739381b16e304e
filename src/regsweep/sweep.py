"""`regsweep sweep` and `regsweep report`: an Optuna study over config keys, every trial a nested
MLflow run, and the one end of a study: the re-evaluation, the answer, the model and the report.

Optuna drives the search and Hydra composes each trial from the same tree as
`regsweep train`, plus the trial's values, so any trial replays with `regsweep train
<its overrides>`. The study lives in Optuna storage (SQLite under mlruns/ by default) and
its budget is a total: re-running the same command tops the study up, or only reports.
The pieces, top to bottom: the search space (regsweep.space), the shared study
(regsweep.study), one trial (regsweep.trial) in a worker process (regsweep.worker), the
re-evaluation (regsweep.reevaluate), the decisions (regsweep.results) and the report
(regsweep.report, which only renders).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import math
import shlex
import warnings
from pathlib import Path

import mlflow
import optuna
from omegaconf import DictConfig, OmegaConf

from regsweep import data, faults, progress, reevaluate, report, results, space, study, tracking, ui
from regsweep.config import RegsweepError, compose, compose_study, override_key, redact, training_overrides, validate
from regsweep.metrics import GAP, TRAIN_ACCURACY, VAL_ACCURACY
from regsweep.study import Sweep
from regsweep.trial import make_objective
from regsweep.worker import TrialWorker, import_tensorflow_quietly

log = logging.getLogger(__name__)


def prepare(args: list[str]) -> Sweep:
    """Composes the study config from CLI args and checks the whole sweep before any trial."""
    plain, searched = space.split_cli_overrides(args)
    cfg = compose_study(plain)
    settings = cfg.sweep
    fixed_keys = {override_key(a) for a in plain if not a.startswith(("sweep.", "sweep="))}
    expressions = {k: str(v) for k, v in (settings.params or {}).items() if k not in fixed_keys}
    expressions.update(searched)
    space.check_settings(settings, expressions)
    searched_space = space.parse_space(expressions)
    fixed = space.as_overrides(dict(settings.fixed or {}))
    base_overrides = fixed + training_overrides(plain)
    base = compose(base_overrides)
    for key in searched_space:
        if OmegaConf.select(base, key, default="__missing__") == "__missing__":
            raise RegsweepError(f"sweep.params {key}: no such config key: check it against `regsweep train --cfg job`")
    # Bad settings or data stop here, before a study or an MLflow run exists.
    validate(base)
    for url in (str(base.tracking.uri), str(settings.storage)):  # a damaged store: said before anything is recorded
        if url.startswith("sqlite:///"):
            faults.check_database(Path(url.removeprefix("sqlite:///")))
    faults.check_writable(Path(base.paths.store))
    faults.keep_reserve(Path(base.paths.store))
    tracking.check_reachable(base.tracking)
    splits = data.resolve_splits(base.data, base.model.image_size, Path(base.paths.store))
    shared = data.shared_images(splits)
    if shared:
        listed = "".join(f"\n  {' = '.join(group)}" for group in shared[:10])
        more = f"\n  … and {len(shared) - 10} more" if len(shared) > 10 else ""
        log.warning(
            f"{len(shared)} image(s) appear in more than one split (same content), so held-out "
            f"scores are inflated; remove the copies:{listed}{more}"
        )
    return Sweep(
        settings,
        searched_space,
        expressions,
        base_overrides,
        base,
        cfg,
        splits.test is not None,
        data.fingerprint(splits),
        shared,
    )


def run_study(args: list[str]) -> optuna.Study:
    """Runs (or tops up) the study, then re-evaluates and reports."""
    sweep = prepare(args)
    s = sweep.settings
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    strength = sweep.space.get("augment.strength")
    if (
        sweep.base.cache.enabled
        and isinstance(strength, optuna.distributions.FloatDistribution)
        and strength.step is None
    ):
        log.info(
            "Note: augment.strength is searched without a step, so each augmented trial computes its own "
            "cached views; declare one to share them, e.g. 'augment.strength=range(0.0, 1.0, step=0.25)'."
        )
    optuna_study = study.open_study(sweep)
    done = len(optuna_study.get_trials(deepcopy=False, states=study.COUNTED))
    remaining = s.n_trials - done
    training = remaining > 0 or study.baseline_unfinished(optuna_study)
    worker = TrialWorker(s.trials_per_worker) if training and s.trials_per_worker > 0 else None
    if worker is not None:
        worker.start()  # it imports TensorFlow while this process sets up the MLflow parent run
    elif training:
        import_tensorflow_quietly()  # trials run in this process
    parent_run_id = None
    watching = tracking.watch(sweep.base.tracking)  # one line when the tracking server goes silent, one when back
    try:
        parent_run_id = study.parent_run(optuna_study, sweep)
        study.fail_stale_trials(optuna_study)  # a killed earlier run's trial: FAIL, and its MLflow run FAILED
        study.end_orphaned_runs(optuna_study, sweep.cfg.tracking)
        study.record_budget(optuna_study, s.n_trials, sweep.has_test_split)
        baseline_again = study.requeue_failed_baseline(optuna_study, sweep)
        if remaining > 0 or baseline_again:
            again = " The baseline trial never completed: it runs again first." if baseline_again else ""
            log.info(
                f"Study '{s.study}' ({s.objective}, epsilon {s.epsilon}): {done} of "
                f"{s.n_trials} trials done, running {max(remaining, 1)} more.{again} Storage: "
                f"{redact(str(s.storage))}"
            )
            _optimize(optuna_study, sweep, parent_run_id, worker)
        else:
            log.info(f"Study '{s.study}' already has {done} trials (sweep.n_trials={s.n_trials}); reporting.")
        if worker is not None:
            worker.close()
        if s.reevaluate.seeds > 0 and not sweep.has_test_split:
            log.info(
                "No test split, so no re-evaluation: give data.test_dir (data=folders) or data.test_fraction "
                "(data=split) to measure the recommendation against a baseline on untouched images."
            )
        end_study(
            optuna_study,
            sweep.cfg,
            parent_run_id,
            sweep.base_overrides,
            reevaluating=s.reevaluate.seeds > 0 and sweep.has_test_split,
            finishing=True,
        )
    except BaseException as error:
        if parent_run_id is not None:
            _end_parent(parent_run_id, error, Path(sweep.base.paths.store))
        raise
    finally:
        watching.set()
        if worker is not None:
            worker.close()
    return optuna_study


def _optimize(optuna_study: optuna.Study, sweep: Sweep, parent_run_id: str, worker: TrialWorker | None) -> None:
    """The trials, until the budget is met, `sweep.max_failures` trials of this invocation have
    failed, or the store fails (full, read-only or damaged), each of the last two in one sentence."""
    s = sweep.settings
    store_faults: list[str] = []
    failed: list[str] = []

    def count_failures(stopping_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if trial.state == optuna.trial.TrialState.FAIL:
            failed.append(trial.user_attrs.get(study.FAIL_REASON_ATTR) or "unknown")
            if len(failed) >= s.max_failures:
                stopping_study.stop()

    def stop_once_recorded(stopping_study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """A stop that came while the trial's result was being recorded, now that Optuna has it;
        else stops stay held while Optuna sets up the next trial (see below)."""
        if faults.held_stop() is None:
            faults.hold_stops()
            return
        try:
            faults.release_stops()
        except KeyboardInterrupt as stop:
            stop.add_note(f"trial #{trial.number} ended {trial.state.name} (recorded before stopping)")
            raise

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # each trial prints its own line, failures too
    # Held until the objective starts: a stop while Optuna creates a trial would leave it RUNNING
    # with no heartbeat, so that no later command could ever tell it was abandoned.
    faults.hold_stops()
    try:
        optuna_study.optimize(
            make_objective(sweep, parent_run_id, worker, store_faults),
            n_trials=s.n_trials + s.max_failures,  # an upper bound: the callbacks stop it
            catch=(Exception,),
            callbacks=[
                stop_once_recorded,
                optuna.study.MaxTrialsCallback(s.n_trials, states=study.COUNTED),
                count_failures,
            ],
        )
    except Exception as error:  # Optuna could not record a trial's end: the store failed under it
        found = faults.sentence(error, str(sweep.base.paths.store))
        if found is None:
            raise
        raise RegsweepError(found) from error
    finally:
        after_the_last = faults.held_stop()
        faults.release_stops(raising=False)  # never left held; an error going up says what happened
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    if after_the_last is not None:  # a stop that came after the last trial was recorded
        raise after_the_last
    if store_faults:
        raise RegsweepError(store_faults[0])
    if len(failed) >= s.max_failures:
        reasons = "; ".join(f"{count}× {reason}" for reason, count in collections.Counter(failed).most_common(3))
        raise RegsweepError(
            f"{len(failed)} trials failed in this run, so the sweep stopped (sweep.max_failures="
            f"{s.max_failures}): {reasons}: fix the cause, then re-run the same command to resume"
        )


def _end_parent(parent_run_id: str, error: BaseException, store: Path) -> None:
    """The study's parent run is never left RUNNING: KILLED on a stop request, FAILED otherwise
    (a resume sets it RUNNING again). A store that refuses even this is ended by the next command."""
    stopped = isinstance(error, KeyboardInterrupt)
    with contextlib.suppress(Exception), tracking.one_try():  # a silent tracking server: one try, not its patience
        faults.free_reserve(store, error)
        client = mlflow.MlflowClient()
        client.set_tag(
            parent_run_id, tracking.ERROR_TAG, faults.stop_reason(error) if stopped else tracking.error_summary(error)
        )
        client.set_terminated(parent_run_id, "KILLED" if stopped else "FAILED")
        if stopped:
            error.add_note("the study's parent run ended KILLED")


# --- the end of a study ------------------------------------------------------------------------


def end_study(
    optuna_study: optuna.Study,
    cfg: DictConfig,
    parent_run_id: str | None,
    base_overrides: list[str],
    *,
    reevaluating: bool,
    finishing: bool,
    open_html: bool = False,
) -> Path | None:
    """The one end of a study, for `regsweep sweep` and `regsweep report` alike:

    1. wait for the other workers' trials (`finishing`: this command ran trials);
    2. claim the re-evaluation, or leave it, and the report, to the worker that holds the claim;
    3. re-evaluate in rounds (`reevaluating`; regsweep.reevaluate);
    4. decide (regsweep.results);
    5. register the answer's model and the baseline's;
    6. write the report (regsweep.report) and log it to the parent run;
    7. end the parent run (`finishing`).

    Returns report.md's path, or None when another worker holds the claim: it re-evaluates,
    and it writes the report when it is done.
    """
    if finishing:
        study.wait_for_other_workers(optuna_study)
    unfinished = study.in_progress(optuna_study)
    if unfinished:  # `regsweep report` mid-study: an answer to look at, nothing to act on or move
        log.info(
            f"Study '{optuna_study.study_name}' is {unfinished}: the answer below is provisional, and it is "
            "re-evaluated, registered and logged when the study is complete."
        )
    reevaluating = reevaluating and parent_run_id is not None and not unfinished
    settings = study.study_settings(optuna_study, cfg, reevaluating=reevaluating)
    reevaluation = reevaluate.Reevaluation(optuna_study, cfg, settings, parent_run_id, base_overrides)
    look = reevaluation.look()  # one read of the runs per look: here, after each round, after the curve
    if reevaluating and look.work_left():
        token, holder = study.claim(optuna_study, settings.heartbeat_seconds)
        if token is None:
            _leave_to(holder)
            return None
        try:
            with study.keeping(optuna_study, token, settings.heartbeat_seconds):
                study.record_reevaluation(optuna_study, settings.reevaluate)
                look = reevaluate.run_rounds(reevaluation, token)
                if look is None:
                    _leave_to("the worker that took over the claim")
                    return None
        except KeyboardInterrupt as stop:
            stop.add_note("the re-evaluation claim was released")
            raise
        finally:
            with contextlib.suppress(Exception):  # a store that refuses it: the claim's process is gone anyway
                study.release(optuna_study, token)
    elif (holder := study.claim_holder(optuna_study)) is not None:
        _leave_to(holder)
        return None
    elif reevaluating:  # nothing left to train under these settings: they define the verdict from now on
        study.record_reevaluation(optuna_study, settings.reevaluate)
    facts = gather(look, provisional=unfinished)
    if parent_run_id is not None and not unfinished:
        tracking.use_store(cfg.tracking)
        try:
            facts.registered = register_models(optuna_study.study_name, facts.answer)
        except RegsweepError as error:  # the report stands without it; it says why
            facts.not_registered = str(error)
    out_dir = Path(cfg.paths.store) / "reports" / optuna_study.study_name
    path = report.render(facts, out_dir)
    if parent_run_id is not None and not unfinished:
        _log_report(parent_run_id, out_dir, facts.answer)
        if finishing:
            mlflow.MlflowClient().set_terminated(parent_run_id, "FINISHED")
    log.log(progress.ANSWER, report.terminal_summary(facts))
    log.log(progress.ANSWER, f"Report: {path} (and report.html)")
    if open_html:
        report.open_in_browser(out_dir / "report.html")
    if facts.not_registered:  # the report stands and says why; the command fails, so a script notices
        raise RegsweepError(facts.not_registered)
    return path


def _leave_to(holder: str) -> None:
    log.log(
        progress.ANSWER, f"Another worker ({holder}) is re-evaluating this study; it writes the report when it is done."
    )


def gather(look: reevaluate.Look, provisional: str = "") -> report.Facts:
    """Everything the report shows, from one look at the study and its runs, and decided.
    The best-settings file is written only for a complete study (`provisional` empty)."""
    where = look.reevaluation
    optuna_study, cfg, settings, parent_run_id = where.optuna_study, where.cfg, where.settings, where.parent_run_id
    rows = look.rows
    searched = space.parse_space(optuna_study.user_attrs.get(study.SEARCH_SPACE_ATTR, {}))
    curves = look.curves()
    shared = optuna_study.user_attrs.get(study.SHARED_IMAGES_ATTR, [])
    recorded = list(optuna_study.user_attrs.get(study.BASE_OVERRIDES_ATTR, []))
    baseline_overrides = space.baseline_overrides(settings.reevaluate.baseline)
    found = results.answer(
        rows,
        look.rounds,
        settings.epsilon,
        curves,
        len(shared),
        test_split=bool(optuna_study.user_attrs.get(study.TEST_SPLIT_ATTR)),
    )
    facts = report.Facts(
        optuna_study.study_name,
        settings,
        searched,
        rows,
        found,
        results.recommend(rows, settings.epsilon),
        [s for s in look.summaries if s.runs],
        curves,
        shared,
        baseline_overrides,
        importance=importances(optuna_study),
        counts={state: sum(r.state == state for r in rows) for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")},
    )
    facts.in_progress = provisional
    facts.reevaluate_command = f"regsweep report {optuna_study.study_name} --reevaluate" + "".join(
        f" {shlex.quote(o)}" for o in _where(cfg)
    )
    facts.compare = compare_link(cfg, parent_run_id, facts.summaries)
    if found is None:
        return facts
    if found.keep_baseline and (found.row is None or found.verdict is not None):
        overrides, origin = reevaluate.merge(recorded, baseline_overrides), "keep the baseline"
    else:
        overrides, origin = found.row.overrides, f"trial #{found.row.number} (MLflow run {found.row.run_id})"
    facts.replay = report.replay_command(overrides)
    if not provisional:
        store = Path(cfg.paths.store)
        config_dir = store / "configs" / "experiment"
        config_dir.mkdir(parents=True, exist_ok=True)
        (config_dir / f"{optuna_study.study_name}_best.yaml").write_text(report.best_config(overrides, origin))
        config_flag = "" if str(cfg.paths.store) == "mlruns" else f"--config-dir {store / 'configs'} "
        facts.experiment = f"regsweep train {config_flag}+experiment={optuna_study.study_name}_best"
    edged = found.row if found.verdict is None or found.verdict.adopt else _row_of(rows, found.chosen)
    if edged is not None and (found.verdict is None or found.verdict.case != results.TRADE_OFF):
        facts.edges = space.edges(
            edged.params,
            searched,
            compose(reevaluate.merge(recorded, _where(cfg))),
            _wider_command(optuna_study.study_name, recorded, cfg),
        )
    return facts


def compare_link(cfg: DictConfig, parent_run_id: str | None, summaries: list[results.Summary]) -> str:
    """MLflow's run comparison of the re-evaluated settings, baseline first, one run each (the seed
    that stands for it in the registry), on the tracking server or where `regsweep ui` serves a
    local store; "" before any re-evaluation."""
    if parent_run_id is None or not summaries:
        return ""
    experiment_id = mlflow.MlflowClient().get_run(parent_run_id).info.experiment_id
    runs = [results.representative_run(summary)["run_id"] for summary in summaries]
    return ui.compare_page(ui.address(str(cfg.tracking.uri)), experiment_id, runs)


def _row_of(rows: list[results.TrialRow], summary: results.Summary | None) -> results.TrialRow | None:
    return next((r for r in rows if summary is not None and f"#{r.number}" == summary.label), None)


def _where(cfg: DictConfig) -> list[str]:
    """The override that says where this machine keeps the store, when not the default."""
    return [] if str(cfg.paths.store) == "mlruns" else [f"paths.store={cfg.paths.store}"]


def _wider_command(name: str, recorded: list[str], cfg: DictConfig) -> str:
    """`regsweep sweep <the study's own overrides> {widened} sweep.study=<name>-wider`: a new study
    (a study's search space is fixed when it starts)."""
    own = reevaluate.merge(
        [o for o in recorded if o not in space.as_overrides(dict(cfg.sweep.fixed or {}))], _where(cfg)
    )
    return (
        "regsweep sweep "
        + "".join(f"{shlex.quote(o)} " for o in own)
        + "{widened} "
        + shlex.quote(f"sweep.study={name}-wider")
    )


def importances(optuna_study: optuna.Study) -> dict[str, dict[str, float]]:
    """Optuna's parameter importances for val_accuracy and for gap ({} when too few trials).

    Optuna's default evaluator (PED-ANOVA) explains *low* target values: val_accuracy is negated.
    """
    signs = {VAL_ACCURACY: -1.0, GAP: 1.0}
    found = {}
    for metric, sign in signs.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the "low target values" note: handled by sign
                found[metric] = optuna.importance.get_param_importances(
                    optuna_study, target=lambda t, m=metric, s=sign: s * t.user_attrs.get(m, math.nan)
                )
        except (ValueError, RuntimeError, ZeroDivisionError):
            return {}
    return found


def register_models(name: str, found: results.Answer | None) -> dict[str, tuple[str, dict]]:
    """After re-evaluation, the answer's setting and the baseline, one seed each, as versions of
    the registered model `name` under the aliases `recommended` and `baseline`.

    A run already registered is not registered again, so a report with the same answer changes
    nothing, and one whose answer changed moves the alias to the new setting's version.
    """
    if found is None or found.verdict is None:
        return {}
    recommended = found.baseline if found.keep_baseline else found.chosen
    registered = {}
    for alias, summary in zip(report.ALIASES, (recommended, found.baseline)):
        run = results.representative_run(summary)
        version = tracking.registered_version(name, run["run_id"])
        if version is None:
            import_tensorflow_quietly()
            from regsweep import export  # lazy: TensorFlow, only to build a model not registered yet

            version = export.register(name, run["run_id"])
        tracking.set_alias(name, alias, version)
        registered[alias] = (version, run)
    return registered


def _log_report(parent_run_id: str, out_dir: Path, found: results.Answer | None) -> None:
    """The report's files as the parent run's artifacts, and the answer as its metrics and tag."""
    client = mlflow.MlflowClient()
    client.log_artifacts(parent_run_id, str(out_dir), artifact_path="report")
    if found is None:
        return
    if found.row is not None:
        for metric in (VAL_ACCURACY, GAP, TRAIN_ACCURACY):
            client.log_metric(parent_run_id, f"recommended_{metric}", getattr(found.row, metric))
    client.set_tag(parent_run_id, tracking.RECOMMENDED_TRIAL_TAG, found.label.lstrip("#"))


def report_study(
    study_name: str | None, overrides: list[str], reevaluate_first: bool = False, open_html: bool = False
) -> Path | None:
    """`regsweep report [study] [--reevaluate] [--open] [overrides]`: the end of a stored study
    again, from its Optuna storage and MLflow runs.

    It needs only where the study and the runs are stored, not the data or a search space;
    --reevaluate also re-trains what the rounds still ask for, which needs the study's data.
    """
    if study_name is not None:
        overrides = [f"sweep.study={study_name}", *overrides]
    cfg = compose_study(overrides)
    if reevaluate_first:
        space.check_reevaluation(cfg.sweep.reevaluate, needs_seeds=True)
    tracking.check_reachable(cfg.tracking)  # before the storage: nothing is read or created until both answer
    stored = study.load_study(cfg.sweep, cfg.tracking.connect_timeout)
    parent = stored.user_attrs.get(study.PARENT_RUN_ATTR)
    # The recorded overrides mask passwords: the ones given here (tracking.uri=...) win.
    start_from = reevaluate.merge(stored.user_attrs.get(study.BASE_OVERRIDES_ATTR, []), training_overrides(overrides))
    if reevaluate_first and parent is not None and not reevaluate.has_test_split(compose(start_from)):
        raise RegsweepError(
            "--reevaluate needs a test split: give data.test_dir (data=folders) "
            "or data.test_fraction (data=split) with the study's other data settings"
        )
    return end_study(
        stored, cfg, parent, start_from, reevaluating=reevaluate_first, finishing=False, open_html=open_html
    )

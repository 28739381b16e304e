"""The study as every worker shares it: Optuna storage, the study's record, its MLflow parent
run, silent trials, and the claim that lets one worker re-evaluate.

Optuna's storage is the one place all workers of a study meet (SQLite on one machine,
PostgreSQL across machines), so what they must agree on lives there, as study and trial
attributes named once below.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import random
import socket
import threading
import time
import uuid
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import mlflow
import optuna
import sqlalchemy
from omegaconf import DictConfig, OmegaConf

from regsweep import faults, space, tracking
from regsweep.config import RegsweepError, override_key, redact
from regsweep.metrics import GAP, TRAIN_ACCURACY, VAL_ACCURACY, VAL_IMAGES
from regsweep.results import TrialRow

log = logging.getLogger(__name__)

COUNTED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)

# Optuna attributes, defined once. On the study:
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # the study's MLflow parent run
DATA_FINGERPRINT_ATTR = "data_fingerprint"  # the images every worker must train on
CLAIM_ATTR = "reevaluation_claim"  # which worker re-evaluates (see `claim`)
REEVALUATION_ATTR = "reevaluation"  # the sweep.reevaluate settings it ran with: they define its verdict
# What makes it the same study (`study_record`). "objective" and "epsilon" are also the sweep
# settings' own keys, which `study_settings` restores from these.
OBJECTIVE_ATTR, EPSILON_ATTR = "objective", "epsilon"
SEARCH_SPACE_ATTR = "search_space"  # the search-space expressions, as given
BASE_OVERRIDES_ATTR = "base_overrides"  # the training overrides every trial starts from, passwords masked
RECORD_KEYS = (OBJECTIVE_ATTR, EPSILON_ATTR, SEARCH_SPACE_ATTR, BASE_OVERRIDES_ATTR)
BUDGET_ATTR = "n_trials"  # the latest sweep's sweep.n_trials: what a report counts "to go" against
TEST_SPLIT_ATTR = "test_split"  # whether the study's data has a test split to re-evaluate on
# On each trial:
RUN_ID_ATTR = "mlflow_run_id"
FAIL_REASON_ATTR = "fail_reason"
BASELINE_ATTR = "baseline"  # the enqueued trial of the config as given
OVERRIDES_ATTR = "overrides"  # the replay line, passwords masked
SHARED_IMAGES_ATTR = "shared_images"  # images whose content is in more than one split, for the report

INTERRUPTED = (
    "interrupted: the process running this trial stopped before the trial ended (killed, rebooted or out of memory)"
)


@dataclass
class Sweep:
    """Everything a study needs, resolved from the composed `study` config and the CLI."""

    settings: DictConfig  # cfg.sweep
    space: dict[str, optuna.distributions.BaseDistribution]
    expressions: dict[str, str]  # the search space as written, for the study's record
    base_overrides: list[str]  # applied to every trial before its own values
    base: DictConfig  # the training config every trial starts from
    cfg: DictConfig  # the training settings plus the sweep definition under `sweep`
    has_test_split: bool  # whether re-evaluation can score the result on untouched images
    data_fingerprint: str  # the images' content: workers on other machines must train on the same
    shared_images: list[list[str]]  # the same image content in more than one split (data.shared_images)


# --- storage -----------------------------------------------------------------------------------

# Each process opens one storage, so one SQLAlchemy engine, per URL and heartbeat, with a small
# pool: a process uses at most two connections at once (its main thread and Optuna's heartbeat
# thread), and many workers on one PostgreSQL must not exhaust its max_connections. The process's
# exit closes them.
POOL = {"pool_size": 2, "max_overflow": 1, "pool_pre_ping": True}
_STORAGES: dict[tuple[str, int | None], optuna.storages.RDBStorage] = {}


def open_storage(
    url: str, heartbeat_seconds: int | None = None, tracking_cfg: DictConfig | None = None, *, connect_timeout: float
) -> optuna.storages.RDBStorage:
    """The Optuna storage at `url`, opened once per process.

    A database server that does not answer stops the command after `connect_timeout` seconds
    (tracking.connect_timeout, shared with the tracking server): without it, psycopg waited for
    the kernel to give up on the connection, 130 s for a host that drops packets.

    With `heartbeat_seconds` (a sweep's), a trial whose process was killed (kill -9, reboot,
    pre-emption) stops beating and is marked FAIL once silent for twice that long; its MLflow run
    is then ended FAILED (see `end_stale_trial`). Without, any storage open on the URL will do.
    """
    if heartbeat_seconds is None:
        storage = next((opened for (at, _), opened in _STORAGES.items() if at == url), None)
    else:
        storage = _STORAGES.get((url, int(heartbeat_seconds)))
    if storage is not None:
        return storage
    heartbeat = {}
    if heartbeat_seconds is not None:
        heartbeat = {
            "heartbeat_interval": int(heartbeat_seconds),
            "grace_period": 2 * int(heartbeat_seconds),
            "heartbeat_stale_trial_callback": functools.partial(end_stale_trial, tracking_cfg=tracking_cfg),
        }
    try:
        storage = _create_storage(url, connect_timeout, heartbeat)
    except RegsweepError:  # a damaged SQLite file, already said in one sentence
        raise
    except Exception as error:
        if faults.problem(error) is not None:  # a full or read-only disk: said as such, by the command
            raise
        raise RegsweepError(
            f"sweep.storage={redact(url)} cannot be opened ({redact(str(error).splitlines()[0])[:200]}): "
            f"check the URL and that its database answers within tracking.connect_timeout ({connect_timeout:g} s), "
            "or leave it unset for the local SQLite file"
        ) from None
    _STORAGES[url, None if heartbeat_seconds is None else int(heartbeat_seconds)] = storage
    return storage


def _create_storage(url: str, connect_timeout: float, heartbeat: dict, attempts: int = 5) -> optuna.storages.RDBStorage:
    """Opens the storage, creating Optuna's tables in a new database.

    Workers that start together on a new database server race to create the tables: one wins,
    and the others fail on a duplicate table or type. Those try again a moment later, when the
    tables exist. (A local SQLite file is created under a file lock instead.) A server that does
    not answer is not tried again: its timeout is the whole wait.
    """
    engine_kwargs = {} if url.startswith("sqlite") else dict(POOL)
    if bounded := tracking.connect_args(url, connect_timeout):  # PostgreSQL's and MySQL's drivers, among others
        engine_kwargs["connect_args"] = bounded

    def create() -> optuna.storages.RDBStorage:
        with tracking.creating(url), warnings.catch_warnings():
            # Optuna 5 still calls its trial heartbeat experimental; the constraints file pins the
            # release it was tested with (tests/test_recovery.py kills workers to check it).
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)

    for _ in range(attempts - 1):
        try:
            return create()
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            time.sleep(0.5 + random.random())
    return create()


def load_study(settings: DictConfig, connect_timeout: float) -> optuna.Study:
    """A stored study, for reports and the UI: it must exist (a missing SQLite file is not
    created just to say so)."""
    url = str(settings.storage)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        raise RegsweepError(
            f"no study named '{settings.study}': there is no study storage at {url.removeprefix('sqlite:///')}: run "
            "`regsweep sweep` first, or run this in the folder that holds mlruns/ (or give paths.store=<folder>)"
        )
    try:
        return optuna.load_study(
            study_name=settings.study, storage=open_storage(str(settings.storage), connect_timeout=connect_timeout)
        )
    except KeyError:
        raise RegsweepError(
            f"no study named '{settings.study}' in {redact(str(settings.storage))}: run `regsweep sweep` first, "
            "or name an existing study (sweep.study=<name>)"
        ) from None


# --- opening a study ---------------------------------------------------------------------------


# Where things live on a machine: workers on several machines give different values, and the
# trials' outcome does not depend on them (the data's content is checked by its fingerprint).
MACHINE_LOCAL_KEYS = (
    "data.train_dir",
    "data.val_dir",
    "data.test_dir",
    "data.dir",
    "tracking.uri",
    "tracking.artifact_root",
)
MACHINE_LOCAL_GROUPS = ("paths.", "cache.")


def portable(overrides: list[str]) -> list[str]:
    """The overrides two workers of one study must agree on, wherever they run."""
    return [
        o
        for o in overrides
        if override_key(o) not in MACHINE_LOCAL_KEYS and not override_key(o).startswith(MACHINE_LOCAL_GROUPS)
    ]


def study_record(sweep: Sweep) -> dict:
    """What makes two invocations the same study; a mismatch on resume is refused."""
    s = sweep.settings
    return {
        OBJECTIVE_ATTR: s.objective,
        EPSILON_ATTR: float(s.epsilon),
        SEARCH_SPACE_ATTR: sweep.expressions,
        BASE_OVERRIDES_ATTR: [redact(o) for o in sweep.base_overrides],  # no password is stored
    }


def open_study(sweep: Sweep) -> optuna.Study:
    """Creates the study, or loads it and checks that it is the same study.

    Exactly one process creates a study (the storage refuses a second name), and only the
    creator records its definition and enqueues the baseline: two workers started at once on
    a new study never enqueue two baselines.
    """
    s = sweep.settings
    storage = open_storage(
        str(s.storage), s.heartbeat_seconds, sweep.cfg.tracking, connect_timeout=sweep.cfg.tracking.connect_timeout
    )
    options = {
        "study_name": s.study,
        "storage": storage,
        "directions": ["maximize", "minimize"] if s.objective == "pareto" else ["maximize"],
        "pruner": space.make_pruner(s),
        "sampler": space.make_sampler(s),
    }
    record = study_record(sweep)
    try:
        study = optuna.create_study(**options)
        created = True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.create_study(**options, load_if_exists=True)
        created = False
    if not created:  # another worker may have just created it: wait for its record
        _wait_for_record(study, record)
    if not all(key in study.user_attrs for key in record):  # new (or its creator died at once)
        # The parent run comes first and the record last: a worker that sees the record also
        # finds the one parent run, and the baseline is enqueued once.
        parent_run(study, sweep)
        baseline = space.baseline_values(sweep.space, sweep.base)
        if baseline:
            study.enqueue_trial(baseline, user_attrs={BASELINE_ATTR: True})
        check_same_data(study, sweep)  # records the images' fingerprint
        study.set_user_attr(SHARED_IMAGES_ATTR, sweep.shared_images)
        for key, value in record.items():
            study.set_user_attr(key, value)
        return study
    check_same_data(study, sweep)
    previous, current = (_comparable({key: values.get(key) for key in record}) for values in (study.user_attrs, record))
    changed = [key for key in current if previous[key] != current[key]]
    if changed:
        raise RegsweepError(
            f"study '{s.study}' in {redact(str(s.storage))} was started with a different {', '.join(changed)} "
            f"({'; '.join(f'{k} was {previous[k]}, now {current[k]}' for k in changed)}): "
            "re-run with the original settings, "
            "or start a new study with sweep.study=<new name>"
        )
    return study


def baseline_unfinished(study: optuna.Study) -> bool:
    """Whether the study's baseline trial has only failed or is still marked running (a killed
    command's, which the next command marks FAIL): this command will run it again."""
    states = {t.state for t in study.get_trials(deepcopy=False) if t.user_attrs.get(BASELINE_ATTR)}
    return bool(states) and states <= {optuna.trial.TrialState.FAIL, optuna.trial.TrialState.RUNNING}


def requeue_failed_baseline(study: optuna.Study, sweep: Sweep) -> bool:
    """Runs the baseline trial again, first, when every run of it failed (Ctrl-C, SIGTERM, a kill,
    a full disk, memory, or an error that may since be fixed): every answer is measured against
    it, so a resume must not go on without. Returns whether it was queued."""
    baselines = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get(BASELINE_ATTR)]
    if not baselines or any(t.state != optuna.trial.TrialState.FAIL for t in baselines):
        return False
    values = space.baseline_values(sweep.space, sweep.base)
    if values:
        study.enqueue_trial(values, user_attrs={BASELINE_ATTR: True}, skip_if_exists=False)
    return bool(values)


def _comparable(record: dict) -> dict:
    """A study record as two workers must agree on it (see `portable`)."""
    return {**record, BASE_OVERRIDES_ATTR: portable(record[BASE_OVERRIDES_ATTR] or [])}


def check_same_data(study: optuna.Study, sweep: Sweep) -> None:
    """Every worker, on every machine, trains on the same images (a study recorded before this
    check adopts the first fingerprint it sees)."""
    recorded = study.user_attrs.get(DATA_FINGERPRINT_ATTR)
    if recorded is None:
        study.set_user_attr(DATA_FINGERPRINT_ATTR, sweep.data_fingerprint)
    elif recorded != sweep.data_fingerprint:
        raise RegsweepError(
            f"study '{study.study_name}' was run on other images (data fingerprint {recorded}, here "
            f"{sweep.data_fingerprint}): point data.* at the same images on every machine, or start a new study "
            "with sweep.study=<new name>"
        )


def _wait_for_record(study: optuna.Study, record: dict, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not all(key in study.user_attrs for key in record) and time.monotonic() < deadline:
        time.sleep(0.2)


def study_settings(study: optuna.Study, cfg: DictConfig, reevaluating: bool = False) -> DictConfig:
    """The sweep settings, with the study's own objective and ε (fixed when it was created) and,
    unless this command re-evaluates, the re-evaluation settings its runs were trained with:
    they define its answer, whatever a later `regsweep report` says."""
    recorded = {k: study.user_attrs[k] for k in (OBJECTIVE_ATTR, EPSILON_ATTR) if k in study.user_attrs}
    if not reevaluating and study.user_attrs.get(REEVALUATION_ATTR):
        recorded["reevaluate"] = study.user_attrs[REEVALUATION_ATTR]
    return OmegaConf.merge(cfg.sweep, recorded)


def record_budget(study: optuna.Study, n_trials: int, test_split: bool) -> None:
    """The budget this sweep runs to, so that `regsweep report` can tell a study in progress,
    and whether its data has a test split, so that the report says how to confirm its answer."""
    for key, value in ((BUDGET_ATTR, n_trials), (TEST_SPLIT_ATTR, test_split)):
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)


def in_progress(study: optuna.Study) -> str:
    """ "in progress: 1 complete, 1 running, 2 to go" while trials run or the budget is not met,
    else "": a report read mid-study is provisional."""
    states = [t.state for t in study.get_trials(deepcopy=False)]
    counted = sum(state in COUNTED for state in states)
    running = states.count(optuna.trial.TrialState.RUNNING)
    to_go = max(0, int(study.user_attrs.get(BUDGET_ATTR, 0)) - counted - running)
    if not running and not to_go:
        return ""
    complete = states.count(optuna.trial.TrialState.COMPLETE)
    pruned = states.count(optuna.trial.TrialState.PRUNED)
    return (
        f"in progress: {complete} complete"
        + (f", {pruned} pruned" if pruned else "")
        + f", {running} running, {to_go} to go"
    )


def record_reevaluation(study: optuna.Study, settings: DictConfig) -> None:
    """Records the sweep.reevaluate settings the claim holder re-evaluates with."""
    study.set_user_attr(REEVALUATION_ATTR, OmegaConf.to_container(settings, resolve=True))


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    """Every trial of the study, as the decisions in regsweep.results read them."""
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        rows.append(
            TrialRow(
                number=trial.number,
                state=trial.state.name,
                params=dict(trial.params),
                val_accuracy=attrs.get(VAL_ACCURACY, math.nan),
                train_accuracy=attrs.get(TRAIN_ACCURACY, math.nan),
                gap=attrs.get(GAP, math.nan),
                val_images=int(attrs.get(VAL_IMAGES, 0)),
                overrides=list(attrs.get(OVERRIDES_ATTR, [])),
                run_id=attrs.get(RUN_ID_ATTR, ""),
                baseline=bool(attrs.get(BASELINE_ATTR, False)),
                fail_reason=attrs.get(FAIL_REASON_ATTR, ""),
            )
        )
    return rows


# --- the MLflow parent run ------------------------------------------------------------------------


def parent_run(study: optuna.Study, sweep: Sweep) -> str:
    """The study's one parent run: found again on resume, created once."""
    tracking.use_store(sweep.cfg.tracking)
    client = mlflow.MlflowClient()
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if run_id is not None:
        try:
            run = client.get_run(run_id)
            if run.info.lifecycle_stage == "active":
                client.update_run(run_id, status="RUNNING")
                if tracking.ERROR_TAG in run.data.tags:  # why an earlier invocation stopped: resumed now
                    client.delete_tag(run_id, tracking.ERROR_TAG)
                return run_id
        except mlflow.exceptions.MlflowException:
            pass  # deleted from the tracking store: start a new parent
    experiment_id = mlflow.get_experiment_by_name(sweep.cfg.tracking.experiment).experiment_id
    s = sweep.settings
    run = client.create_run(
        experiment_id,
        run_name=f"study {s.study}",
        tags={tracking.STUDY_TAG: s.study, tracking.ROLE_TAG: "study"},
    )
    run_id = run.info.run_id
    client.log_batch(
        run_id,
        params=[
            mlflow.entities.Param(k, redact(str(v))[:6000])
            for k, v in {
                "sweep.study": s.study,
                "sweep.objective": s.objective,
                "sweep.epsilon": s.epsilon,
                "sweep.n_trials": s.n_trials,
                "sweep.sampler": s.sampler.name,
                "sweep.pruner": s.pruner.name,
                "sweep.storage": s.storage,
                **{f"search.{k}": v for k, v in sweep.expressions.items()},
                "base_overrides": " ".join(sweep.base_overrides),
            }.items()
        ],
    )
    client.log_text(run_id, redact(OmegaConf.to_yaml(sweep.cfg.sweep, resolve=True)), "sweep.yaml")
    study.set_user_attr(PARENT_RUN_ATTR, run_id)
    return run_id


# --- silent trials and other workers -----------------------------------------------------------


def end_stale_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial, tracking_cfg: DictConfig) -> None:
    """Optuna has just marked a silent trial FAIL: its MLflow run must not stay RUNNING either.

    The trial already carries its reason: every trial starts with `fail_reason` = INTERRUPTED,
    replaced when it ends by itself.
    """
    run_id = trial.user_attrs.get(RUN_ID_ATTR)
    if not run_id:
        return
    tracking.use_store(tracking_cfg)
    if mlflow.MlflowClient().get_run(run_id).info.status == "RUNNING":
        tracking.fail_run(run_id, trial.user_attrs.get(FAIL_REASON_ATTR) or INTERRUPTED)


def end_orphaned_runs(study: optuna.Study, tracking_cfg: DictConfig) -> None:
    """A trial that failed while its tracking server was silent could not end its MLflow run: the
    next command ends it FAILED, with the trial's reason, so the two stores agree again."""
    failed = {
        t.user_attrs[RUN_ID_ATTR]: t
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
        if t.user_attrs.get(RUN_ID_ATTR)
    }
    if not failed:
        return
    tracking.use_store(tracking_cfg)
    experiment = mlflow.get_experiment_by_name(tracking_cfg.experiment)
    running = mlflow.MlflowClient().search_runs(
        [experiment.experiment_id],
        f"tags.`{tracking.STUDY_TAG}` = '{study.study_name}' and attributes.status = 'RUNNING'",
    )
    for run in running:
        if (trial := failed.get(run.info.run_id)) is not None:
            tracking.fail_run(run.info.run_id, trial.user_attrs.get(FAIL_REASON_ATTR) or INTERRUPTED)


def fail_stale_trials(study: optuna.Study) -> None:
    """Optuna's own check for silent trials, which study.optimize runs before each new trial; run
    also at the start and while waiting for other workers. (Experimental in Optuna 5, like the
    heartbeat itself: see `_create_storage`.)"""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def wait_for_other_workers(study: optuna.Study, poll_seconds: float = 2.0) -> None:
    """Waits until no trial of the study is running: the re-evaluation and the report need them
    all. A trial of a worker that died stops beating and is marked FAIL, which ends the wait."""
    announced = False
    while True:
        fail_stale_trials(study)
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not running:
            return
        if not announced:
            numbers = ", ".join(f"#{t.number}" for t in running)
            log.info(
                f"Waiting for {len(running)} trial(s) still running in other workers ({numbers}) "
                "before the re-evaluation and report."
            )
            announced = True
        time.sleep(poll_seconds)


# --- one worker re-evaluates -------------------------------------------------------------------


def claim(study: optuna.Study, heartbeat_seconds: float, settle_seconds: float = 5.0) -> tuple[str | None, str]:
    """Claims the study's re-evaluation for this process: (token, this worker), or (None, the
    holder) when another worker holds it.

    Workers that finish together all write their claim, wait `settle_seconds`, and read it back:
    the last write wins for every reader, so exactly one goes on. A worker that arrives later
    finds a live claim and leaves the work to its holder. The holder renews it every heartbeat
    (`keeping`); a claim not renewed for its lease (three heartbeats), or whose process is gone
    from this machine, is dead, and taken over.
    """
    holder = claim_holder(study)
    if holder is not None:
        return None, holder
    token, worker = uuid.uuid4().hex, f"{socket.gethostname()} pid {os.getpid()}"
    lease = max(3.0 * heartbeat_seconds, 2.0 * settle_seconds)  # the settling itself renews nothing
    study.set_user_attr(
        CLAIM_ATTR,
        {
            "token": token,
            "worker": worker,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "renewed": time.time(),
            "lease": lease,
        },
    )
    time.sleep(settle_seconds)
    held = study.user_attrs.get(CLAIM_ATTR) or {}
    return (token, worker) if held.get("token") == token else (None, held.get("worker", "unknown"))


@contextmanager
def keeping(study: optuna.Study, token: str, heartbeat_seconds: float):
    """Renews the claim every heartbeat from a thread while the block runs: the claim lives
    exactly as long as its holder, whatever one re-evaluation run takes."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat_seconds):
            try:
                if not renew(study, token):
                    return  # taken over: the new holder renews it
            except Exception:
                pass

    thread = threading.Thread(target=beat, name="regsweep-claim-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=heartbeat_seconds + 30)


def claim_holder(study: optuna.Study) -> str | None:
    """The worker that holds a live claim, else None. A claim is live while it is renewed within
    its lease; one whose holder ran on this machine and is gone (killed, even with kill -9) is
    dead at once, so the same command, re-run, resumes without waiting out the lease."""
    held = study.user_attrs.get(CLAIM_ATTR)
    if not held or time.time() - held["renewed"] >= held.get("lease", lease_seconds(study)):
        return None
    if held.get("host") == socket.gethostname() and not _alive(held.get("pid", 0)):
        return None
    return held["worker"]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return pid > 0


def renew(study: optuna.Study, token: str) -> bool:
    """Keeps the claim fresh while its holder works; False if another worker has taken it over."""
    held = study.user_attrs.get(CLAIM_ATTR) or {}
    if held.get("token") != token:
        return False
    study.set_user_attr(CLAIM_ATTR, {**held, "renewed": time.time()})
    return True


def release(study: optuna.Study, token: str) -> None:
    if (study.user_attrs.get(CLAIM_ATTR) or {}).get("token") == token:
        study.set_user_attr(CLAIM_ATTR, None)


def lease_seconds(study: optuna.Study) -> float:
    """The lease of a claim written before claims carried their own (regsweep 0.x renewed only
    between runs): three of the study's longest trials, at least 10 minutes."""
    durations = [
        (t.datetime_complete - t.datetime_start).total_seconds()
        for t in study.get_trials(deepcopy=False)
        if t.datetime_complete is not None and t.datetime_start is not None
    ]
    return max(600.0, 3 * max(durations, default=0.0))

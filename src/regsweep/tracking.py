"""MLflow logging: one run per training, with everything needed to compare and replay it.

Names are fixed so that `train`, sweep trials and the report agree: per-epoch curves are
`epoch_loss`, `epoch_accuracy` (Keras's running accuracy: dropout on, augmented images),
`epoch_val_loss`, `epoch_val_accuracy`; final figures are `train_accuracy`, `val_accuracy`,
`gap` (both in inference mode, un-augmented) and `running_train_accuracy`.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import io
import logging
import math
import os
import tempfile
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import mlflow
import numpy as np
from mlflow.entities import Metric
from omegaconf import DictConfig, OmegaConf

from regsweep import faults, plots
from regsweep.config import RegsweepError, flatten, redact
from regsweep.files import file_lock

# The tags that tie MLflow runs to their study, defined once: sweeps write them, reports and the
# MLflow UI's search box read them (e.g. tags.`regsweep.role` = 'reeval').
STUDY_TAG = "regsweep.study"  # the study's name, on its parent run and every child
ROLE_TAG = "regsweep.role"  # "study" on the parent run, "reeval" on a re-evaluation run
TRIAL_NUMBER_TAG = "regsweep.trial_number"
TRIAL_STATE_TAG = "regsweep.trial_state"  # the Optuna state: RUNNING, COMPLETE, PRUNED or FAIL
ERROR_TAG = "regsweep.error"  # why a run ended FAILED or KILLED
REEVAL_TAG = "reeval"  # a re-evaluation's setting: "baseline" or "#<trial number>"
REEVAL_KEY_TAG = "regsweep.reeval_key"  # (setting, seed): what a later report finds already trained
RECOMMENDED_TRIAL_TAG = "regsweep.recommended_trial"  # on the parent run, after the report
SKIPPED_FILES_TAG = "regsweep.skipped_files"
PARENT_TAG = "mlflow.parentRunId"  # MLflow's own: nests a run under the study's parent run

log = logging.getLogger(__name__)

LIBRARIES = ("regsweep", "tensorflow", "keras", "hydra-core", "optuna", "mlflow", "numpy", "scikit-learn")


@contextmanager
def creating(url: str):
    """Serializes the first use of a local SQLite file between processes on this machine.

    Two sweeps started together on a new store would otherwise both create its tables, and the
    slower one fails with "table ... already exists" (measured with Optuna's storage). Other
    URLs are servers that handle this themselves. A file that is there but damaged is refused
    in one sentence first (regsweep.faults.check_database).
    """
    if not url.startswith("sqlite:///"):
        yield
        return
    path = Path(url.removeprefix("sqlite:///"))
    faults.check_database(path)
    with file_lock(path.with_name(path.name + ".lock")):
        yield


def use_store(tracking: DictConfig) -> str:
    """Points MLflow at the configured store and experiment; returns the experiment id."""
    uri = str(tracking.uri)
    check_reachable(tracking)
    with creating(uri):
        return _use_store(tracking, uri)


_REACHED: set[str] = set()

# MLflow's database stores (SQLite aside: a local file, nothing to wait for).
DATABASES = ("postgresql", "mysql", "mssql")


def check_reachable(tracking: DictConfig) -> None:
    """Stops at once, in one sentence, when the tracking server or database does not answer within
    tracking.connect_timeout seconds. MLflow's own client retries for minutes in silence (its
    database store for about two, then prints a 200-line traceback).

    Any HTTP answer counts, even a 401 or a 404: the server is there.
    """
    uri = str(tracking.uri)
    timeout = float(tracking.connect_timeout)
    if uri.startswith(("http://", "https://")):
        bound_patience(timeout)
    if uri in _REACHED:
        return
    if uri.startswith(("http://", "https://")):
        _check_server(uri, timeout)
    elif _backend(uri) in DATABASES:
        check_database_reachable(uri, timeout, "tracking.uri")
    else:
        return
    _REACHED.add(uri)


# --- a tracking server that stops answering ----------------------------------------------------

_HTTP_SETTINGS = (
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
)
_SET_BY_USER = {name for name in _HTTP_SETTINGS if name in os.environ}


def bound_patience(timeout: float) -> None:
    """MLflow's client waits 120 s for each answer and tries 8 times with doubling pauses, so a
    tracking server that stopped answering kept a trial RUNNING and the sweep silent for over 15
    minutes. Here each try waits tracking.connect_timeout (T), and 4 retries pause 0, 2T, 4T and
    8T: a server that refuses (restarting) is retried for about 14 T, 2 min 20 s by default, and
    a silent one is given up on after at most about 19 T (faults.SILENCE_FACTOR). Read by MLflow at each
    request, and inherited by the worker processes. A variable the user set wins."""
    seconds = max(1, math.ceil(timeout))
    wanted = {
        "MLFLOW_HTTP_REQUEST_TIMEOUT": seconds,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": 4,
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": seconds,
    }
    for name, value in wanted.items():
        if name not in _SET_BY_USER:
            os.environ[name] = str(value)


@contextmanager
def one_try():
    """MLflow calls with no retry: the best-effort writes after the server has gone silent (ending
    the run locally must not wait out the whole patience again)."""
    saved = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = saved


def watch(tracking: DictConfig) -> threading.Event:
    """Watches a tracking server for the command's length: one line when it stops answering, one
    when it answers again. Set the returned event to stop watching (nothing to watch locally).

    MLflow's client retries in silence; without these lines a user sees a sweep that seems to hang.
    """
    done = threading.Event()
    uri = str(tracking.uri)
    if uri.startswith(("http://", "https://")):
        seconds = float(tracking.connect_timeout)
        threading.Thread(target=_watch, args=(uri, seconds, done), name="regsweep-watch", daemon=True).start()
    return done


def _watch(uri: str, seconds: float, done: threading.Event) -> None:
    silent_since = None
    while not done.wait(seconds):
        answered = unanswered(f"{uri.rstrip('/')}/health", seconds) is None
        if done.is_set():
            return
        if not answered and silent_since is None:
            silent_since = time.monotonic()
            log.warning(
                "the tracking server %s stopped answering (nothing within tracking.connect_timeout, %g s); "
                "MLflow keeps trying for about %d × that, then the command stops and the same command resumes",
                redact(uri),
                seconds,
                faults.SILENCE_FACTOR,
            )
        elif answered and silent_since is not None:
            log.warning(
                "the tracking server %s answers again, after %.0f s",
                redact(uri),
                time.monotonic() - silent_since,
            )
            silent_since = None


def _backend(url: str) -> str:
    """`postgresql` for postgresql+psycopg://...: the database, whichever driver the URL names."""
    return url.split("://", 1)[0].split("+", 1)[0]


def unanswered(url: str, timeout: float) -> str | None:
    """Why nothing answered an HTTP GET of `url` within `timeout` seconds, or None when something
    did: any answer counts, even a 401 or a 404 (the server is there). Every probe of a server
    regsweep makes goes through here."""
    import requests  # lazy: an MLflow dependency, needed only for a server URL

    try:
        requests.get(url, timeout=timeout)
    except requests.Timeout:
        return f"no answer within {timeout:g} s"
    except requests.RequestException:
        return "the connection was refused or the host is unknown"
    return None


def _check_server(uri: str, timeout: float) -> None:
    if (why := unanswered(f"{uri.rstrip('/')}/health", timeout)) is not None:
        raise RegsweepError(
            f"tracking.uri={redact(uri)} cannot be reached ({why}): start the server or fix the URL, "
            "or raise tracking.connect_timeout for a slow network"
        )


# The pip package of each database driver SQLAlchemy may import, where it is not the module's name.
DRIVER_PACKAGES = {
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "psycopg": "'psycopg[binary]'",
    "psycopg2": "psycopg2-binary",
    "mysql": "mysql-connector-python",
}


def check_database_reachable(url: str, timeout: float, setting: str) -> None:
    """Opens and closes one connection to the database at `url`, and gives up after `timeout`
    seconds whatever the driver does: one that ignores its own timeout cannot hang a command."""
    import sqlalchemy  # lazy: MLflow's and Optuna's dependency, needed only for a database URL

    outcome: list[BaseException | None] = []

    def connect() -> None:
        try:
            engine = sqlalchemy.create_engine(
                url, connect_args=connect_args(url, timeout), poolclass=sqlalchemy.pool.NullPool
            )
            try:
                with engine.connect():
                    pass
            finally:
                engine.dispose()
            outcome.append(None)
        except Exception as error:
            outcome.append(error)

    attempt = threading.Thread(target=connect, name="regsweep-connect", daemon=True)
    attempt.start()
    attempt.join(timeout)
    ended = outcome[:]  # read once: the attempt may still end while this reads
    if ended == [None]:
        return
    error = ended[0] if ended else None
    if isinstance(error, ModuleNotFoundError):
        module = error.name or "its driver"
        raise RegsweepError(
            f"{setting}={redact(url)} needs the database driver {module}, which is not installed: "
            f"pip install {DRIVER_PACKAGES.get(module, module)}, or name an installed one in the URL "
            f"({_backend(url)}+<driver>://...)"
        ) from None
    if error is None:
        why = f"no answer within {timeout:g} s"
    else:
        reason = getattr(error, "orig", None) or error  # the driver's own message, without SQLAlchemy's links
        lines = str(reason).strip().splitlines()
        why = redact(lines[0] if lines else type(reason).__name__)[:200]
    raise RegsweepError(
        f"{setting}={redact(url)} cannot be reached ({why}): start the database server or fix the URL "
        "(host, port, user, password, database), or raise tracking.connect_timeout for a slow network"
    ) from None


# Each driver's own connect timeout, by SQLAlchemy's driver name; whole seconds, at least 2 (libpq's rule).
TIMEOUT_ARGUMENTS = {
    "psycopg": "connect_timeout",
    "psycopg2": "connect_timeout",
    "mysqldb": "connect_timeout",
    "pymysql": "connect_timeout",
    "pyodbc": "timeout",
}


def connect_args(url: str, timeout: float) -> dict[str, int]:
    """SQLAlchemy's connect_args that bound a new connection to `url` by `timeout` seconds, for
    the drivers above; {} for the others (SQLite among them)."""
    import sqlalchemy

    argument = TIMEOUT_ARGUMENTS.get(sqlalchemy.engine.make_url(url).get_driver_name())
    return {argument: max(2, math.ceil(timeout))} if argument else {}


def _use_store(tracking: DictConfig, uri: str) -> str:
    user_uri = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    # MLflow also exports the URI to MLFLOW_TRACKING_URI, which tracking.uri's ${oc.env:...}
    # default would then read for every later run in this process (multirun, tests): undo that.
    if user_uri is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = user_uri
    experiment = mlflow.get_experiment_by_name(tracking.experiment)
    experiment_id = experiment.experiment_id if experiment is not None else _create_experiment(tracking)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _create_experiment(tracking: DictConfig) -> str:
    """Creates the experiment; if another worker created it a moment ago, uses theirs.

    A local store keeps artifacts under tracking.artifact_root; a tracking server decides
    where they go (its --artifacts-destination), so every worker can reach them.
    """
    location = None
    if not str(tracking.uri).startswith(("http://", "https://")):
        artifacts = Path(tracking.artifact_root).resolve()
        artifacts.mkdir(parents=True, exist_ok=True)
        location = artifacts.as_uri()
    try:
        return mlflow.create_experiment(tracking.experiment, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        experiment = mlflow.get_experiment_by_name(tracking.experiment)
        if experiment is None:
            raise
        return experiment.experiment_id


@contextmanager
def training_run(
    cfg: DictConfig,
    name: str,
    class_names,
    fingerprints: dict[str, str],
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
):
    """An MLflow run holding the config, dataset identity and versions.

    It ends FINISHED, FAILED (with the reason in the tag `regsweep.error`) or, on Ctrl-C,
    KILLED: never left RUNNING. `parent_run_id` nests it under a study's parent run.
    """
    use_store(cfg.tracking)
    run = mlflow.start_run(run_name=name, parent_run_id=parent_run_id, tags=tags)
    try:
        mlflow.log_params({**flatten(cfg), "data.class_names": ",".join(class_names), **fingerprints})
        mlflow.log_text(redact(OmegaConf.to_yaml(cfg, resolve=True)), "config.yaml")
        mlflow.log_dict({"class_names": list(class_names)}, "class_names.json")
        mlflow.set_tags({f"version.{lib}": _version(lib) for lib in LIBRARIES})
        yield run
    except BaseException as error:
        faults.free_reserve(Path(cfg.paths.store), error)
        stop = error if isinstance(error, KeyboardInterrupt) else faults.requested_stop()
        silent = faults.kind(error) == faults.SILENT  # nothing reaches the server: the next command ends the run
        with contextlib.suppress(Exception):  # a full disk may refuse it: the run's end still matters more
            if not silent:
                mlflow.set_tag(ERROR_TAG, faults.stop_reason(stop) if stop else error_summary(error))
        with contextlib.suppress(Exception), one_try():  # refused too: the next command ends the run
            mlflow.end_run("KILLED" if stop else "FAILED")
        if stop is None:
            raise
        stop.add_note(f"MLflow run {run.info.run_id} ({name}) ended KILLED")
        if stop is error:
            raise
        raise stop from error  # the stop that TensorFlow's clean-up replaced
    mlflow.end_run("FINISHED")


def log_skipped_files(paths) -> None:
    mlflow.set_tag(SKIPPED_FILES_TAG, str(len(paths)))
    mlflow.log_text("\n".join(paths) + "\n", "skipped_files.txt")


def fail_run(run_id: str, reason: str) -> None:
    """Ends a trial's MLflow run FAILED, with the reason, whichever process finds it orphaned."""
    client = mlflow.MlflowClient()
    client.set_tag(run_id, ERROR_TAG, reason)
    client.set_tag(run_id, TRIAL_STATE_TAG, "FAIL")
    client.set_terminated(run_id, "FAILED")


def stop_run(run_id: str, reason: str) -> None:
    """Ends a run KILLED with the stop's reason (as `training_run` does for a stop inside it)."""
    client = mlflow.MlflowClient()
    client.set_tag(run_id, ERROR_TAG, reason)
    client.set_terminated(run_id, "KILLED")


def error_summary(error: BaseException) -> str:
    """`Type: first line of the message`, secrets masked, short enough for a tag; a full or
    read-only disk is said as such ("no space left on device: <path>")."""
    if (disk := faults.reason(error)) is not None:
        return redact(disk)[:500]
    if faults.out_of_memory(error):
        return faults.OUT_OF_MEMORY
    lines = str(error).strip().splitlines()
    return redact(f"{type(error).__name__}: {lines[0] if lines else ''}")[:500]


def _version(library: str) -> str:
    try:
        return importlib.metadata.version(library)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


class EpochLog:
    """Keras's per-epoch logs as `epoch_<name>`, stepped by the global epoch, written in batches.

    One MLflow write per epoch was most of a short epoch's logging cost. Epochs are held and
    written together when the fit ends (however it ends), or once FLUSH_SECONDS have passed
    since the last write: the MLflow UI's curves lag a running trial by at most that, and a
    process killed mid-trial loses at most that much of a curve whose run is marked FAILED.
    """

    FLUSH_SECONDS = 5.0
    BATCH = 1000  # MLflow's limit of metrics per log_batch

    def __init__(self, run_id: str):
        self.run_id, self.pending, self.last_flush = run_id, [], time.monotonic()

    def epoch_end(self, epoch: int, logs: dict | None) -> None:
        stamp = int(time.time() * 1000)
        self.pending += [Metric(f"epoch_{k}", float(v), stamp, epoch) for k, v in (logs or {}).items()]
        if time.monotonic() - self.last_flush >= self.FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        client = mlflow.MlflowClient()
        for start in range(0, len(self.pending), self.BATCH):
            client.log_batch(self.run_id, metrics=self.pending[start : start + self.BATCH])
        self.pending, self.last_flush = [], time.monotonic()

    def __enter__(self) -> EpochLog:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        """A pruned, failed or stopped fit's last epochs are written too, without hiding the
        error that ended it if the store refuses them as well."""
        if error is None:
            self.flush()
        else:
            with contextlib.suppress(Exception):
                self.flush()


PER_IMAGE_ARTIFACT = "per_image_correct.json"


def log_per_image_correct(correct: dict[str, np.ndarray]) -> None:
    """Per split, one character per image in file order: "1" where the prediction was right."""
    mlflow.log_dict(
        {split: "".join("1" if right else "0" for right in values) for split, values in correct.items()},
        PER_IMAGE_ARTIFACT,
    )


_PER_IMAGE: dict[str, dict[str, str]] = {}  # artifact URI → its results, read once per process


def load_per_image_correct(artifact_uri: str) -> dict[str, str]:
    """What log_per_image_correct wrote, or {} for a run logged without it.

    Only FINISHED runs are read, and their artifacts no longer change: the re-evaluation's
    checks and the report read the same files several times in one process, from a server too.
    """
    if artifact_uri not in _PER_IMAGE:
        try:
            _PER_IMAGE[artifact_uri] = mlflow.artifacts.load_dict(f"{artifact_uri}/{PER_IMAGE_ARTIFACT}")
        except Exception:
            _PER_IMAGE[artifact_uri] = {}
    return _PER_IMAGE[artifact_uri]


def log_results(
    metrics: dict[str, float],
    history: dict[str, list[float]],
    phase2_start: int | None,
    confusion: np.ndarray,
    class_names,
    with_plots: bool,
) -> None:
    """Final metrics and the confusion matrix (as numbers); `with_plots`, the learning curve
    and the confusion matrix as pictures.

    Rendering the plots takes most of a cached trial's logging time, so a sweep keeps them for
    the trials that can be recommended (tracking.artifacts=best).
    """
    mlflow.log_metrics(metrics)
    mlflow.log_dict(
        {"class_names": list(class_names), "rows_true_columns_predicted": confusion.tolist()}, "confusion_matrix.json"
    )
    if not with_plots:
        return
    mlflow.log_figure(plots.learning_curve_figure(history, phase2_start), "plots/learning_curve.png")
    mlflow.log_figure(plots.confusion_figure(confusion, class_names), "plots/confusion_matrix.png")


# --- what a run trained, and the Model Registry --------------------------------------------------

TRAINED_WEIGHTS = "trained/weights.npz"  # the head and the unfrozen blocks: regsweep.model.trained_weights
REBUILD_RECIPE = "trained/rebuild.json"  # the backbone, its weights' digest, image size, classes


def log_trained(arrays: dict[str, np.ndarray], recipe: dict) -> None:
    """Every run keeps what it trained, and how to rebuild the rest: a few MB, not the whole backbone."""
    with tempfile.TemporaryDirectory() as folder:
        np.savez(Path(folder) / "weights.npz", **arrays)
        mlflow.log_artifact(str(Path(folder) / "weights.npz"), artifact_path="trained")
    mlflow.log_dict(recipe, REBUILD_RECIPE)


def load_trained(run_id: str) -> tuple[dict, dict[str, np.ndarray]]:
    """The recipe and the trained weights `log_trained` wrote for a run."""
    client = mlflow.MlflowClient()
    try:
        run = client.get_run(run_id)
    except mlflow.exceptions.MlflowException:
        raise RegsweepError(
            f"no MLflow run {run_id} in {redact(mlflow.get_tracking_uri())}: "
            "copy the run id from the MLflow UI, or point tracking.uri at the store that holds it"
        ) from None
    with tempfile.TemporaryDirectory() as folder:
        try:
            recipe = mlflow.artifacts.load_dict(f"{run.info.artifact_uri}/{REBUILD_RECIPE}")
            weights = mlflow.artifacts.download_artifacts(f"{run.info.artifact_uri}/{TRAINED_WEIGHTS}", dst_path=folder)
        except Exception:
            raise RegsweepError(
                f"MLflow run {run_id} has no {TRAINED_WEIGHTS} (it was logged by an older regsweep, "
                "or it failed before training ended): export a finished run"
            ) from None
        with np.load(weights) as loaded:
            return recipe, {name: loaded[name] for name in loaded.files}


def log_datasets(folders: dict[str, Path], fingerprints: dict[str, str]) -> None:
    """Each split as an MLflow dataset input, so the UI shows which images a run used: its
    folder as the source and its content fingerprint as the digest."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source  # lazy: runs only
    from mlflow.data.meta_dataset import MetaDataset

    for split, folder in folders.items():
        folder = Path(folder).resolve()
        with warnings.catch_warnings():  # "can be interpreted in multiple ways": two local sources, the same
            warnings.simplefilter("ignore", UserWarning)
            source = resolve_dataset_source(str(folder))
        dataset = MetaDataset(source, name=f"{folder.parent.name}/{folder.name}", digest=fingerprints[split])
        mlflow.log_input(dataset, context=split)


def registered_version(name: str, run_id: str) -> str | None:
    """The version of registered model `name` that holds `run_id`'s model, if there is one."""
    try:
        found = mlflow.MlflowClient().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except mlflow.exceptions.MlflowException as error:
        raise registry_error("reading the Model Registry", name, error) from None
    return min((v.version for v in found), key=int, default=None)


def model_name(registered: str) -> str:
    """The LoggedModel name for registered model `registered`: MLflow refuses '.' (which a study
    name may hold) among other characters in it."""
    return "".join("-" if c in "/:.%\"'" else c for c in registered)


def logged_model(run_id: str, name: str) -> str | None:
    """The id of the latest READY LoggedModel `name` that run `run_id` is the source of, if any."""
    client = mlflow.MlflowClient()
    try:
        experiment_id = client.get_run(run_id).info.experiment_id
        found = client.search_logged_models([experiment_id], f"source_run_id = '{run_id}' AND name = '{name}'")
    except mlflow.exceptions.MlflowException as error:
        raise registry_error("reading the experiment's models", name, error) from None
    ready = [model for model in found if model.status == mlflow.entities.LoggedModelStatus.READY]
    return max(ready, key=lambda model: model.creation_timestamp).model_id if ready else None


ALREADY_EXISTS = ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS")  # MLflow's error codes for a name taken
DESCRIPTION = "regsweep study: the recommended and the baseline setting's model, by alias (@recommended, @baseline)"


def register(name: str, run_id: str, model_id: str) -> str:
    """A new version of registered model `name` from LoggedModel `model_id` (run `run_id`'s), by
    `mlflow.register_model`, which also lists the version on the LoggedModel (the Models tab)."""
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(name, description=DESCRIPTION)
    except mlflow.exceptions.MlflowException as error:
        if error.error_code not in ALREADY_EXISTS:  # an earlier report registered it first: only that is fine
            raise registry_error(f"creating the registered model '{name}'", name, error) from None
    try:
        # MLflow prints "Registered model ... already exists" and "Created version ...": regsweep's
        # report says which version holds which run.
        with contextlib.redirect_stderr(io.StringIO()):
            return mlflow.register_model(f"models:/{model_id}", name).version
    except mlflow.exceptions.MlflowException as error:
        raise registry_error(f"registering run {run_id}'s model as a version of '{name}'", name, error) from None


def set_alias(name: str, alias: str, version: str) -> None:
    """Points `name@alias` at `version` (where it points already, nothing changes)."""
    try:
        mlflow.MlflowClient().set_registered_model_alias(name, alias, version)
    except mlflow.exceptions.MlflowException as error:
        raise registry_error(f"pointing {name}@{alias} at version {version}", name, error) from None


def registry_error(what: str, name: str, error: mlflow.exceptions.MlflowException) -> RegsweepError:
    """One sentence for a Model Registry or LoggedModel call that failed: what, where, the
    store's own reason and code, and what to do (permissions are the tracking server's to grant)."""
    lines = str(error.message).strip().splitlines()
    reason = redact(lines[0] if lines else "no message")[:300]
    if error.error_code in ("PERMISSION_DENIED", "UNAUTHENTICATED"):
        fix = (
            f"ask the tracking server's admin for EDIT permission on the experiment and on the registered model "
            f"'{name}', or log in as a user who has it (MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD)"
        )
    else:
        fix = "fix what the tracking store reports"
    return RegsweepError(
        f"{what} failed in {redact(mlflow.get_tracking_uri())} ({error.error_code}: {reason}): {fix}, "
        f"then run regsweep report {name} again to register the answer's model"
    )

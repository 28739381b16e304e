"""`regsweep ui`: MLflow's own UI on the project's store, and optuna-dashboard beside it.

Both are the stock servers (`mlflow server`, `optuna-dashboard`), started on 127.0.0.1 unless
told otherwise, with their logs under <store>/ui/. regsweep only finds the studies the store
holds (in Optuna's storage and as MLflow parent runs) so it can print each one's pages, and
stops both servers when it stops. With --auth the MLflow UI is MLflow's own basic-auth app,
its users kept in <store>/ui/auth.db.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import mlflow
import optuna
from omegaconf import DictConfig

from regsweep import faults, progress, study, tracking
from regsweep.config import RegsweepError, compose_study, redact, require_extra

log = logging.getLogger(__name__)


def tell(line: str) -> None:
    """What `regsweep ui` tells its user (where to look, how to stop): shown even with --quiet."""
    log.log(progress.ANSWER, line)


# MLflow 3's UI starts in its GenAI (traces) mode, whose experiment page is a traces overview;
# this query parameter switches it to its model-training mode, whose pages are the runs.
MODEL_TRAINING = "workflowType=machine_learning"


@dataclass
class Options:
    host: str = "127.0.0.1"
    port: int = 5000
    optuna: bool = False
    optuna_port: int = 8080
    overrides: list[str] = field(default_factory=list)
    auth: bool = False  # MLflow's login in front of its UI (see `auth_settings`)


def serve(options: Options) -> None:
    """Starts the servers, prints the pages to open, and waits for Ctrl-C."""
    if options.optuna:
        require_extra("optuna_dashboard", "ui", "regsweep ui --optuna", "optuna-dashboard")
    cfg = compose_study(options.overrides)
    tracking_uri = str(cfg.tracking.uri)
    local = not tracking_uri.startswith(("http://", "https://"))
    if options.auth and not local:
        raise RegsweepError(
            f"--auth protects the MLflow UI that regsweep ui starts on a local store, but tracking.uri="
            f"{redact(tracking_uri)} is a tracking server, whose logins are its own: drop --auth, or "
            "start that server with mlflow server --app-name basic-auth"
        )
    auth = auth_settings(Path(cfg.paths.store) / "ui") if options.auth else None
    if local:
        _check_free(options.host, options.port, "--port")
    if warning := exposure_warning(options.host, options.auth, options.optuna):
        log.warning(warning)
    if options.optuna:
        _check_free(options.host, options.optuna_port, "--optuna-port")
    experiment_id = tracking.use_store(cfg.tracking)  # a new local store gets its tables and experiment here
    named = any(override.startswith("sweep.study=") for override in options.overrides)
    found = find_studies(cfg, str(cfg.sweep.study) if named else None)
    servers: list[subprocess.Popen] = []
    try:
        if local:
            start_mlflow_ui(cfg, options, servers, auth)
            base_url = f"http://{_display_host(options.host)}:{options.port}"
        else:
            base_url = _without_credentials(tracking_uri)
        tell(f"MLflow UI: {base_url}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING}")
        if auth:
            tell(f"Log in as {ADMIN} with the password in {PASSWORD_VARIABLE}; the users are kept in {auth.database}.")
        if not found:
            which = f"study '{cfg.sweep.study}'" if named else "study"
            tell(
                f"No {which} in {redact(str(cfg.sweep.storage))} yet: "
                "the runs table shows `regsweep train` runs; a sweep adds its study's parent run."
            )
        for one in found:
            if one.experiment_id is None:
                tell(
                    f"Study '{one.name}': no MLflow runs in tracking.uri={redact(tracking_uri)}: "
                    "point tracking.uri at the store its sweep logged to"
                )
            else:
                tell(
                    f"Study '{one.name}': {runs_page(base_url, one.experiment_id, one.name)} "
                    "(its parent run and, nested under it, the trials and re-evaluations; select two or more and "
                    "Compare)"
                )
        if options.optuna:
            start_optuna_dashboard(cfg, options, servers)
            dashboard = f"http://{_display_host(options.host)}:{options.optuna_port}/dashboard/studies"
            in_storage = [one for one in found if one.study_id is not None]
            if not in_storage:
                tell(f"optuna-dashboard: {dashboard}")
            for one in in_storage:
                tell(f"optuna-dashboard: {dashboard}/{one.study_id} (study '{one.name}')")
        if not servers:
            return
        _wait(servers)
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM before _wait took them over: during a start-up
        if servers:
            stop.add_note(f"{' and '.join(Path(server.args[0]).name for server in servers)} stopped while starting")
        raise
    finally:
        _stop(servers)


@dataclass
class Study:
    """A study the store holds: in Optuna's storage (its study id), in MLflow (its parent run's
    experiment), or both."""

    name: str
    study_id: int | None = None
    experiment_id: str | None = None


def find_studies(cfg: DictConfig, only: str | None = None) -> list[Study]:
    """Every study in sweep.storage and every study parent run in tracking.uri (`only`: that
    study, if it is there), by name. Call after tracking.use_store."""
    found: dict[str, Study] = {}
    parents: dict[str, str] = {}  # the study's parent run, as its Optuna study records it
    storage = str(cfg.sweep.storage)
    # No sweep has run here when the SQLite file is missing: nothing to read, and nothing to create.
    if not storage.startswith("sqlite:///") or Path(storage.removeprefix("sqlite:///")).is_file():
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        opened = study.open_storage(storage, connect_timeout=cfg.tracking.connect_timeout)
        for summary in optuna.get_all_study_summaries(opened, include_best_trial=False):
            if only in (None, summary.study_name):
                found[summary.study_name] = Study(summary.study_name, opened.get_study_id_from_name(summary.study_name))
                if parent := summary.user_attrs.get(study.PARENT_RUN_ATTR):
                    parents[summary.study_name] = parent
    client = mlflow.MlflowClient()
    experiments = [e.experiment_id for e in client.search_experiments()]
    role = f"tags.`{tracking.ROLE_TAG}` = 'study'"
    named = f" and tags.`{tracking.STUDY_TAG}` = '{only}'" if only is not None else ""
    runs = _all_runs(client, experiments, role + named) if experiments else []
    for run in sorted(runs, key=lambda r: r.info.start_time or 0):  # the latest parent of a name last: it wins
        name = run.data.tags.get(tracking.STUDY_TAG)
        if name is None or (name in parents and parents[name] != run.info.run_id):
            continue  # a parent run that the study in this storage does not use
        found.setdefault(name, Study(name)).experiment_id = run.info.experiment_id
    return [found[name] for name in sorted(found)]


def _all_runs(client: mlflow.MlflowClient, experiments: list[str], filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs(experiments, filter_string, max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


# --- pages: what regsweep ui and the report print -------------------------------------------------


def address(tracking_uri: str) -> str:
    """Where the MLflow UI of `tracking_uri` is: the tracking server itself (without a password),
    or, for a local store, where `regsweep ui` serves it by default."""
    if tracking_uri.startswith(("http://", "https://")):
        return _without_credentials(tracking_uri)
    return f"http://{Options.host}:{Options.port}"


def runs_page(base_url: str, experiment_id: str, name: str) -> str:
    """The experiment's runs table filtered to the study `name`'s runs (their tag)."""
    search = quote(f"tags.`{tracking.STUDY_TAG}` = '{name}'", safe="")
    return f"{base_url}/#/experiments/{experiment_id}/runs?searchFilter={search}&{MODEL_TRAINING}"


def compare_page(base_url: str, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's run comparison of `run_ids`: their params and metrics side by side, one column a run."""
    runs = quote(json.dumps(run_ids, separators=(",", ":")), safe="")
    experiments = quote(json.dumps([experiment_id]), safe="")
    return f"{base_url}/#/compare-runs?runs={runs}&experiments={experiments}&{MODEL_TRAINING}"


def start_mlflow_ui(
    cfg: DictConfig, options: Options, servers: list[subprocess.Popen], auth: Auth | None = None
) -> subprocess.Popen:
    """`mlflow server` on the local store, added to `servers` (see `_launch`). Artifacts stay
    where the runs logged them (the experiment's artifact location under mlruns/), read by this
    server from disk."""
    artifacts = Path(cfg.tracking.artifact_root).resolve()
    app = ["--app-name", "basic-auth"] if auth else []
    return _launch(
        cfg,
        "mlflow",
        [
            "server",
            "--backend-store-uri",
            _absolute_sqlite(str(cfg.tracking.uri)),
            "--default-artifact-root",
            artifacts.as_uri(),
            "--host",
            options.host,
            "--port",
            str(options.port),
            "--workers",
            "1",
            *app,
            *_allowed_hosts(options),
        ],
        f"{_connect_host(options.host)}:{options.port}/health",
        "the MLflow UI",
        servers,
        auth.env if auth else None,
    )


# --- --auth: MLflow's basic-auth app ---------------------------------------------------------

ADMIN = "admin"
PASSWORD_VARIABLE = "REGSWEEP_UI_PASSWORD"  # the environment, never the command line, which `ps` shows to all


@dataclass
class Auth:
    database: Path  # MLflow's users and permissions, kept between starts
    env: dict[str, str]  # the server's environment: where its settings are, the admin's password, a CSRF key


def auth_settings(folder: Path) -> Auth:
    """Settings for `mlflow server --app-name basic-auth`, checked before anything starts.

    The ini file MLflow reads holds no secret: the admin's password reaches the server in its
    environment (MLFLOW_AUTH_ADMIN_PASSWORD), and the Flask key that signs its forms is new
    at each start unless MLFLOW_FLASK_SERVER_SECRET_KEY is already set.
    """
    require_extra("flask_wtf", "ui", "regsweep ui --auth", "Flask-WTF (MLflow's auth extra)")
    password = os.environ.get(PASSWORD_VARIABLE, "")
    if not password:
        raise RegsweepError(
            f"--auth needs the MLflow UI's admin password in the environment variable "
            f"{PASSWORD_VARIABLE} (not on the command line, where other users can read it): "
            f"export {PASSWORD_VARIABLE}=... with 12 characters or more, then run again"
        )
    if len(password) < 12:  # MLflow's rule (mlflow.utils.validation._validate_password); its server refuses less
        raise RegsweepError(
            f"{PASSWORD_VARIABLE} has {len(password)} characters and MLflow's login needs 12 or more: "
            "choose a longer password"
        )
    folder.mkdir(parents=True, exist_ok=True)
    database = (folder / "auth.db").resolve()
    _check_admin_password(database, password)
    config = folder / "basic_auth.ini"
    config.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"  # users the admin adds can read, not change, until granted more
        f"database_uri = sqlite:///{str(database).replace('%', '%%')}\n"  # configparser's escape
        f"admin_username = {ADMIN}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
    )
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(config.resolve()),
        "MLFLOW_AUTH_ADMIN_PASSWORD": password,
        "MLFLOW_FLASK_SERVER_SECRET_KEY": os.environ.get("MLFLOW_FLASK_SERVER_SECRET_KEY") or secrets.token_hex(32),
    }
    env.pop("MLFLOW_AUTH_ADMIN_USERNAME", None)  # it would override the ini's admin_username
    return Auth(database, env)


def _check_admin_password(database: Path, password: str) -> None:
    """MLflow sets the admin's password only when it creates the admin, at the first start: a
    different password later would start a server that refuses it, without a word."""
    if not database.is_file():
        return
    with warnings.catch_warnings():  # the auth app's code, loaded for --auth only, warns about Starlette modules
        warnings.simplefilter("ignore")
        from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    users = SqlAlchemyStore()
    users.init_db(f"sqlite:///{database}")
    try:
        if users.has_user(ADMIN) and not users.authenticate_user(ADMIN, password):
            raise RegsweepError(
                f"{PASSWORD_VARIABLE} is not the password of the MLflow UI's user {ADMIN} in "
                f"{database}, set at its first start with --auth or changed in MLflow since: give "
                "that password, or delete the file to start over with this one (the users it holds "
                "go with it)"
            )
    finally:
        users.engine.dispose()


def start_optuna_dashboard(cfg: DictConfig, options: Options, servers: list[subprocess.Popen]) -> subprocess.Popen:
    return _launch(
        cfg,
        "optuna-dashboard",
        [_absolute_sqlite(str(cfg.sweep.storage)), "--host", options.host, "--port", str(options.optuna_port)],
        f"{_connect_host(options.host)}:{options.optuna_port}/api/studies",
        "optuna-dashboard",
        servers,
    )


def _launch(
    cfg: DictConfig,
    script: str,
    args: list[str],
    health: str,
    what: str,
    servers: list[subprocess.Popen],
    env: dict[str, str] | None = None,
) -> subprocess.Popen:
    """Starts the console script installed beside this Python (the project's virtualenv), in
    its own process group so its workers stop with it (see _stop), logging to <store>/ui/,
    and waits until `health` answers.

    The server joins `servers` as soon as it exists, before its start-up wait: a SIGTERM or
    Ctrl-C during the start-up (half a minute for `mlflow server`) then stops it with the rest,
    where it used to outlive regsweep and serve the store on its own."""
    executable = Path(sys.executable).parent / script
    if not executable.is_file():
        raise RegsweepError(f"{script} is not installed beside {sys.executable}: install it with pip install {script}")
    log = Path(cfg.paths.store) / "ui" / f"{script}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    # Stops held from the fork until the server is listed: a SIGTERM between the two (the child
    # already runs; Popen has not returned) would leave a server no one stops.
    faults.hold_stops()
    try:
        with open(log, "w") as output:
            server = subprocess.Popen(
                [str(executable), *args], stdout=output, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        servers.append(server)
    finally:
        faults.release_stops()
    _wait_until_up(server, f"http://{health}", what, log)
    return server


LOOPBACK = ("127.0.0.1", "localhost", "::1")


def exposure_warning(host: str, auth: bool = False, optuna: bool = False) -> str:
    """One line when the servers listen beyond this machine: the MLflow UI has no login by
    default, and it can delete runs and experiments. MLflow's login (--auth) travels over
    plain HTTP, and optuna-dashboard has none."""
    if host in LOOPBACK:
        return ""
    tunnel = "prefer the default --host 127.0.0.1 with an SSH tunnel (ssh -L 5000:127.0.0.1:5000 <this machine>)"
    if not auth:
        return (
            f"--host {host} serves the store to anyone who can reach this machine, without a "
            f"login, and the MLflow UI can delete runs and experiments; add --auth for MLflow's login, or {tunnel}"
        )
    dashboard = ", and optuna-dashboard (--optuna) has no login at all" if optuna else ""
    return (
        f"--host {host} serves the MLflow UI to anyone who can reach this machine, behind "
        f"MLflow's login, whose password crosses the network unencrypted (plain HTTP){dashboard}; on a network "
        f"you do not trust, {tunnel}"
    )


def _allowed_hosts(options: Options) -> list[str]:
    """Served beyond this machine, the UI must also answer to this machine's name: MLflow's
    server accepts only localhost and private IP addresses in the Host header by default."""
    if options.host in LOOPBACK:
        return []
    from mlflow.server.security_utils import get_default_allowed_hosts  # lazy: the report imports this module

    names = {socket.gethostname(), socket.getfqdn(), options.host}
    return [
        "--allowed-hosts",
        ",".join(
            [
                *get_default_allowed_hosts(),
                *sorted(f"{name}{port}" for name in names for port in ("", f":{options.port}")),
            ]
        ),
    ]


def _absolute_sqlite(url: str) -> str:
    """A relative sqlite:///mlruns/x.db made absolute, so the server reads the same file."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(url.removeprefix("sqlite:///")).resolve())
    return url


def _check_free(host: str, port: int, flag: str) -> None:
    with socket.socket() as probe:
        # As the servers do: a port a stopped server left in TIME_WAIT can be used again at once.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise RegsweepError(
                f"{flag} {port} on {host} cannot be used ({error.strerror}): choose another, e.g. {flag} {port + 1}"
            ) from None


def _wait_until_up(server: subprocess.Popen, url: str, what: str, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RegsweepError(f"{what} stopped at start-up (exit code {server.returncode}): its log is {log}")
        if tracking.unanswered(url, timeout=2) is None:
            return
        time.sleep(0.5)
    raise RegsweepError(f"{what} did not answer {url} within {seconds:.0f} s: its log is {log}")


def _wait(servers: list[subprocess.Popen]) -> None:
    """Until Ctrl-C, SIGTERM, or a server exits by itself.

    Both signals are handled explicitly: a shell script that starts `regsweep ui &` without job
    control starts it with Ctrl-C ignored, and the servers would then outlive every stop request.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        tell("Press Ctrl-C to stop.")  # once Ctrl-C is handled: a stop right after it is a clean stop
        while all(server.poll() is None for server in servers):
            time.sleep(0.5)
    except KeyboardInterrupt:
        tell("\nregsweep ui: stopped.")
        return
    stopped = next(server for server in servers if server.poll() is not None)
    raise RegsweepError(
        f"{Path(stopped.args[0]).name} stopped (exit code {stopped.returncode}): "
        f"its log is under the store's ui/ folder"
    )


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # `kill <pid>` stops the servers as Ctrl-C does


def _stop(servers: list[subprocess.Popen], seconds: float = 15) -> None:
    """Stops the servers and the workers they started (their process groups): all are asked
    at once, then whatever is left after `seconds` is killed. A server can exit before its own
    workers (uvicorn's still shutting down), so it waits for whole groups, not for the servers."""
    _signal_groups(servers, signal.SIGTERM)
    deadline = time.monotonic() + seconds
    for server in servers:
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=max(0.0, deadline - time.monotonic()))
    while any(_group_runs(server.pid) for server in servers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [server for server in servers if server.poll() is None or _group_runs(server.pid)]
    _signal_groups(left, signal.SIGKILL)
    for server in left:
        server.wait()
    while any(_group_runs(server.pid) for server in left) and time.monotonic() < deadline + seconds:
        time.sleep(0.1)  # killed: gone as soon as the kernel has torn them down


def _group_runs(group: int) -> bool:
    """Whether a process of this group still runs. A zombie does not: it holds no port or file,
    only its entry until its new parent reaps it. Without /proc, any member at all."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for entry in proc.iterdir():
        if entry.name.isdigit():
            try:
                state, _, pgrp = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:3]
            except (OSError, ValueError):  # gone meanwhile
                continue
            if int(pgrp) == group and state != "Z":
                return True
    return False


def _signal_groups(servers: list[subprocess.Popen], sig: int) -> None:
    for server in servers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, sig)


def _display_host(host: str) -> str:
    return socket.gethostname() if host in ("0.0.0.0", "::") else host


def _connect_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::") else host


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))

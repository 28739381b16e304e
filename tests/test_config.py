"""Config composition, validation before training, and the CLI's behaviour on bad input."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from regsweep.config import RegsweepError, compose, compose_study, flatten, redact, validate


def test_default_config_uses_the_canonical_knob_keys():
    cfg = compose()
    for key in (
        "model.dropout",
        "augment.strength",
        "optim.lr",
        "model.unfrozen_blocks",
        "data.train_dir",
        "data.val_dir",
        "data.test_dir",
        "model.backbone",
        "model.weights",
        "train.seed",
        "tracking.uri",
    ):
        assert key in flatten(cfg), key
    assert cfg.model.backbone == "demo_cnn" and cfg.data.train_dir is None  # the offline demo
    validate(cfg)


@pytest.mark.parametrize(
    "override, named",
    [
        ("model.dropout=1.0", "model.dropout=1.0"),
        ("model.dropout=-0.1", "model.dropout"),
        ("optim.lr=-0.001", "optim.lr=-0.001"),
        ("optim.lr=0", "optim.lr"),
        ("model.unfrozen_blocks=4", "model.unfrozen_blocks=4"),  # demo_cnn has 3 blocks
        ("model.backbone=alexnet", "unknown backbone model.backbone=alexnet"),
        ("augment.strength=1.5", "augment.strength"),
        ("model.dropout=abc", "model.dropout=abc is not a number"),
        ("model.weights=/no/such/file.h5", "model.weights=/no/such/file.h5 is not a file"),
        ("model.weights=imagenet", "does not apply to model.backbone=demo_cnn"),
        ("data.flip=diagonal", "data.flip"),
        ("data.train_dir=/tmp", "data.train_dir is set but data=demo is selected: add data=folders"),
        ("data=folders", "data=folders needs data.train_dir=<folder> and data.val_dir=<folder>"),
        ("data=split", "data=split needs data.dir=<folder>"),
    ],
)
def test_invalid_values_are_rejected_with_a_message_naming_the_key(override, named):
    with pytest.raises(RegsweepError, match=re.escape(named)):
        validate(compose([override]))


def test_unfrozen_blocks_limit_follows_the_backbone():
    validate(compose(["model=mobilenet_v2", "model.unfrozen_blocks=16", "model.weights=null"]))
    with pytest.raises(RegsweepError, match="mobilenet_v2, which has 16 blocks"):
        validate(compose(["model=mobilenet_v2", "model.unfrozen_blocks=17", "model.weights=null"]))


def test_tracking_store_defaults_to_sqlite_under_the_store_and_honours_the_environment(monkeypatch):
    assert compose(["paths.store=/data/lab"]).tracking.uri == "sqlite:////data/lab/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert compose().tracking.uri == "http://127.0.0.1:5000"
    assert compose(["tracking.uri=sqlite:///elsewhere.db"]).tracking.uri == "sqlite:///elsewhere.db"


def test_secrets_in_urls_never_reach_params():
    assert redact("postgresql://ada:s3cret@db:5432/optuna") == "postgresql://ada:***@db:5432/optuna"
    flat = flatten(compose(["tracking.uri=http://ada:s3cret@127.0.0.1:5000"]))
    assert "s3cret" not in str(flat) and flat["tracking.uri"] == "http://ada:***@127.0.0.1:5000"


def test_own_conf_and_sweeps_in_the_working_directory_come_before_regsweeps_own(tmp_path, monkeypatch):
    from regsweep import space

    (tmp_path / "conf" / "model").mkdir(parents=True)
    (tmp_path / "conf" / "model" / "wide.yaml").write_text("defaults:\n  - demo_cnn\n  - _self_\nhead_units: 256\n")
    (tmp_path / "conf" / "train").mkdir()
    (tmp_path / "conf" / "train" / "default.yaml").write_text(
        "epochs: 3\nfine_tune_epochs: 2\nseed: 0\nearly_stopping_patience: 5\nverbose: 0\n"
    )
    (tmp_path / "sweeps" / "baselines").mkdir(parents=True)
    (tmp_path / "sweeps" / "quick.yaml").write_text(
        "study: quick\nn_trials: 2\nparams:\n  model.dropout: interval(0, 0.5)\n"
    )
    (tmp_path / "sweeps" / "baselines" / "light.yaml").write_text("model.dropout: 0.1\n")
    monkeypatch.chdir(tmp_path)
    cfg = compose(["model=wide"])
    assert cfg.model.head_units == 256 and cfg.model.backbone == "demo_cnn"  # a new option beside the packaged ones
    assert cfg.train.epochs == 3 and cfg.optim.lr == 1e-3  # a replaced file; the rest is regsweep's own
    assert compose_study(["sweep=quick"]).sweep.n_trials == 2
    assert compose_study([]).sweep.study == "regularization"
    assert space.baseline_overrides("light") == ["model.dropout=0.1"]
    with pytest.raises(
        RegsweepError,
        match=r"sweep=nope is not a known sweep: choose one of quick, regularization, "
        r"or write sweeps/nope.yaml in the working directory",
    ):
        compose_study(["sweep=nope"])
    with pytest.raises(RegsweepError, match=r"choose one of light, unregularized, or write sweeps/baselines/nope.yaml"):
        space.baseline_overrides("nope")
    job = regsweep("train", "--cfg", "job", "model=wide", cwd=tmp_path)  # Hydra's own app searches ./conf first too
    assert job.returncode == 0 and "head_units: 256" in job.stdout and "epochs: 3" in job.stdout


def regsweep(*args, **kwargs) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", "from regsweep.cli import main; main()", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, **kwargs)


def test_cli_rejects_bad_values_with_one_sentence_and_exit_code_2(tmp_path):
    result = regsweep("train", "model.dropout=1.0", f"paths.store={tmp_path}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "regsweep: error: model.dropout=1.0 is outside [0, 1)" in result.stderr
    assert not (tmp_path / "mlflow.db").exists()  # rejected before anything was recorded


def test_cli_help_and_cfg_job_work_as_in_hydra():
    help_text = regsweep("train", "--help")
    assert help_text.returncode == 0
    assert "regsweep train" in help_text.stdout and "model: demo_cnn, efficientnet_b0" in help_text.stdout
    job = regsweep("train", "--cfg", "job", "model.dropout=0.3", "model=mobilenet_v2")
    assert job.returncode == 0
    assert "dropout: 0.3" in job.stdout and "backbone: mobilenet_v2" in job.stdout


def test_cli_without_command_prints_usage_and_unknown_command_exits_2():
    assert "regsweep train" in regsweep().stdout
    unknown = regsweep("trian")
    assert unknown.returncode == 2 and "unknown command 'trian'" in unknown.stderr


def test_cli_prints_its_version_and_refuses_a_mistyped_flag_in_one_sentence():
    import importlib.metadata

    assert regsweep("--version").stdout.strip() == f"regsweep {importlib.metadata.version('regsweep')}"
    typo = regsweep("report", "--reevalute", "sweep.study=nothing")
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    assert typo.stderr.strip().splitlines() == [
        "regsweep: error: unrecognized arguments: --reevalute: see regsweep report --help"
    ]
    port = regsweep("ui", "--port", "http")
    assert port.returncode == 2
    assert "argument --port: http is not a port number: give one from 1 to 65535" in port.stderr


def test_sweep_cli_explains_bad_study_settings_and_prints_its_help(tmp_path):
    bad = regsweep("sweep", "sweep.objective=fastest", f"paths.store={tmp_path}")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert "regsweep: error: sweep.objective=fastest is unknown: use one of accuracy, constrained, pareto" in bad.stderr
    assert not (tmp_path / "optuna.db").exists()
    assert "sweeps/<name>.yaml" in regsweep("sweep", "--help").stdout
    job = regsweep("sweep", "--cfg", "job", "sweep.n_trials=7")
    assert "n_trials: 7" in job.stdout and "model.dropout: interval(0.0, 0.7)" in job.stdout


def test_a_tracking_server_that_never_answers_stops_the_command_within_its_timeout():
    import socket
    import time

    from omegaconf import OmegaConf

    from regsweep import tracking

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never answers
    try:
        url = f"http://user:hunter2@127.0.0.1:{silent.getsockname()[1]}"
        start = time.monotonic()
        with pytest.raises(RegsweepError) as stopped:
            tracking.check_reachable(OmegaConf.create({"uri": url, "connect_timeout": 2}))
        assert time.monotonic() - start < 10
    finally:
        silent.close()
    assert str(stopped.value) == (
        f"tracking.uri=http://user:***@127.0.0.1:{url.rsplit(':', 1)[1]} cannot be reached "
        "(no answer within 2 s): start the server or fix the URL, or raise "
        "tracking.connect_timeout for a slow network"
    )

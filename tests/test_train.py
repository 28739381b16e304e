"""End-to-end training runs on the demo and on generated folders, checked through MLflow."""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import mlflow
import numpy as np
import pytest

from conftest import SHARED_WEIGHTS, quick_cfg, tracking_client, write_class_folders
from regsweep import data, fit, train
from regsweep import model as models
from test_recovery import REGSWEEP

pytestmark = pytest.mark.slow


def client(store) -> mlflow.MlflowClient:
    # An explicit client: mlflow.set_tracking_uri would export the URI to later runs' configs.
    return tracking_client(store)


def all_runs(store):
    experiment = client(store).get_experiment_by_name("regsweep")
    return client(store).search_runs([experiment.experiment_id])


def artifact_paths(store, run_id, path=""):
    found = []
    for item in client(store).list_artifacts(run_id, path):
        found += artifact_paths(store, run_id, item.path) if item.is_dir else [item.path]
    return found


def test_demo_run_leaves_one_complete_mlflow_run_with_its_data_and_trained_weights(store):
    result = train.train_and_log(quick_cfg(store, "model.dropout=0.25"))

    run = client(store).get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "do0.25 aug0.00 lr1.0e-03 ub0 demo_cnn"
    params, metrics = run.data.params, run.data.metrics
    assert params["model.dropout"] == "0.25" and params["optim.lr"] == "0.001"
    assert params["data.class_names"] == "0,1,2,3,4" and len(params["data.fingerprint"]) == 16
    assert params["train.seed"] == "0"
    assert metrics["gap"] == pytest.approx(metrics["train_accuracy"] - metrics["val_accuracy"])
    for name in ("epoch_loss", "epoch_accuracy", "epoch_val_loss", "epoch_val_accuracy", "running_train_accuracy"):
        assert name in metrics
    history = client(store).get_metric_history(result.run_id, "epoch_val_accuracy")
    assert [m.step for m in history] == list(range(int(metrics["epochs_trained"])))
    assert run.data.tags["version.tensorflow"] and run.data.tags["version.keras"].startswith("3.")
    assert set(artifact_paths(store, result.run_id)) >= {
        "config.yaml",
        "class_names.json",
        "confusion_matrix.json",
        "trained/weights.npz",
        "trained/rebuild.json",
        "plots/learning_curve.png",
        "plots/confusion_matrix.png",
    }
    # The MLflow UI's dataset column: each split's folder, with its content fingerprint as the digest.
    splits = data.resolve_splits(quick_cfg(store).data, 32, store)
    fingerprints = data.split_fingerprints(splits)
    logged = {
        next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset for d in run.inputs.dataset_inputs
    }
    assert set(logged) == {"train", "validation", "test"}
    for split, folder in (("train", splits.train), ("validation", splits.val), ("test", splits.test)):
        assert logged[split].digest == fingerprints[split]
        assert str(folder.resolve()) in logged[split].source


FRESH_PROCESS = """
import sys, numpy as np, mlflow, keras
model = mlflow.pyfunc.load_model(sys.argv[1])
plain = keras.saving.load_model(sys.argv[1] + "/data/model.keras")
images = np.load(sys.argv[2])
np.save(sys.argv[3], np.stack([model.predict(images), plain.predict(images, verbose=0)]))
photos = np.random.default_rng(0).uniform(0, 255, (2, 45, 60, 3)).astype("float32")  # any size: resized inside
print(model.predict(photos).shape, model.metadata.metadata["class_names"], "regsweep" in sys.modules)
"""


def test_any_run_exports_as_an_mlflow_model_that_loads_without_regsweep(store, tmp_path):
    """Fine-tuned blocks included: the export puts every trained layer back on the same backbone."""
    cfg = quick_cfg(store, "model.unfrozen_blocks=2", "tracking.artifacts=none")
    result = train.train_and_log(cfg)
    splits = data.resolve_splits(cfg.data, 32, store)
    images = np.concatenate([x for x, _ in data.load_folder(splits.val, splits.class_names, 32).batch(64)])
    np.save(tmp_path / "images.npy", images)

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    exported = subprocess.run(
        [REGSWEEP, "export", result.run_id, "--out", str(tmp_path / "model"), f"paths.store={store}"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert exported.returncode == 0, exported.stderr[-2000:]
    # A process that never imports regsweep: MLflow's pyfunc and plain Keras both load it.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH_PROCESS,
            str(tmp_path / "model"),
            str(tmp_path / "images.npy"),
            str(tmp_path / "predictions.npy"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert loaded.returncode == 0, loaded.stderr[-2000:]
    assert loaded.stdout.strip().splitlines()[-1] == "(2, 5) ['0', '1', '2', '3', '4'] False"
    expected = result.classifier.predict(images, verbose=0)
    for predictions in np.load(tmp_path / "predictions.npy"):
        np.testing.assert_allclose(predictions, expected, rtol=1e-5, atol=1e-6)

    # Other backbone weights than the run's are refused, not silently used.
    other = tmp_path / "other.weights.h5"
    models.load_backbone("demo_cnn", 32, None).save_weights(other)
    refused = subprocess.run(
        [
            REGSWEEP,
            "export",
            result.run_id,
            "--out",
            str(tmp_path / "again"),
            "--weights",
            str(other),
            f"paths.store={store}",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "are not the ones run" in refused.stderr and not (tmp_path / "again").exists()


def test_unfrozen_blocks_run_both_phases_from_the_trained_head(store):
    cfg = quick_cfg(
        store, "model.unfrozen_blocks=1", "model.dropout=0.5", "augment.strength=0.5", "tracking.artifacts=none"
    )
    result = train.train_and_log(cfg)
    assert result.metrics["epochs_trained"] == cfg.train.epochs + cfg.train.fine_tune_epochs
    backbone = result.classifier.get_layer("demo_cnn")
    assert backbone.get_layer("block3_conv").trainable and not backbone.get_layer("block3_bn").trainable
    assert not backbone.get_layer("block2_conv").trainable
    params = client(store).get_run(result.run_id).data.params
    assert (params["model.unfrozen_blocks"], params["model.dropout"], params["augment.strength"]) == ("1", "0.5", "0.5")
    # tracking.artifacts=none: no plots, but what it trained is kept, as for every run
    assert set(artifact_paths(store, result.run_id)) == {
        "config.yaml",
        "class_names.json",
        "confusion_matrix.json",
        "trained/weights.npz",
        "trained/rebuild.json",
    }


def test_honest_gap_differs_from_running_accuracy_under_heavy_regularization(store):
    cfg = quick_cfg(store, "model.dropout=0.5", "augment.strength=0.5", "train.epochs=15", "tracking.artifacts=none")
    metrics = train.train_and_log(cfg).metrics
    # Dropout and augmentation depress Keras's running accuracy; the inference-mode one is the real fit.
    assert metrics["train_accuracy"] - metrics["running_train_accuracy"] >= 0.1


def test_a_run_that_crashes_ends_failed_not_running(store, monkeypatch):
    def crash(*args, **kwargs):
        raise FloatingPointError("the loss became NaN in epoch 3")

    monkeypatch.setattr(fit, "two_phases", crash)
    with pytest.raises(FloatingPointError):
        train.train_and_log(quick_cfg(store))
    [run] = all_runs(store)
    assert run.info.status == "FAILED"
    assert run.data.tags["regsweep.error"] == "FloatingPointError: the loss became NaN in epoch 3"


@pytest.mark.parametrize(
    "launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]], ids=["basic", "joblib"]
)
def test_hydra_multirun_trains_each_grid_point(store, launcher):
    """The fixed-grid recipe of docs/scaling-out.md, with Hydra's own launcher and with the joblib one
    (parallel processes)."""
    command = [
        sys.executable,
        "-c",
        "from regsweep.cli import main; main()",
        "train",
        "-m",
        "model.dropout=0,0.5",
        "train.epochs=1",
        "tracking.artifacts=none",
        "paths.store=mlruns",
        *launcher,
    ]
    result = subprocess.run(command, cwd=store.parent, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    if launcher:
        assert "Joblib.Parallel(n_jobs=2" in result.stdout + result.stderr
    for name in ("train_accuracy", "val_accuracy", "gap"):
        assert result.stdout.count(name) == 2  # printed once per grid point
    runs = all_runs(store)
    assert sorted(r.data.params["model.dropout"] for r in runs) == ["0", "0.5"]
    assert {r.info.status for r in runs} == {"FINISHED"}


MOBILENET_V2 = SHARED_WEIGHTS / "mobilenet_v2_1.0_224_quant_notop.weights.h5"


@pytest.mark.skipif(not MOBILENET_V2.is_file(), reason=f"real ImageNet weights not found at {MOBILENET_V2}")
def test_mobilenet_v2_with_real_imagenet_weights_file_trains_on_generated_images(store, tmp_path):
    write_class_folders(tmp_path / "images", 12, size=96)
    cfg = quick_cfg(
        store,
        "model=mobilenet_v2",
        f"model.weights={MOBILENET_V2}",
        "model.image_size=96",
        "data=split",
        f"data.dir={tmp_path / 'images'}",
        "data.val_fraction=0.25",
        "model.unfrozen_blocks=1",
        "train.epochs=4",
        "tracking.artifacts=none",
    )
    result = train.train_and_log(cfg)
    run = client(store).get_run(result.run_id)
    assert run.info.status == "FINISHED" and run.data.params["model.weights"] == str(MOBILENET_V2)
    backbone = next(layer for layer in result.classifier.layers if isinstance(layer, keras.Model))
    # The file folds BatchNorm into beta (a fresh model has beta = 0), so non-zero beta means it loaded.
    assert np.abs(np.asarray(backbone.get_layer("bn_Conv1").beta)).max() > 0
    # Real ImageNet features separate circles, squares and stripes far above chance (1/3).
    assert result.metrics["val_accuracy"] >= 0.7


@pytest.mark.parametrize("cache", ["on", "off"])
def test_a_run_replays_exactly_with_augmentation_on(store, cache):
    """A sweep's promise: `regsweep train <a trial's overrides>` reproduces that trial,
    whether it reads cached augmented views or augments online."""
    overrides = (
        "model.dropout=0.4",
        "augment.strength=0.7",
        "model.unfrozen_blocks=1",
        "train.epochs=4",
        "tracking.artifacts=none",
        f"cache={cache}",
    )
    first = train.train_and_log(quick_cfg(store, *overrides)).metrics
    second = train.train_and_log(quick_cfg(store, *overrides)).metrics
    if cache == "on":  # clean train, validation and 2 views, pooled at the top and at the cut
        assert (first["cache_misses"], second["cache_hits"], second["cache_misses"]) == (8, 8, 0)

    def results(metrics):
        return {k: v for k, v in metrics.items() if not k.startswith(("seconds_", "cache_"))}

    assert results(first) == results(second)


def val_loss_curve(store, result) -> list[float]:
    """A run's per-epoch val_loss as MLflow holds it, in epoch order."""
    history = client(store).get_metric_history(result.run_id, "epoch_val_loss")
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def test_trials_in_one_process_train_exactly_as_each_would_alone(store):
    """A sweep's worker reuses the backbone, the phase-1 head model and its traced functions
    from trial to trial: no trial's result may depend on the trials before it."""
    quick = ("train.epochs=4", "train.fine_tune_epochs=2", "tracking.artifacts=none")
    trials = [
        ("model.dropout=0.5", "optim.lr=0.01", "model.unfrozen_blocks=1", "augment.strength=0.5"),
        ("model.dropout=0.0", "optim.lr=0.003"),  # Keras's Dropout at rate 0 has no seed state
        ("model.dropout=0.3", "optim.lr=0.001"),
    ]

    in_sequence = [train.train_and_log(quick_cfg(store, *quick, *overrides)) for overrides in trials]
    for overrides, earlier in zip(trials, in_sequence):
        fit.forget()  # as a fresh worker process starts
        alone = train.train_and_log(quick_cfg(store, *quick, *overrides))
        assert alone.metrics["val_accuracy"] == earlier.metrics["val_accuracy"]
        assert alone.metrics["train_accuracy"] == earlier.metrics["train_accuracy"]
        assert val_loss_curve(store, alone) == val_loss_curve(store, earlier)
        assert len(val_loss_curve(store, alone)) == alone.metrics["epochs_trained"]


def test_cached_epochs_run_in_one_call_train_exactly_as_step_by_step(store, monkeypatch):
    """On cached features each epoch's steps run in one Keras call (steps_per_execution); the
    epoch must read the same batches, in the same order, as Keras's default of a step a call."""
    overrides = ("train.epochs=4", "train.fine_tune_epochs=2", "tracking.artifacts=none")
    overrides += ("model.dropout=0.5", "model.unfrozen_blocks=1", "augment.strength=0.5")

    fit.forget()
    one_call = train.train_and_log(quick_cfg(store, *overrides))
    compile_as_given = keras.Model.compile

    def compile_step_by_step(model, *args, steps_per_execution=1, **kwargs):
        return compile_as_given(model, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "compile", compile_step_by_step)
    fit.forget()
    step_by_step = train.train_and_log(quick_cfg(store, *overrides))
    assert one_call.metrics["epochs_trained"] > 4  # phase 2 ran: both phases' models are covered
    assert val_loss_curve(store, one_call) == val_loss_curve(store, step_by_step)
    assert one_call.metrics["val_accuracy"] == step_by_step.metrics["val_accuracy"]
    assert one_call.metrics["train_accuracy"] == step_by_step.metrics["train_accuracy"]


def test_epoch_curves_reach_mlflow_when_the_fit_ends_however_it_ends(store, monkeypatch):
    """Epochs are written in batches; a stopped fit still leaves every epoch it trained."""
    from regsweep import tracking

    class Stop(Exception):
        pass

    def stop_at_third_epoch(epoch, logs=None):
        if epoch == 2:
            raise Stop

    stopper = keras.callbacks.LambdaCallback(on_epoch_end=stop_at_third_epoch)
    run_ids = []
    with pytest.raises(Stop):
        train.train_and_log(
            quick_cfg(store, "train.epochs=6", "tracking.artifacts=none"),
            callbacks=(stopper,),
            on_run_started=run_ids.append,
        )
    history = client(store).get_metric_history(run_ids[0], "epoch_val_accuracy")
    assert sorted(m.step for m in history) == [0, 1, 2]

    monkeypatch.setattr(tracking.EpochLog, "FLUSH_SECONDS", 0.0)  # a write every epoch, as a slow epoch gets
    written = []

    def count_and_drop(self):
        written.append(len(self.pending))
        self.pending.clear()

    monkeypatch.setattr(tracking.EpochLog, "flush", count_and_drop)
    train.train_and_log(quick_cfg(store, "train.epochs=3", "tracking.artifacts=none"))
    assert written[:3] == [4, 4, 4]  # loss, accuracy, val_loss, val_accuracy of each epoch, as it ends

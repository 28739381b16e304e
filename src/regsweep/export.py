"""Any run's whole model, rebuilt from what it logged, as an MLflow Model; and the registry's
`recommended` and `baseline` versions of a study.

A run logs only what it trained (the head and its unfrozen blocks) and a recipe for the rest:
the backbone, its weights file, the digest of the frozen part, the image size and the classes.
Rebuilding loads the same backbone weights, checks that digest, and puts the trained layers
back. The saved model is made of stock Keras layers and takes raw 0–255 RGB images, so it loads
with plain Keras or `mlflow.pyfunc.load_model` where regsweep is not installed.
"""

from __future__ import annotations

from pathlib import Path

import keras
import mlflow
import numpy as np
from mlflow.entities import LoggedModelOutput
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.types import Schema, TensorSpec

from regsweep import model as models
from regsweep import tracking
from regsweep.config import RegsweepError


def rebuild(run_id: str, weights: str | None = None) -> tuple[keras.Model, dict]:
    """The run's classifier, exactly as it ended training, and its recipe.

    `weights` replaces the backbone weights file the run used, for a machine where it lies elsewhere.
    """
    recipe, trained = tracking.load_trained(run_id)
    backbone, unfrozen, seed = recipe["backbone"], recipe["unfrozen_blocks"], recipe["seed"]
    source = weights if weights is not None else recipe["backbone_weights"]
    if weights is not None and not Path(weights).is_file():
        raise RegsweepError(f"--weights {weights} is not a file: give the backbone weights file run {run_id} used")
    if source not in (None, "imagenet") and not Path(source).is_file():
        raise RegsweepError(
            f"run {run_id} was trained on the backbone weights {source}, which are not here: "
            "pass --weights <path to the same file>"
        )
    keras.utils.set_random_seed(seed)  # a random-init backbone draws the same numbers as in training
    base = models.load_backbone(backbone, recipe["image_size"], source)
    if models.prefix_digests(base, backbone, [unfrozen])[unfrozen] != recipe["frozen_sha256"]:
        raise RegsweepError(
            f"the backbone weights {source} are not the ones run {run_id} was trained on "
            "(their digest differs): pass --weights <path to the file the run used>"
        )
    keras.utils.set_random_seed(seed)
    classifier = models.build_classifier(
        backbone, base, len(recipe["class_names"]), recipe["pooling"], recipe["head_units"], recipe["dropout"], seed
    )
    models.load_trained_weights(classifier, base, backbone, unfrozen, trained)
    return classifier, recipe


def servable(classifier: keras.Model, size: int) -> keras.Model:
    """The classifier behind a bilinear resize to its training size, as the folder loader does:
    a user's photos go in at whatever size they have (one size per batch)."""
    inputs = keras.Input((None, None, 3), name="image")
    resized = keras.layers.Resizing(size, size, interpolation="bilinear", name="resize")(inputs)
    return keras.Model(inputs, classifier(resized), name=classifier.name)


def _flavor_arguments(classifier: keras.Model, recipe: dict, run_id: str) -> dict:
    """What MLflow's Keras flavor saves the classifier with: the servable model, a signature, the
    class names in its metadata and its requirements."""
    import tensorflow as tf  # lazy: only for its version, which the model's requirements pin

    size = recipe["image_size"]
    signature = ModelSignature(
        Schema([TensorSpec(np.dtype("float32"), (-1, -1, -1, 3))]),  # any height and width
        Schema([TensorSpec(np.dtype("float32"), (-1, len(recipe["class_names"])))]),
    )
    metadata = {
        "class_names": recipe["class_names"],
        "source_run_id": run_id,
        "input": f"raw RGB images, values 0-255, shape (n, height, width, 3); resized to {size}x{size} inside",
        "output": "softmax probabilities, one column per class, in class_names order",
    }
    return {
        "model": servable(classifier, size),
        "signature": signature,
        "metadata": metadata,
        # Given, not inferred: MLflow would load the model in a second Python to find them (7 s a model).
        "pip_requirements": [
            f"keras=={keras.__version__}",
            f"tensorflow=={tf.__version__}",
            f"numpy=={np.__version__}",
        ],
    }


def _input_example(recipe: dict) -> np.ndarray:
    """One mid-grey image at the training size."""
    size = recipe["image_size"]
    return np.full((1, size, size, 3), 128.0, dtype="float32")


def save(classifier: keras.Model, recipe: dict, run_id: str, path: Path) -> None:
    """`classifier` as an MLflow Model (Keras flavor) in the folder `path`, with an input example."""
    path.mkdir(parents=True)  # MLflow's Keras flavor writes the example before it makes the folder
    mlflow.keras.save_model(
        path=str(path), input_example=_input_example(recipe), **_flavor_arguments(classifier, recipe, run_id)
    )


def export_run(run_id: str, out: Path, weights: str | None = None) -> Path:
    """`regsweep export <run id> --out DIR`."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RegsweepError(f"--out {out} already exists and is not an empty folder: choose a new folder")
    classifier, recipe = rebuild(run_id, weights)
    if out.exists():
        out.rmdir()
    save(classifier, recipe, run_id, out)
    return out


def register(name: str, run_id: str) -> str:
    """The run's model as a new version of the registered model `name`; returns the version.

    The model is an MLflow 3 LoggedModel of the run's experiment (its Models tab), logged once
    per run: a registration that failed after logging it registers the same model again.
    """
    model_id = tracking.logged_model(run_id, tracking.model_name(name))
    if model_id is None:
        classifier, recipe = rebuild(run_id)
        model_id = log_model(classifier, recipe, run_id, tracking.model_name(name))
    return tracking.register(name, run_id, model_id)


# A run's metrics that describe its training, not the model it ended with: per-epoch curves, the
# feature cache's hits and misses, the seconds each step took.
NOT_THE_MODELS = ("epoch_", "cache_", "seconds_")


def log_model(classifier: keras.Model, recipe: dict, run_id: str, name: str) -> str:
    """`classifier` logged with `mlflow.keras.log_model(name=...)` as a LoggedModel of run
    `run_id`'s experiment, linked to that run: the run is its source and lists it among its
    outputs, and the model holds the run's params and the metrics of the model it ended with.
    Returns the model id.

    The run has ended (it is a finished re-evaluation), and it is not started again for this:
    its status and end time stay as training left them. No input example: MLflow's Keras flavor
    writes it into a folder it has not made yet, and log_model gives no way to make it first
    (mlflow/mlflow#16183, open in MLflow 3.17); the signature and the metadata describe the input.
    """
    client = mlflow.MlflowClient()
    run = client.get_run(run_id)
    try:
        logged = mlflow.initialize_logged_model(
            name=name,
            source_run_id=run_id,
            params=run.data.params,
            tags={tracking.STUDY_TAG: run.data.tags.get(tracking.STUDY_TAG, "")},
            experiment_id=run.info.experiment_id,
        )
        mlflow.keras.log_model(name=name, model_id=logged.model_id, **_flavor_arguments(classifier, recipe, run_id))
        client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
        final = {key: value for key, value in run.data.metrics.items() if not key.startswith(NOT_THE_MODELS)}
        mlflow.log_metrics(final, run_id=run_id, model_id=logged.model_id)
    except MlflowException as error:
        raise tracking.registry_error(f"logging run {run_id}'s model", name, error) from None
    return logged.model_id

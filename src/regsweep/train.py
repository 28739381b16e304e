"""One training run, top to bottom: config → data → model → two-phase fit → honest gap → MLflow.

The gap is measured after training, in inference mode, on the un-augmented training images:
Keras's running training accuracy (dropout on, augmented images) falls as regularization
rises even when nothing generalizes better, so it is logged but never called the gap.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
from omegaconf import DictConfig

from regsweep import data, demo, faults, fit, tracking
from regsweep import model as models
from regsweep.config import RegsweepError, redact, run_name, validate
from regsweep.metrics import (
    BEST_VAL_LOSS,
    GAP,
    RUNNING_TRAIN_ACCURACY,
    TEST_ACCURACY,
    TEST_GAP,
    TEST_IMAGES,
    TRAIN_ACCURACY,
    TRAIN_IMAGES,
    VAL_ACCURACY,
    VAL_IMAGES,
)

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_id: str
    metrics: dict[str, float]
    classifier: keras.Model


def train_and_log(
    cfg: DictConfig,
    parent_run_id: str | None = None,
    tags: dict[str, str] | None = None,
    callbacks: tuple = (),
    on_run_started=None,
    leads=None,
    evaluate_test: bool = False,
    with_test: bool = True,
    label: str = "",
) -> RunResult:
    """Trains and logs one run to MLflow.

    A sweep passes its parent run, the trial's tags, Keras callbacks (pruning, progress),
    `on_run_started(run_id)`, which learns the run id before training can fail, and
    `leads(metrics)`: whether the finished trial leads its study (tracking.artifacts=best).
    Only a re-evaluation passes `evaluate_test`: the test split is scored once, after
    training, and never by a trial, so no choice of settings ever sees it. A learning-curve run
    passes `with_test=False`: the test split is not even listed. `label` starts the run's name
    (`#7` for a trial).
    """
    timer = Timer()
    with timer("setup"):
        validate(cfg)
        tracking.check_reachable(cfg.tracking)  # before any data work: an unreachable server fails in seconds
        store = Path(cfg.paths.store)
        faults.keep_reserve(store)  # room to record this run's end if the disk fills up under it
        splits = data.resolve_splits(cfg.data, cfg.model.image_size, store, with_test=with_test)
        by_split = data.split_fingerprints(splits)  # listed once: the cache keys on them too
        dataset_fingerprint = data.fingerprint(splits, by_split)
        weights = demo.resolve_weights(cfg.model, store)  # may pretrain the demo backbone: before seeding
        base, classifier = fit.seeded_classifier(cfg, len(splits.class_names), weights)
        # Each cut's frozen-weight digest, in one pass: the feature cache's key, and (for the run's
        # own cut) what `regsweep export` checks before putting the trained layers back.
        digests = models.prefix_digests(base, cfg.model.backbone, list(range(cfg.model.unfrozen_blocks + 1)))
    # The test split's fingerprint is recorded by every run, though only re-evaluation scores it.
    fingerprints = {"data.fingerprint": dataset_fingerprint, "data.test_fingerprint": by_split.get("test", "none")}
    with tracking.training_run(
        cfg, run_name(cfg, label), splits.class_names, fingerprints, parent_run_id, tags
    ) as mlflow_run:
        if on_run_started is not None:
            on_run_started(mlflow_run.info.run_id)
        tracking.log_datasets(splits.folders, by_split)
        if splits.skipped:  # data.on_bad_image=skip: say which files the run did not see
            tracking.log_skipped_files(splits.skipped)
        if evaluate_test and splits.test is None:
            raise RegsweepError(
                "re-evaluation needs a test split: give data.test_dir, or data.test_fraction > 0 with data=split"
            )
        with timer("features"):  # cached prefix outputs (cache=on), or augmented images online
            trainer = fit.prepare(cfg, splits, base, classifier, by_split, digests)
        # seconds_fit includes seconds_callbacks: MLflow's epoch logging, pruning, progress (the
        # epochs still held when fit ends are written after it, as harness)
        with tracking.EpochLog(mlflow_run.info.run_id) as epochs, timer("fit"):
            epoch_logger = keras.callbacks.LambdaCallback(on_epoch_end=epochs.epoch_end)
            harness = timer.around("callbacks", (epoch_logger, *callbacks))
            fitted = fit.two_phases(trainer, base, cfg, harness)
        history, final = fitted.history, fitted.final
        best_epoch = int(np.argmin(history["val_loss"]))
        with timer("evaluate"):
            num_classes = len(splits.class_names)
            train_accuracy, train_confusion, train_correct = score(final.model, final.datasets.train_eval, num_classes)
            val_accuracy, confusion, val_correct = score(final.model, final.datasets.val, num_classes)
            test_metrics = {}
            if evaluate_test:  # the whole classifier (it shares the trained layers) on the images
                test_images = data.load_folder(splits.test, splits.class_names, cfg.model.image_size)
                test_accuracy, test_confusion, test_correct = score(
                    classifier, test_images.batch(cfg.data.batch_size), num_classes
                )
                test_metrics = {
                    TEST_ACCURACY: test_accuracy,
                    TEST_GAP: train_accuracy - test_accuracy,
                    TEST_IMAGES: int(test_confusion.sum()),
                }
                # Per image, so the noise of a difference between settings can be measured (regsweep.results).
                tracking.log_per_image_correct(
                    {"train": train_correct, "validation": val_correct, "test": test_correct}
                )
        with timer("save"):  # every run: any of them can be exported or registered later
            backbone, unfrozen = cfg.model.backbone, cfg.model.unfrozen_blocks
            tracking.log_trained(
                models.trained_weights(classifier, base, backbone, unfrozen),
                rebuild_recipe(cfg, splits.class_names, weights, digests[unfrozen]),
            )
        metrics = {
            TRAIN_ACCURACY: train_accuracy,
            VAL_ACCURACY: val_accuracy,
            GAP: train_accuracy - val_accuracy,
            # The sizes set how much of an accuracy difference is noise (regsweep.results).
            TRAIN_IMAGES: int(train_confusion.sum()),
            VAL_IMAGES: int(confusion.sum()),
            RUNNING_TRAIN_ACCURACY: float(history["accuracy"][best_epoch]),
            BEST_VAL_LOSS: float(history["val_loss"][best_epoch]),
            "best_epoch": best_epoch + 1,
            "epochs_trained": len(history["loss"]),
            **test_metrics,
            **trainer.cache_metrics,
            **{f"seconds_{name}": value for name, value in timer.seconds.items()},
        }
        artifacts = cfg.tracking.artifacts
        plots = artifacts == "all" or (artifacts == "best" and (leads is None or leads(metrics)))
        tracking.log_results(metrics, history, fitted.phase2_start, confusion, splits.class_names, plots)

    stages = ", ".join(f"{name} {value:.1f}" for name, value in timer.seconds.items())
    counts = trainer.cache_metrics
    cached = f"; feature cache: {counts['cache_hits']} hits, {counts['cache_misses']} misses" if counts else ""
    log.debug(f"run {mlflow_run.info.run_id}: {len(history['loss'])} epochs; seconds: {stages}{cached}")
    return RunResult(mlflow_run.info.run_id, metrics, classifier)


@dataclass
class Timer:
    """Wall seconds per stage of a run, logged as `seconds_<stage>`: where a trial's time went."""

    seconds: dict[str, float] = field(default_factory=dict)
    started: float = 0.0

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start

    def around(self, stage: str, callbacks: tuple) -> tuple:
        """Times Keras callbacks (logging, pruning) by stamping before and after them each epoch."""
        return (_Stamp(self, stage, start=True), *callbacks, _Stamp(self, stage, start=False))


class _Stamp(keras.callbacks.Callback):
    def __init__(self, timer: Timer, stage: str, start: bool):
        super().__init__()
        self.timer, self.stage, self.start = timer, stage, start

    def on_epoch_end(self, epoch, logs=None):
        if self.start:
            self.timer.started = time.perf_counter()
        else:
            elapsed = time.perf_counter() - self.timer.started
            self.timer.seconds[self.stage] = self.timer.seconds.get(self.stage, 0.0) + elapsed


def rebuild_recipe(cfg: DictConfig, class_names, weights: str | None, frozen_sha256: str) -> dict:
    """What rebuilds a run's whole model around its trained layers (regsweep.export)."""
    model = cfg.model
    if weights not in (None, "imagenet"):
        weights = str(Path(weights).resolve())  # export may run from another folder
    return {
        "backbone": model.backbone,
        "backbone_weights": weights,
        "frozen_sha256": frozen_sha256,
        "image_size": model.image_size,
        "pooling": model.pooling,
        "head_units": model.head_units,
        "dropout": model.dropout,
        "unfrozen_blocks": model.unfrozen_blocks,
        "seed": cfg.train.seed,
        "class_names": list(class_names),
    }


def summary(result: RunResult, cfg: DictConfig) -> str:
    """What `regsweep train` prints: the honest gap, and where the run is logged."""
    metrics = result.metrics
    return "\n".join(
        [
            f"train_accuracy {metrics[TRAIN_ACCURACY]:.4f}  (inference mode, un-augmented training images)",
            f"val_accuracy   {metrics[VAL_ACCURACY]:.4f}",
            f"gap            {metrics[GAP]:.4f}  (running train accuracy {metrics[RUNNING_TRAIN_ACCURACY]:.4f})",
            f"MLflow run {result.run_id} ({run_name(cfg)}) in {redact(cfg.tracking.uri)}",
        ]
    )


def score(classifier, dataset, num_classes: int) -> tuple[float, np.ndarray, np.ndarray]:
    """Accuracy, confusion matrix and per-image correctness (in dataset order), in inference
    mode (dropout off, no augmentation)."""
    labels = np.concatenate([y.numpy() for _, y in dataset])
    predicted = np.argmax(classifier.predict(dataset, verbose=0), axis=1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    return float(np.trace(confusion) / confusion.sum()), confusion, labels == predicted

"""One training run, top to bottom: config → data → model → two-phase fit → honest gap → MLflow.

The gap is measured after training, in inference mode, on the un-augmented training images:
Keras's running training accuracy (dropout on, augmented images) falls as regularization
rises even when nothing generalizes better, so it is logged but never called the gap.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
from omegaconf import DictConfig

from regsweep import cache, data, demo, faults, tracking
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
        seed = cfg.train.seed
        splits = data.resolve_splits(cfg.data, cfg.model.image_size, store, with_test=with_test)
        by_split = data.split_fingerprints(splits)  # listed once: the cache keys on them too
        dataset_fingerprint = data.fingerprint(splits, by_split)
        weights = resolve_weights(cfg, store)  # may pretrain the demo backbone: before seeding

        # Nothing from an earlier run in this process leaks in. The garbage collection that
        # clear_session would also run costs ~0.4 s a trial; the sweep's worker processes are
        # replaced every sweep.trials_per_worker trials, which bounds memory instead.
        keras.backend.clear_session(free_memory=False)
        keras.utils.set_random_seed(seed)  # a random-init backbone draws from it
        base = models.reusable_backbone(cfg.model.backbone, cfg.model.image_size, weights, seed)
        keras.utils.set_random_seed(seed)  # the head's init: the same whether base was built or reused
        classifier = models.build_classifier(
            cfg.model.backbone,
            base,
            len(splits.class_names),
            cfg.model.pooling,
            cfg.model.head_units,
            cfg.model.dropout,
            seed,
        )
        # Each cut's frozen-weight digest, in one pass: the feature cache's key, and (for the run's
        # own cut) what `regsweep export` checks before putting the trained layers back.
        digests = cache.prefix_digests(base, cfg.model.backbone, list(range(cfg.model.unfrozen_blocks + 1)))
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
        with timer("features"):
            if cfg.cache.enabled:  # the head, then suffix + head, on cached prefix outputs
                cached = cache.prepare(cfg, splits, base, classifier, by_split, digests)
                head, tune = cached.head, cached.tune
                cache_metrics = {"cache_hits": cached.hits, "cache_misses": cached.misses}
            else:  # the whole classifier on freshly augmented images, every epoch
                augmenter = data.build_augmenter(cfg.augment.strength, cfg.data.flip, cfg.augment, seed)
                datasets = data.make_datasets(splits, cfg.model.image_size, cfg.data.batch_size, augmenter, seed)
                head = cache.Phase(classifier, datasets)
                tune = head if cfg.model.unfrozen_blocks > 0 else None
                cache_metrics = {}
        # seconds_fit includes seconds_callbacks: MLflow's epoch logging, pruning, progress (the
        # epochs still held when fit ends are written after it, as harness)
        with tracking.EpochLog(mlflow_run.info.run_id) as epochs, timer("fit"):
            epoch_logger = keras.callbacks.LambdaCallback(on_epoch_end=epochs.epoch_end)
            harness = timer.around("callbacks", (epoch_logger, *callbacks))
            history, phase2_start, final = fit_two_phases(head, tune, base, cfg, harness)
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
            **cache_metrics,
            **{f"seconds_{name}": value for name, value in timer.seconds.items()},
        }
        artifacts = cfg.tracking.artifacts
        plots = artifacts == "all" or (artifacts == "best" and (leads is None or leads(metrics)))
        tracking.log_results(metrics, history, phase2_start, confusion, splits.class_names, plots)

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


def resolve_weights(cfg: DictConfig, store: Path) -> str | None:
    """'digits' means the demo CNN pretrained (once, cached) on digits 8 and 9 (regsweep.demo)."""
    weights = cfg.model.weights
    if weights == "digits":
        return str(demo.ensure_pretrained_backbone(store, cfg.model.image_size))
    if weights in (None, "imagenet"):
        return weights
    return str(Path(weights).expanduser())


def fit_two_phases(
    head: cache.Phase, tune: cache.Phase | None, base, cfg: DictConfig, callbacks: tuple = ()
) -> tuple[dict[str, list[float]], int | None, cache.Phase]:
    """Phase 1 trains the head on the frozen backbone; phase 2 fine-tunes the top blocks.

    Phase 2 starts from the trained head (never a random one) at optim.lr × fine_tune_factor.
    Each phase stops early on val_loss and restores its best weights; if fine-tuning never
    beats phase 1's best val_loss, phase 1's weights are kept. With the feature cache the two
    phases are two models over shared layers (head on backbone outputs; suffix + head on cut
    outputs); online, both are the whole classifier. Returns the history of both phases end
    to end, the epoch index where phase 2 began (None without it) and the phase to evaluate.
    """
    train_cfg = cfg.train
    history = _fit(head, cfg.optim.lr, 0, train_cfg.epochs, train_cfg, callbacks)
    if tune is None:
        return history, None, head

    phase1_weights = tune.model.get_weights()
    phase1_best = min(history["val_loss"])
    models.unfreeze_top_blocks(base, cfg.model.backbone, cfg.model.unfrozen_blocks)
    start = len(history["loss"])
    lr = cfg.optim.lr * cfg.optim.fine_tune_factor
    phase2 = _fit(tune, lr, start, start + train_cfg.fine_tune_epochs, train_cfg, callbacks)
    if min(phase2["val_loss"]) >= phase1_best:
        tune.model.set_weights(phase1_weights)
    for key, values in phase2.items():
        history[key] = history[key] + values
    return history, start, tune


def _fit(
    phase: cache.Phase, lr: float, initial_epoch: int, epochs: int, train_cfg, callbacks: tuple
) -> dict[str, list[float]]:
    classifier, datasets = phase.model, phase.datasets
    if phase.head_of is not None and classifier.compiled:  # the reusable head: as new, without retracing
        if models.start_head(classifier, phase.head_of):
            classifier.train_function = None  # traced with the old dropout rate
        for variable in classifier.optimizer.variables:  # a new Adam's state: step 0, no moments
            variable.assign(np.zeros(variable.shape, variable.dtype))
        classifier.optimizer.learning_rate = lr
    else:
        if phase.head_of is not None:
            models.start_head(classifier, phase.head_of)
        classifier.compile(
            optimizer=keras.optimizers.Adam(lr),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            # On cached features a step is a few small matrix products, and Keras's per-step dispatch
            # cost more than them: run each epoch's steps in one call (the same steps, in the same
            # order, so the same weights). Online data keeps one step a call.
            steps_per_execution=datasets.train_steps or 1,
        )
    early_stopping = keras.callbacks.EarlyStopping(
        monitor="val_loss", patience=train_cfg.early_stopping_patience, restore_best_weights=True
    )
    fitted = classifier.fit(
        datasets.train,
        validation_data=datasets.val,
        initial_epoch=initial_epoch,
        epochs=epochs,
        steps_per_epoch=datasets.train_steps,
        callbacks=[early_stopping, keras.callbacks.TerminateOnNaN(), *callbacks],
        shuffle=False,  # the dataset reshuffles itself every epoch
        verbose=train_cfg.verbose,
    )
    if phase.head_of is not None:
        models.finish_head(classifier, phase.head_of)
    history = {k: [float(v) for v in values] for k, values in fitted.history.items()}
    if any(math.isnan(v) for v in history["loss"]):
        raise FloatingPointError(f"training diverged (loss became NaN) at learning rate {lr:g}: lower optim.lr")
    return history


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

"""How a classifier is fit: two phases, on images or on cached features, behind one call.

`prepare` picks the strategy: online (`cache=off`: the whole classifier on freshly augmented
images every epoch) or cached (the head, then suffix + head, on frozen-prefix outputs that
`regsweep.cache` stores). Either way it returns a `Trainer`, and `two_phases` fits it the
same way: the head first, then the top blocks (the keras.io fine-tuning guide's two phases).

Everything that makes a sweep's trials cheap lives here too: the backbone built once per process
(`backbone`), the head's model traced once per process (`reusable_head`), and the two Keras
workarounds they need, named in one place with the version they were checked on.
"""

from __future__ import annotations

import itertools
import math
import weakref
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
from omegaconf import DictConfig, OmegaConf

from regsweep import cache, data, progress
from regsweep import model as models
from regsweep.cache import FEATURES, LABELS, Entry

# The two places where a reused model needs more than public, documented Keras. Both were
# checked on this version; tests/test_fit.py fails if either stops holding.
KERAS_CHECKED = "3.15"


def reset_optimizer(optimizer: keras.optimizers.Optimizer, learning_rate: float) -> None:
    """A used Adam made as new at `learning_rate`: step 0, no moments. Keras has no public reset;
    a freshly built Adam's variables are zeros (iterations, momentums, velocities) but for the
    rate, which is set after them (checked on KERAS_CHECKED)."""
    for variable in optimizer.variables:
        variable.assign(np.zeros(variable.shape, variable.dtype))
    optimizer.learning_rate = learning_rate


def retrace_training(model: keras.Model) -> None:
    """Makes the next fit trace a new train function. A Dropout rate is a Python constant of the
    traced graph, so changing it needs a new trace; `make_train_function(force=True)` is public
    on the model but undocumented (checked on KERAS_CHECKED)."""
    model.make_train_function(force=True)


@dataclass
class Phase:
    """A model and the datasets it trains on: images online, a cut's cached outputs otherwise."""

    model: keras.Model  # shares its layers with the classifier that gets logged, unless head_of is set
    datasets: data.Datasets
    head_of: keras.Model | None = None  # the classifier whose head this reusable model trains (reusable_head)


@dataclass
class Trainer:
    """A run's two phases, ready to fit, and what the feature cache served them."""

    head: Phase  # phase 1: the head on the frozen backbone
    tune: Phase | None  # phase 2: the top blocks and the head (None: nothing unfrozen)
    cache_metrics: dict[str, int]  # cache_hits and cache_misses (none online)


@dataclass
class Fitted:
    """What a fit leaves for evaluation and logging."""

    history: dict[str, list[float]]  # both phases end to end
    phase2_start: int | None  # the epoch index where phase 2 began (None without it)
    final: Phase  # the phase to evaluate


def seeded_classifier(cfg: DictConfig, num_classes: int, weights: str | None) -> tuple[keras.Model, keras.Model]:
    """The run's backbone (this process's last one, reset) and its classifier, freshly seeded.

    Nothing from an earlier run in this process leaks in. The garbage collection that
    clear_session would also run costs ~0.4 s a trial; the sweep's worker processes are
    replaced every sweep.trials_per_worker trials, which bounds memory instead.
    """
    model, seed = cfg.model, cfg.train.seed
    keras.backend.clear_session(free_memory=False)
    keras.utils.set_random_seed(seed)  # a random-init backbone draws from it
    base = backbone(model.backbone, model.image_size, weights, seed)
    keras.utils.set_random_seed(seed)  # the head's init: the same whether base was built or reused
    classifier = models.build_classifier(
        model.backbone, base, num_classes, model.pooling, model.head_units, model.dropout, seed
    )
    return base, classifier


def prepare(
    cfg: DictConfig,
    splits: data.Splits,
    base: keras.Model,
    classifier: keras.Model,
    fingerprints: dict[str, str] | None = None,
    digests: dict[int, str] | None = None,
) -> Trainer:
    """The run's phases: on cached features with `cache=on` (the default), else online."""
    if cfg.cache.enabled:
        return cached(cfg, splits, base, classifier, fingerprints, digests)
    return online(cfg, splits, classifier)


def online(cfg: DictConfig, splits: data.Splits, classifier: keras.Model) -> Trainer:
    """Both phases train the whole classifier on freshly augmented images, every epoch."""
    seed = cfg.train.seed
    augmenter = data.build_augmenter(cfg.augment.strength, cfg.data.flip, cfg.augment, seed)
    datasets = data.make_datasets(splits, cfg.model.image_size, cfg.data.batch_size, augmenter, seed)
    head = Phase(classifier, datasets)
    return Trainer(head, head if cfg.model.unfrozen_blocks > 0 else None, {})


def two_phases(trainer: Trainer, base: keras.Model, cfg: DictConfig, callbacks: tuple = ()) -> Fitted:
    """Phase 1 trains the head on the frozen backbone; phase 2 fine-tunes the top blocks.

    Phase 2 starts from the trained head (never a random one) at optim.lr × fine_tune_factor.
    Each phase stops early on val_loss and restores its best weights; if fine-tuning never
    beats phase 1's best val_loss, phase 1's weights are kept. With the feature cache the two
    phases are two models over shared layers (head on backbone outputs; suffix + head on cut
    outputs); online, both are the whole classifier.
    """
    head, tune, train_cfg = trainer.head, trainer.tune, cfg.train
    history = _fit(head, cfg.optim.lr, 0, train_cfg.epochs, train_cfg, callbacks)
    if tune is None:
        return Fitted(history, None, head)

    phase1_weights = tune.model.get_weights()
    phase1_best = min(history["val_loss"])
    models.unfreeze_top_blocks(base, cfg.model.backbone, cfg.model.unfrozen_blocks)
    _FINE_TUNED.add(base)  # `backbone` puts its loaded weights back before the next run
    start = len(history["loss"])
    lr = cfg.optim.lr * cfg.optim.fine_tune_factor
    phase2 = _fit(tune, lr, start, start + train_cfg.fine_tune_epochs, train_cfg, callbacks)
    if min(phase2["val_loss"]) >= phase1_best:
        tune.model.set_weights(phase1_weights)
    for key, values in phase2.items():
        history[key] = history[key] + values
    return Fitted(history, start, tune)


def _fit(
    phase: Phase, lr: float, initial_epoch: int, epochs: int, train_cfg, callbacks: tuple
) -> dict[str, list[float]]:
    classifier, datasets = phase.model, phase.datasets
    if phase.head_of is not None and classifier.compiled:  # the reusable head: as new, without retracing
        if start_head(classifier, phase.head_of):
            retrace_training(classifier)  # traced with the old dropout rate
        reset_optimizer(classifier.optimizer, lr)
    else:
        if phase.head_of is not None:
            start_head(classifier, phase.head_of)
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
        finish_head(classifier, phase.head_of)
    history = {k: [float(v) for v in values] for k, values in fitted.history.items()}
    if any(math.isnan(v) for v in history["loss"]):
        raise FloatingPointError(f"training diverged (loss became NaN) at learning rate {lr:g}: lower optim.lr")
    return history


# --- the cached strategy ---------------------------------------------------------------------


def cached(
    cfg: DictConfig,
    splits: data.Splits,
    base: keras.Model,
    classifier: keras.Model,
    fingerprints: dict[str, str] | None = None,
    digests: dict[int, str] | None = None,
) -> Trainer:
    """Looks up (or fills) the entries a run needs and builds the models and datasets of its phases.

    Phase 1 trains only the head, so it reads the backbone's pooled output (cut 0, shared by
    every trial at the same strength, whatever its cut); phase 2 reads the output of the cut
    below the top `model.unfrozen_blocks` blocks and trains those blocks as well. A miss runs
    the images through the backbone once and stores every cut from the run's own up to cut 0:
    the pass computes them anyway, and they are the cuts other trials of a study ask for.
    A run passes the split `fingerprints` and the cuts' weight `digests` it already has.
    """
    backbone, size, seed = cfg.model.backbone, cfg.model.image_size, cfg.train.seed
    unfrozen = cfg.model.unfrozen_blocks
    cuts = list(range(unfrozen + 1))
    store = cache.store_for(cfg)
    digests = digests or models.prefix_digests(base, backbone, cuts)
    common = {
        "format": cache.FORMAT,
        "backbone": backbone,
        "image_size": size,
        "preprocess": f"layers:{models.BACKBONES[backbone].preprocess}",  # regsweep.model.preprocess
        "decoder": "keras.utils.image_dataset_from_directory rgb bilinear, rounded to uint8",
        "versions": _versions(),
        "classes": list(splits.class_names),
    }
    folders = {"train": splits.train, "validation": splits.val}
    fingerprints = fingerprints or data.split_fingerprints(splits)  # the run's, when it passes them
    strength = float(cfg.augment.strength)
    views = [("train", None), ("validation", None)]
    views += [("train", index) for index in range(cfg.cache.augmented_views)] if strength > 0 else []

    def request(cut: int, split: str, index: int | None) -> tuple[dict, str]:
        cut_parts = {
            "unfrozen_blocks": cut,
            "layer": models.cut_layer(base, backbone, cut),
            "weights_sha256": digests[cut],
        }
        if cut == 0:  # the prefix ends with the head's pooling
            cut_parts["pooling"] = cfg.model.pooling
        view = (
            "clean"
            if index is None
            else {
                "index": index,
                "strength": round(strength, 6),
                "flip": cfg.data.flip,
                "seed": seed,
                "ranges": OmegaConf.to_container(cfg.augment, resolve=True) | {"strength": None},
            }
        )
        parts = {**common, "cut": cut_parts, "split": split, "data": fingerprints[split], "view": view}
        cut_label = f"cut{cut}" + (f"-{cfg.model.pooling}" if cut == 0 else "")
        view_label = "clean" if index is None else f"s{strength:g}-v{index}"
        return parts, f"{backbone}-{split}-{cut_label}-{view_label}"

    prefixes = {}  # by the cuts a fill needs: one model, so predict traces once, not once per view

    def filler(split: str, index: int | None):
        def fill(stagings: dict[int, Path]) -> None:
            wanted = tuple(sorted(stagings))
            if wanted not in prefixes:
                prefixes[wanted] = models.cached_prefix(classifier, backbone, base, [cuts[i] for i in wanted])
            prefix = prefixes[wanted]
            images, labels = data.load_images(folders[split], splits.class_names, size)
            augmenter = (
                None
                if index is None
                else data.build_augmenter(strength, cfg.data.flip, cfg.augment, view_seed(seed, index))
            )
            view = "clean images" if index is None else f"augmented view {index + 1} of {cfg.cache.augmented_views}"
            write_features(
                [stagings[i] for i in wanted],
                prefix,
                images,
                labels,
                augmenter,
                f"filling the feature cache ({split}, {view})",
            )

        return fill

    entries: dict[tuple, dict[int, Entry]] = {}
    for split, index in views:
        found = store.get_many([request(cut, split, index) for cut in cuts], filler(split, index))
        entries[split, index] = dict(zip(cuts, found))
    everything = [entry for by_cut in entries.values() for entry in by_cut.values()]
    store.evict(keep={entry.path for entry in everything})
    hits = sum(entry.hit for entry in everything)

    def phase(cut: int) -> Phase:
        clean_train, val = entries["train", None][cut], entries["validation", None][cut]
        augmented = [entries["train", index][cut] for _, index in views[2:]]
        batch_size = cfg.data.batch_size
        train, steps = training_stream(
            [e.features for e in augmented] or [clean_train.features], clean_train.labels, batch_size, seed
        )
        datasets = data.Datasets(
            train=train,
            train_eval=evaluation_set(clean_train.features, clean_train.labels, batch_size),
            val=evaluation_set(val.features, val.labels, batch_size),
            train_steps=steps,
        )
        if cut == 0:  # the head alone: one model per process, its traced functions kept between trials
            trainer = reusable_head(classifier, clean_train.features.shape[1:], steps)
            return Phase(trainer, datasets, head_of=classifier)
        trained = models.classifier_on_features(classifier, backbone, base, cut, clean_train.features.shape[1:])
        return Phase(trained, datasets)

    counts = {"cache_hits": hits, "cache_misses": len(everything) - hits}
    return Trainer(phase(0), phase(unfrozen) if unfrozen > 0 else None, counts)


def _versions() -> dict[str, str]:
    import tensorflow as tf  # lazy: loaded with Keras anyway; named here for the cache key

    return {"keras": keras.__version__, "tensorflow": tf.__version__}


def view_seed(seed: int, index: int) -> int:
    """Each view draws its own augmentations; the layers use seed … seed+5 of it."""
    return seed * 1000 + 10 * (index + 1)


COMPUTE_BATCH = 64  # images per prefix forward pass when filling an entry


def write_features(
    folders: list[Path],
    prefix,
    images: np.ndarray,
    labels: np.ndarray,
    augmenter=None,
    what: str = "computing cached features",
) -> None:
    """Runs `images` (uint8) through the optional augmenter and the prefix, batch by batch,
    writing output k into `folders[k]` as a memory-mapped .npy file: no whole array is ever
    held in memory. `what` names the step in its progress bar (or log lines).

    Augmentation runs in a tf.data map, sequentially on purpose: its seeded random state is
    then consumed in file order, so the same view is computed bit for bit every time.
    """
    import tensorflow as tf

    def slices():  # batches read from the array as they are needed: TensorFlow holds no copy of it all
        for start in range(0, len(images), COMPUTE_BATCH):
            yield images[start : start + COMPUTE_BATCH]

    signature = tf.TensorSpec((None, *images.shape[1:]), tf.uint8)
    batches = tf.data.Dataset.from_generator(slices, output_signature=signature).map(
        lambda x: tf.cast(x, tf.float32), num_parallel_calls=tf.data.AUTOTUNE
    )
    if augmenter is not None:
        batches = batches.map(lambda x: augmenter(x, training=True))
    outputs = [
        np.lib.format.open_memmap(
            folder / FEATURES, mode="w+", dtype=np.float32, shape=(len(images), *(int(d) for d in output.shape[1:]))
        )
        for folder, output in zip(folders, prefix.outputs, strict=True)
    ]
    start = 0
    with progress.steps(what, len(images)) as advance:
        for batch in batches.prefetch(tf.data.AUTOTUNE):
            n = int(batch.shape[0])
            if n < COMPUTE_BATCH:  # pad the last batch: one input shape, so the step is traced once
                batch = tf.pad(batch, [[0, COMPUTE_BATCH - n], [0, 0], [0, 0], [0, 0]])
            results = prefix.predict_on_batch(batch)
            for out, result in zip(outputs, results if isinstance(results, (list, tuple)) else [results]):
                out[start : start + n] = result[:n]
            start += n
            advance(n)
    for folder, out in zip(folders, outputs):
        out.flush()
        np.save(folder / LABELS, labels.astype(np.int32))
    del outputs


class FeatureStream:
    """Endless training epochs of cached features, read from the memory map a chunk at a time.

    One Keras fit keeps one iterator (fit runs with steps_per_epoch), so this generator runs
    once per phase: epoch e reads view e mod K, in an order shuffled by (seed, e). Chunks are
    whole batches that never cross an epoch, so every epoch is exactly the same batches as an
    online epoch would be; only the chunk in flight is held in memory.
    """

    def __init__(self, views: list[np.ndarray], labels: np.ndarray, batch_size: int, seed: int):
        self.views, self.labels, self.seed = views, labels, seed
        row_bytes = max(1, int(np.prod(views[0].shape[1:])) * 4)
        self.chunk_rows = batch_size * max(1, CHUNK_BYTES // (row_bytes * batch_size))

    def __call__(self):
        n = len(self.labels)
        for epoch in itertools.count():
            view = self.views[epoch % len(self.views)]
            order = np.random.default_rng([self.seed, epoch]).permutation(n)
            for start in range(0, n, self.chunk_rows):
                rows = order[start : start + self.chunk_rows]
                ascending = np.argsort(rows)  # read the memory map in file order, then shuffle
                chunk = np.empty((len(rows), *view.shape[1:]), np.float32)
                chunk[ascending] = view[rows[ascending]]
                yield chunk, self.labels[rows]


CHUNK_BYTES = 64 * 2**20


def training_stream(views: list[np.ndarray], labels: np.ndarray, batch_size: int, seed: int):
    """The endless, shuffled training dataset and its number of batches per epoch."""
    import tensorflow as tf

    stream = FeatureStream(views, labels, batch_size, seed)
    signature = (tf.TensorSpec((None, *views[0].shape[1:]), tf.float32), tf.TensorSpec((None,), tf.int32))
    dataset = tf.data.Dataset.from_generator(stream, output_signature=signature).flat_map(
        lambda x, y: tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size)
    )
    return dataset.prefetch(tf.data.AUTOTUNE), math.ceil(len(labels) / batch_size)


EVALUATION_BATCH_BYTES = 32 * 2**20


def evaluation_set(features: np.ndarray, labels: np.ndarray, batch_size: int):
    """One un-augmented view, read into memory once: Keras evaluates it every epoch.

    Evaluated in inference mode, so the batch size changes no result, only the speed: batches of
    up to 32 MiB of features, not data.batch_size rows. With few training images the validation
    set is the larger one, and its per-batch overhead dominated each epoch (measured in
    benchmarks/README.md).
    """
    import tensorflow as tf

    features = np.asarray(features)
    row_bytes = max(1, features[:1].nbytes)
    rows = max(batch_size, min(len(labels), EVALUATION_BATCH_BYTES // row_bytes))
    return tf.data.Dataset.from_tensor_slices((features, labels)).batch(rows).prefetch(tf.data.AUTOTUNE)


# --- what a process keeps between trials ------------------------------------------------------


_REUSABLE: dict[tuple, tuple[keras.Model, list]] = {}
_FINE_TUNED: weakref.WeakSet = weakref.WeakSet()  # backbones whose blocks were unfrozen since they were loaded or reset


def forget() -> None:
    """Drops what this process keeps between trials, as a fresh worker process starts."""
    _REUSABLE.clear()
    _HEAD_TRAINERS.clear()


def backbone(name: str, image_size: int, weights: str | None, seed: int) -> keras.Model:
    """`model.load_backbone`, built once per process and reset to its loaded weights on later calls.

    Building MobileNetV2 and reading its weights takes about a second, which a sweep's worker
    would otherwise pay again in every trial for the same trunk. Fine-tuning changes the top
    blocks' weights, so a call after fine-tuning puts all of them back. A random init (weights None) is
    keyed by the seed that drew it; a weights file by its size and modification time.
    """
    source = Path(weights) if weights not in (None, "imagenet") else None
    stat = source.stat() if source is not None and source.is_file() else None
    key = (
        name,
        image_size,
        weights,
        seed if weights is None else None,
        (stat.st_size, stat.st_mtime_ns) if stat else None,
    )
    if key in _REUSABLE:
        base, values = _REUSABLE[key]
        if base in _FINE_TUNED:  # only fine-tuning changes a backbone's weights
            base.set_weights(values)
            _FINE_TUNED.discard(base)
    else:
        _REUSABLE.clear()  # one trunk per process: a sweep's trials share one
        base = models.load_backbone(name, image_size, weights)
        _REUSABLE[key] = (base, base.get_weights())
    base.trainable = False
    return base


_HEAD_TRAINERS: dict[tuple, keras.Model] = {}


def reusable_head(classifier: keras.Model, feature_shape: tuple, steps_per_epoch: int) -> keras.Model:
    """Phase 1's model on cut 0 (pooled vectors → head), built and compiled once per process.

    A new Keras model traces new train, test and predict functions, about a third of a cached
    frozen trial's fit. This one keeps its compiled optimizer and its test and predict
    functions (inference mode: no dropout) from trial to trial. `start_head` gives it a
    trial's fresh head and rate; `finish_head` hands the trained weights back to the
    classifier that gets logged. Everything that sets a result is copied in, so a trial trains
    exactly as a new model would.
    """
    dense, dropout, predictions = (classifier.get_layer(name) for name in models.HEAD_LAYERS[1:])
    # It runs an epoch's steps per call (_fit), so a training set of another size needs its own.
    shape = (tuple(feature_shape), steps_per_epoch, dense.units, predictions.units, dropout.seed, classifier.name)
    key = (*shape, dropout.rate > 0)  # Keras's Dropout draws no seed state at rate 0: another model
    if key not in _HEAD_TRAINERS:
        for other in [k for k in _HEAD_TRAINERS if k[:-1] != shape]:  # a sweep's trials share one head shape
            del _HEAD_TRAINERS[other]
        inputs = keras.Input(feature_shape, name="features")
        x = keras.layers.Dense(dense.units, activation=dense.activation, name=dense.name)(inputs)
        x = keras.layers.Dropout(dropout.rate, seed=dropout.seed, name=dropout.name)(x)
        outputs = keras.layers.Dense(predictions.units, activation=predictions.activation, name=predictions.name)(x)
        _HEAD_TRAINERS[key] = keras.Model(inputs, outputs, name=f"{classifier.name}_head")
    return _HEAD_TRAINERS[key]


def start_head(trainer: keras.Model, classifier: keras.Model) -> bool:
    """Copies the classifier's fresh head (weights, dropout rate, dropout seed state) into the
    trainer. Returns whether the rate changed, which makes the train function stale: the rate
    is a constant of its graph."""
    _copy_head(classifier, trainer)
    source, target = (model.get_layer(models.HEAD_LAYERS[2]) for model in (classifier, trainer))
    changed = source.rate != target.rate
    target.rate = source.rate
    return changed


def finish_head(trainer: keras.Model, classifier: keras.Model) -> None:
    """The trained head goes back into the classifier, which phase 2 and the logged model use."""
    _copy_head(trainer, classifier)


def _copy_head(source: keras.Model, target: keras.Model) -> None:
    for name in models.HEAD_LAYERS[1:]:
        for value, variable in zip(source.get_layer(name).variables, target.get_layer(name).variables, strict=True):
            variable.assign(value)

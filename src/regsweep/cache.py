"""The frozen-prefix feature cache: run the frozen part of the backbone once per sweep.

With `model.unfrozen_blocks=N` the backbone splits at a block boundary into a frozen prefix
and a trainable suffix (a single tensor crosses the cut). The prefix's outputs never change
during training, so they are computed once, stored under `<store>/cache/features/`, and
reused by every later trial, epoch, re-run and local worker that needs the same numbers.

An entry is a folder holding `features.npy` (float32, memory-mapped when read, so a trial
streams it from disk instead of holding it in memory), `labels.npy` and `meta.json` (what
went into the key, shapes and checksums). Its name is a hash of everything that changes the
numbers: backbone, weights (hashed from the loaded values), cut, input size, preprocessing,
library versions, the split's content fingerprint, and the augmented view (strength, ranges,
flip, seed, index). Change any of them and the entry is a miss, never silently reused.

Online augmentation would make every epoch's prefix output new. Instead a trial trains on
`cache.augmented_views` = K augmented views per training image at its strength, computed
once and cycled over epochs (epoch e reads view e mod K). `cache=off` trains online, exactly.

Entries are written into a staging folder and renamed into place, so no reader ever sees a
half-written one; a per-entry file lock stops two local workers computing the same entry
twice; each entry is checked against its checksums the first time a process reads it, and a
damaged one is replaced. Least-recently-used entries are evicted above `cache.max_gb`.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import math
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from omegaconf import DictConfig, OmegaConf

from regsweep import data

FORMAT = 1
FEATURES = "features.npy"
LABELS = "labels.npy"
META = "meta.json"
COMPUTE_BATCH = 64  # images per prefix forward pass when filling an entry


# --- the entry store --------------------------------------------------------------------------


class CacheDamaged(Exception):
    """An entry's files do not match its meta.json (truncated, edited or half-copied)."""


@dataclass
class Entry:
    path: Path
    features: np.ndarray  # memory-mapped, read-only
    labels: np.ndarray
    hit: bool


def entry_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


class FeatureStore:
    """A folder of immutable entries, filled atomically and evicted least recently used first."""

    def __init__(self, root: Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.entries = self.root / "features"

    def get(self, parts: dict, label: str, fill: Callable[[Path], None]) -> Entry:
        """The entry for `parts`, computed by `fill(staging_folder)` on a miss.

        `fill` writes FEATURES and LABELS into the staging folder; the store adds the checksums
        and publishes the folder with one rename.
        """
        name = f"{label}-{entry_key(parts)}"
        final = self.entries / name
        entry = self._open(final)
        if entry is not None:
            return entry
        self.entries.mkdir(parents=True, exist_ok=True)
        with self._lock(name):
            entry = self._open(final)  # another worker may have filled it while we waited
            if entry is not None:
                return entry
            if final.exists():  # a folder without a valid meta.json: not ours to trust
                self.remove(final)
            staging = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=self.entries))
            try:
                fill(staging)
                _write_meta(staging, parts)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            data.publish_folder(staging, final)  # if a worker without our lock won the race, keep theirs
        self.evict(keep={final})
        entry = self._open(final)
        entry.hit = False
        return entry

    def _open(self, path: Path) -> Entry | None:
        if not (path / META).is_file():
            return None
        try:
            features, labels = _verified_arrays(path)
        except CacheDamaged:
            self.remove(path)
            return None
        os.utime(path)  # last used, for eviction
        return Entry(path, features, labels, hit=True)

    @contextmanager
    def _lock(self, name: str):
        locks = self.root / "locks"
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{name}.lock", "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)  # released by the kernel even if this process dies
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def listing(self) -> list[dict]:
        """Published entries, least recently used first, with their size and meta."""
        rows = []
        if not self.entries.is_dir():
            return rows
        for path in self.entries.iterdir():
            if path.name.startswith(".") or not (path / META).is_file():
                continue
            try:
                meta = json.loads((path / META).read_text())
                rows.append({"path": path, "bytes": _folder_bytes(path), "last_used": path.stat().st_mtime, "meta": meta})
            except (OSError, ValueError):
                rows.append({"path": path, "bytes": _folder_bytes(path), "last_used": 0.0, "meta": {}})
        return sorted(rows, key=lambda row: row["last_used"])

    def evict(self, keep: set[Path] = frozenset()) -> list[Path]:
        """Removes least-recently-used entries until the total fits the cap."""
        rows = self.listing()
        total = sum(row["bytes"] for row in rows)
        removed = []
        for row in rows:
            if total <= self.max_bytes:
                break
            if row["path"] in keep:
                continue
            self.remove(row["path"])
            total -= row["bytes"]
            removed.append(row["path"])
        return removed

    def remove(self, path: Path) -> None:
        """Renames the entry out of sight first, so a reader sees it whole or not at all.

        A process already reading it keeps its memory map: Linux frees the file only then.
        """
        trash = path.with_name(f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}")
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    def clear(self) -> int:
        rows = self.listing()
        for row in rows:
            self.remove(row["path"])
        for leftover in self.entries.glob(".*") if self.entries.is_dir() else ():
            shutil.rmtree(leftover, ignore_errors=True)  # staging folders of killed workers
        return len(rows)


def _write_meta(folder: Path, parts: dict) -> None:
    features = np.load(folder / FEATURES, mmap_mode="r")
    meta = {
        "format": FORMAT,
        "key": parts,
        "shape": list(features.shape),
        "dtype": str(features.dtype),
        "files": {name: {"bytes": (folder / name).stat().st_size, "sha256": _file_sha256(folder / name)}
                  for name in (FEATURES, LABELS)},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    with open(folder / META, "w") as handle:
        json.dump(meta, handle, indent=1)
        handle.flush()
        os.fsync(handle.fileno())


_VERIFIED: set[tuple] = set()


def _verified_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The entry's arrays, after checking sizes always and checksums once per process."""
    try:
        meta = json.loads((path / META).read_text())
        files = meta["files"]
        stats = {name: (path / name).stat() for name in files}
        if any(stats[name].st_size != files[name]["bytes"] for name in files):
            raise CacheDamaged(f"{path}: a file has the wrong size")
        identity = (str(path), *((stats[n].st_ino, stats[n].st_mtime_ns) for n in sorted(files)))
        if identity not in _VERIFIED:
            if any(_file_sha256(path / name) != files[name]["sha256"] for name in files):
                raise CacheDamaged(f"{path}: a checksum does not match")
            _VERIFIED.add(identity)
        features = np.load(path / FEATURES, mmap_mode="r")
        labels = np.load(path / LABELS)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CacheDamaged(f"{path}: {error}") from error
    if list(features.shape) != meta["shape"] or len(labels) != features.shape[0]:
        raise CacheDamaged(f"{path}: shapes disagree with meta.json")
    return features, labels


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def store_for(cfg: DictConfig) -> FeatureStore:
    return FeatureStore(Path(cfg.cache.dir), int(float(cfg.cache.max_gb) * 1e9))


# --- filling entries --------------------------------------------------------------------------


def write_features(folder: Path, prefix, images: np.ndarray, labels: np.ndarray, augmenter=None) -> None:
    """Runs `images` (uint8) through the optional augmenter and the prefix, batch by batch,
    straight into a memory-mapped .npy file: the whole array is never held in memory.

    Augmentation runs in a tf.data map, sequentially on purpose: its seeded random state is
    then consumed in file order, so the same view is computed bit for bit every time.
    """
    import tensorflow as tf

    batches = tf.data.Dataset.from_tensor_slices(images).batch(COMPUTE_BATCH).map(
        lambda x: tf.cast(x, tf.float32), num_parallel_calls=tf.data.AUTOTUNE)
    if augmenter is not None:
        batches = batches.map(lambda x: augmenter(x, training=True))
    shape = tuple(int(d) for d in prefix.output.shape[1:])
    out = np.lib.format.open_memmap(folder / FEATURES, mode="w+", dtype=np.float32, shape=(len(images), *shape))
    start = 0
    for batch in batches.prefetch(tf.data.AUTOTUNE):
        n = int(batch.shape[0])
        if n < COMPUTE_BATCH:  # pad the last batch: one input shape, so the step is traced once
            batch = tf.pad(batch, [[0, COMPUTE_BATCH - n], [0, 0], [0, 0], [0, 0]])
        out[start : start + n] = prefix.predict_on_batch(batch)[:n]
        start += n
    out.flush()
    del out
    np.save(folder / LABELS, labels.astype(np.int32))


# --- cached datasets for one run --------------------------------------------------------------


@dataclass
class Phase:
    """A model and the datasets it trains on: features in place of images."""

    model: "keras.Model"  # noqa: F821 - shares its layers with the classifier that gets logged
    datasets: data.Datasets


@dataclass
class CachedData:
    head: Phase  # phase 1: the head on the whole frozen backbone's output
    tune: Phase | None  # phase 2: suffix + head on the cut's output (None: nothing unfrozen)
    hits: int
    misses: int


def prepare(cfg: DictConfig, splits, base, classifier) -> CachedData:
    """Looks up (or fills) the entries a run needs and builds the models and datasets of its phases.

    Phase 1 trains only the head, so it reads the backbone's final output (shared by every
    trial at the same strength, whatever its cut); phase 2 reads the cut's output and trains
    the top blocks as well.
    """
    unfrozen = cfg.model.unfrozen_blocks
    entries: list[Entry] = []
    head = _phase(cfg, splits, base, classifier, 0, entries)
    tune = _phase(cfg, splits, base, classifier, unfrozen, entries) if unfrozen > 0 else None
    store_for(cfg).evict(keep={e.path for e in entries})
    hits = sum(e.hit for e in entries)
    return CachedData(head, tune, hits, len(entries) - hits)


def _phase(cfg: DictConfig, splits, base, classifier, unfrozen: int, entries: list[Entry]) -> Phase:
    """The entries for the cut below the top `unfrozen` blocks, and the model that reads them."""
    from regsweep import model as models  # Keras: kept out of `regsweep cache info`

    backbone, size, seed = cfg.model.backbone, cfg.model.image_size, cfg.train.seed
    prefix, suffix = models.split_backbone(backbone, base, unfrozen)
    store = store_for(cfg)
    frozen_blocks = len(models.BACKBONES[backbone].blocks) - unfrozen
    common = {
        "format": FORMAT,
        "backbone": backbone,
        "image_size": size,
        "cut": {"frozen_blocks": frozen_blocks, "layer": models.cut_layer(base, backbone, unfrozen)},
        "weights_sha256": weights_digest(prefix),
        "preprocess": _qualified_name(models.BACKBONES[backbone].preprocess),
        "decoder": "keras.utils.image_dataset_from_directory rgb bilinear, rounded to uint8",
        "versions": _versions(),
        "classes": list(splits.class_names),
    }
    # Listed and fingerprinted once per phase, not once per entry.
    fingerprints = {folder: data.folder_fingerprint(folder, splits.class_names) for folder in (splits.train, splits.val)}

    def clean(split: str, folder: Path) -> Entry:
        parts = {**common, "split": split, "data": fingerprints[folder], "view": "clean"}

        def fill(staging):
            images, labels = data.load_images(folder, splits.class_names, size)
            write_features(staging, prefix, images, labels)

        return store.get(parts, f"{backbone}-{split}-cut{frozen_blocks}-clean", fill)

    def augmented(index: int, strength: float) -> Entry:
        view = {"index": index, "strength": round(strength, 6), "flip": cfg.data.flip, "seed": seed,
                "ranges": OmegaConf.to_container(cfg.augment, resolve=True) | {"strength": None}}
        parts = {**common, "split": "train", "data": fingerprints[splits.train], "view": view}

        def fill(staging):
            images, labels = data.load_images(splits.train, splits.class_names, size)
            augmenter = data.build_augmenter(strength, cfg.data.flip, cfg.augment, view_seed(seed, index))
            write_features(staging, prefix, images, labels, augmenter)

        return store.get(parts, f"{backbone}-train-cut{frozen_blocks}-s{strength:g}-v{index}", fill)

    clean_train, val = clean("train", splits.train), clean("validation", splits.val)
    strength = float(cfg.augment.strength)
    views = [augmented(i, strength) for i in range(cfg.cache.augmented_views)] if strength > 0 else []
    entries += [clean_train, val, *views]

    batch_size = cfg.data.batch_size
    train, steps = training_stream([e.features for e in views] or [clean_train.features], clean_train.labels,
                                   batch_size, seed)
    datasets = data.Datasets(
        train=train,
        train_eval=evaluation_set(clean_train.features, clean_train.labels, batch_size),
        val=evaluation_set(val.features, val.labels, batch_size),
        train_steps=steps,
    )
    return Phase(models.build_feature_classifier(classifier, suffix, clean_train.features.shape[1:]), datasets)


def view_seed(seed: int, index: int) -> int:
    """Each view draws its own augmentations; the layers use seed … seed+5 of it."""
    return seed * 1000 + 10 * (index + 1)


def weights_digest(model) -> str:
    """Identifies the prefix's loaded weights by value: a file, 'imagenet' or a seeded random
    init all hash to what the numbers actually are."""
    digest = hashlib.sha256()
    for weight in model.weights:
        value = np.ascontiguousarray(weight.numpy())
        digest.update(f"{weight.path}:{value.dtype}:{value.shape}\0".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()[:24]


def _qualified_name(function) -> str:
    return f"{function.__module__}.{function.__qualname__}"


def _versions() -> dict[str, str]:
    import keras
    import tensorflow as tf

    return {"keras": keras.__version__, "tensorflow": tf.__version__}


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
        lambda x, y: tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size))
    return dataset.prefetch(tf.data.AUTOTUNE), math.ceil(len(labels) / batch_size)


def evaluation_set(features: np.ndarray, labels: np.ndarray, batch_size: int):
    """One un-augmented view, read into memory once: Keras evaluates it every epoch."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((np.asarray(features), labels)).batch(batch_size).prefetch(tf.data.AUTOTUNE)

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

import hashlib
import itertools
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig, OmegaConf

from regsweep import data, progress
from regsweep.files import file_lock, publish_folder

if TYPE_CHECKING:  # Keras loads when the first view is filled, not on import
    import keras

FORMAT = 2  # 2: phase 1 entries hold pooled vectors
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
        return self.get_many([(parts, label)], lambda folders: fill(folders[0]))[0]

    def get_many(self, requests: list[tuple[dict, str]], fill: Callable[[dict[int, Path]], None]) -> list[Entry]:
        """The entries for several (parts, label) requests; the missing ones filled by one call.

        One pass of the images through the backbone yields every cut above the first one, so
        a run asks for all its cuts of one view together. `fill({request index: staging
        folder})` writes only the missing ones. Locks are taken in name order, so two workers
        asking for overlapping sets cannot deadlock.
        """
        names = [f"{label}-{entry_key(parts)}" for parts, label in requests]
        entries = [self._open(self.entries / name) for name in names]
        if all(entries):
            return entries
        self.entries.mkdir(parents=True, exist_ok=True)
        with ExitStack() as locks:
            for name in sorted({names[i] for i, entry in enumerate(entries) if entry is None}):
                locks.enter_context(self._lock(name))
            stagings = {}
            for i, name in enumerate(names):
                if entries[i] is None:
                    entries[i] = self._open(self.entries / name)  # another worker may have filled it
                if entries[i] is None and i not in stagings:
                    if (self.entries / name).exists():  # a folder without a valid meta.json: not ours to trust
                        self.remove(self.entries / name)
                    for leftover in self.entries.glob(f".staging-{name}-*"):  # a killed filler's: we hold its lock
                        shutil.rmtree(leftover, ignore_errors=True)
                    stagings[i] = Path(tempfile.mkdtemp(prefix=f".staging-{name}-", dir=self.entries))
            if stagings:
                try:
                    fill(stagings)
                    for i, staging in stagings.items():
                        _write_meta(staging, requests[i][0])
                except BaseException:
                    for staging in stagings.values():
                        shutil.rmtree(staging, ignore_errors=True)
                    raise
                for i, staging in stagings.items():
                    # If a worker without our lock won the race, keep theirs.
                    publish_folder(staging, self.entries / names[i])
        self.evict(keep={self.entries / name for name in names})
        for i in stagings:
            entries[i] = self._open(self.entries / names[i])
            entries[i].hit = False
        return entries

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

    def _lock(self, name: str):
        return file_lock(self.root / "locks" / f"{name}.lock")

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
                rows.append(
                    {"path": path, "bytes": _folder_bytes(path), "last_used": path.stat().st_mtime, "meta": meta}
                )
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
        "files": {
            name: {"bytes": (folder / name).stat().st_size, "sha256": _file_sha256(folder / name)}
            for name in (FEATURES, LABELS)
        },
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


def print_info(store: FeatureStore) -> None:
    """`regsweep cache info`: the folder, its cap, and every entry, least recently used first."""
    rows = store.listing()
    total = sum(row["bytes"] for row in rows)
    print(
        f"Feature cache {store.entries}: {len(rows)} entries, {_size(total)} of {_size(store.max_bytes)} (cache.max_gb)"
    )
    for row in rows:
        key = row["meta"].get("key", {})
        shape = "x".join(str(d) for d in row["meta"].get("shape", [])) or "?"
        used = time.strftime("%Y-%m-%d %H:%M", time.localtime(row["last_used"]))
        print(f"  {row['path'].name}  {shape}  {_size(row['bytes'])}  last used {used}  data {key.get('data', '?')}")


def clear_and_print(store: FeatureStore) -> None:
    """`regsweep cache clear`: every entry goes; the next trials recompute what they need."""
    rows = store.listing()
    store.clear()
    print(f"Removed {len(rows)} entries ({_size(sum(r['bytes'] for r in rows))}) from {store.entries}")


def _size(n: int) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e7 else f"{n / 1e6:.1f} MB"


# --- filling entries --------------------------------------------------------------------------


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


# --- cached datasets for one run --------------------------------------------------------------


@dataclass
class Phase:
    """A model and the datasets it trains on: features in place of images."""

    model: keras.Model  # shares its layers with the classifier that gets logged, unless head_of is set
    datasets: data.Datasets
    head_of: keras.Model | None = None  # the classifier whose head this reusable model trains (model.reusable_head)


@dataclass
class CachedData:
    head: Phase  # phase 1: the head on the whole frozen backbone's pooled output
    tune: Phase | None  # phase 2: suffix + head on the cut's output (None: nothing unfrozen)
    hits: int
    misses: int


def prepare(
    cfg: DictConfig,
    splits,
    base,
    classifier,
    fingerprints: dict[str, str] | None = None,
    digests: dict[int, str] | None = None,
) -> CachedData:
    """Looks up (or fills) the entries a run needs and builds the models and datasets of its phases.

    Phase 1 trains only the head, so it reads the backbone's pooled output (cut 0, shared by
    every trial at the same strength, whatever its cut); phase 2 reads the output of the cut
    below the top `model.unfrozen_blocks` blocks and trains those blocks as well. A miss runs
    the images through the backbone once and stores every cut from the run's own up to cut 0:
    the pass computes them anyway, and they are the cuts other trials of a study ask for.
    A run passes the split `fingerprints` and the cuts' weight `digests` it already has.
    """
    from regsweep import model as models  # lazy: Keras, kept out of `regsweep cache info`

    backbone, size, seed = cfg.model.backbone, cfg.model.image_size, cfg.train.seed
    unfrozen = cfg.model.unfrozen_blocks
    cuts = list(range(unfrozen + 1))
    store = store_for(cfg)
    digests = digests or prefix_digests(base, backbone, cuts)
    common = {
        "format": FORMAT,
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
            trainer = models.reusable_head(classifier, clean_train.features.shape[1:], steps)
            return Phase(trainer, datasets, head_of=classifier)
        trained = models.classifier_on_features(classifier, backbone, base, cut, clean_train.features.shape[1:])
        return Phase(trained, datasets)

    return CachedData(phase(0), phase(unfrozen) if unfrozen > 0 else None, hits, len(everything) - hits)


def view_seed(seed: int, index: int) -> int:
    """Each view draws its own augmentations; the layers use seed … seed+5 of it."""
    return seed * 1000 + 10 * (index + 1)


def prefix_digests(base, backbone: str, cuts: list[int]) -> dict[int, str]:
    """Identifies each cut's prefix weights by value: a file, 'imagenet' or a seeded random init
    all hash to what the numbers actually are. One pass over the layers, bottom to top."""
    from regsweep import model as models  # lazy: Keras, kept out of `regsweep cache info`

    blocks = models.BACKBONES[backbone].blocks
    owners = models.block_layers(base, backbone)
    frozen_blocks = {cut: len(blocks) - cut for cut in cuts}
    digest, digests = hashlib.sha256(), {}
    for depth, block in enumerate(["", *blocks]):  # the stem, then the blocks
        for layer in owners[block]:
            for weight in layer.weights:
                value = np.ascontiguousarray(weight.numpy())
                digest.update(f"{weight.path}:{value.dtype}:{value.shape}\0".encode())
                digest.update(value.tobytes())
        for cut, frozen in frozen_blocks.items():
            if frozen == depth:
                digests[cut] = digest.copy().hexdigest()[:24]
    return digests


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

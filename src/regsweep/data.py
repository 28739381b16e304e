"""Image folders → tf.data pipelines, with one loader for every source.

Ready-made splits (`data.train_dir`, `data.val_dir`, optional `data.test_dir`), one folder
split by fractions (`data.dir`), and the digits demo all end up as class-folder trees read by
Keras's own `image_dataset_from_directory`, so the demo exercises exactly the user's path.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from regsweep import demo, progress
from regsweep.config import RegsweepError
from regsweep.files import publish_folder, write_text_atomically

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")  # what Keras's loader reads


@dataclass(frozen=True)
class Splits:
    train: Path
    val: Path
    test: Path | None
    class_names: tuple[str, ...]
    skipped: tuple[str, ...] = ()  # unreadable files left out (data.on_bad_image=skip)

    @property
    def folders(self) -> dict[str, Path]:
        """The split folders by split name; no "test" when there is no test split."""
        named = {"train": self.train, "validation": self.val, "test": self.test}
        return {split: folder for split, folder in named.items() if folder is not None}


@dataclass
class Datasets:
    train: "tf.data.Dataset"  # noqa: F821 - shuffled and augmented, for fitting
    train_eval: "tf.data.Dataset"  # noqa: F821 - the same images, un-augmented, in order
    val: "tf.data.Dataset"  # noqa: F821
    train_steps: int | None = None  # set when `train` is endless (one iterator for a whole fit)


def resolve_splits(data: DictConfig, image_size: int, store: Path, with_test: bool = True) -> Splits:
    """Finds (or makes) the split folders and checks that their classes agree.

    A one-folder split is seeded by data.split_seed, not train.seed: re-training with other
    seeds (regsweep report --reevaluate) must see the same train, validation and test images.
    With data.train_fraction < 1 the training images are a stratified subset (a learning
    curve's point). `with_test=False` leaves the test split unread, not even listed.
    """
    if data.source == "folders":
        folders = {"train": Path(data.train_dir), "validation": Path(data.val_dir)}
        keys = {"train": "data.train_dir", "validation": "data.val_dir"}
        if data.test_dir is not None:
            folders["test"] = Path(data.test_dir)
            keys["test"] = "data.test_dir"
    elif data.source == "split":
        _require_folder(Path(data.dir), "data.dir")
        root = split_folder(Path(data.dir), data.val_fraction, data.test_fraction, data.split_seed, Path(store))
        folders = {s: root / s for s in ("train", "validation", "test") if (root / s).is_dir()}
        keys = {s: f"data.dir ({s} part)" for s in folders}
    else:
        root = demo.ensure_demo_folders(
            Path(store), image_size, data.demo.train_per_class, data.demo.val_per_class
        )
        folders = {s: root / s for s in ("train", "validation", "test")}
        keys = {s: f"demo {s} split" for s in folders}
    if not with_test:
        folders.pop("test", None)
    for split, folder in folders.items():
        _require_folder(folder, keys[split])
    _refuse_shared_folders(folders, keys)
    class_names = check_class_folders(folders, keys)
    skipped: list[str] = []
    for split, folder in folders.items():
        bad = unusable_files(folder, class_names, Path(store))
        if bad and data.on_bad_image == "error":
            path, why = bad[0]
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise RegsweepError(
                f"{path} in {keys[split]}={folder} {why}{more}: fix or remove the file(s), "
                "or set data.on_bad_image=skip to leave them out with a warning"
            )
        if bad:
            folders[split] = without_files(folder, class_names, [path for path, _ in bad], Path(store))
            skipped += [str(path) for path, _ in bad]
            _warn_skipped(keys[split], bad)
        _require_images_in_every_class(folders[split], class_names, keys[split])
    if data.train_fraction < 1:
        folders["train"] = training_subset(folders["train"], class_names, data.train_fraction, data.split_seed, Path(store))
    return Splits(folders["train"], folders["validation"], folders.get("test"), class_names, tuple(skipped))


def _refuse_shared_folders(folders: dict[str, Path], keys: dict[str, str]) -> None:
    """One folder given as two splits would score the model on the images it trained on."""
    seen: dict[Path, str] = {}
    for split, folder in folders.items():
        resolved = folder.resolve()
        if resolved in seen:
            raise RegsweepError(
                f"{keys[split]}={folder} is the same folder as {seen[resolved]}: each split needs its own images, "
                "or the held-out accuracy measures memory; point it at a separate folder (or use data=split)")
        seen[resolved] = keys[split]


def _require_folder(folder: Path, key: str) -> None:
    if not folder.is_dir():
        raise RegsweepError(f"{key}={folder} is not a folder: point it at a folder with one sub-folder per class")


def class_folders(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def check_class_folders(folders: dict[str, Path], keys: dict[str, str]) -> tuple[str, ...]:
    """The class names shared by every split; stops on any mismatch, naming it."""
    train_classes = class_folders(folders["train"])
    if len(train_classes) < 2:
        raise RegsweepError(
            f"{keys['train']}={folders['train']} has {len(train_classes)} class sub-folder(s): "
            "a classifier needs at least 2, one sub-folder per class"
        )
    for split, folder in folders.items():
        classes = class_folders(folder)
        if classes != train_classes:
            only_train = sorted(set(train_classes) - set(classes))
            only_here = sorted(set(classes) - set(train_classes))
            details = "; ".join(
                part
                for part in (
                    f"only in train: {', '.join(only_train)}" if only_train else "",
                    f"only in {split}: {', '.join(only_here)}" if only_here else "",
                )
                if part
            )
            raise RegsweepError(
                f"class folders differ between {keys['train']}={folders['train']} and "
                f"{keys[split]}={folder} ({details}): give every split the same class sub-folders"
            )
    return tuple(train_classes)


_CHECKED: dict[tuple, str | None] = {}  # (path, size, mtime, inode) → why it is unusable, or None
_WARNED: set[tuple] = set()


def unusable_files(folder: Path, class_names: tuple[str, ...], store: Path) -> list[tuple[Path, str]]:
    """Files in the class folders that would not train: not an image Keras reads, empty, or
    undecodable (corrupt, truncated). Hidden files are ignored.

    Keras would otherwise skip the wrong suffixes silently (the user believes their .webp files
    are used) and crash mid-training on a broken JPEG. Every image is decoded once: the verdicts
    are kept on disk under <store>/cache/image-checks by the folder's content fingerprint.
    """
    found: list[tuple[Path, str]] = []
    for class_name in class_names:
        for path in sorted((folder / class_name).iterdir()):
            if path.name.startswith(".") or path.is_dir():
                continue
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                found.append((path, f"is not an image file Keras reads (it takes {', '.join(IMAGE_SUFFIXES)})"))
    memo = store / "cache" / "image-checks" / f"{folder_fingerprint(folder, class_names)}.json"
    if memo.is_file():
        verdicts = json.loads(memo.read_text())
    else:
        verdicts = {}
        files = _listing(folder, class_names)
        with progress.steps(f"checking images in {folder}", len(files)) as advance:
            for class_name, path in files:
                why = _decode_problem(path)
                if why:
                    verdicts[f"{class_name}/{path.name}"] = why
                advance()
        write_text_atomically(memo, json.dumps(verdicts))
    found += [(folder / name, why) for name, why in verdicts.items()]
    return sorted(found)


def _decode_problem(path: Path) -> str | None:
    """Why Keras could not decode this image (None: it can)."""
    from PIL import Image

    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _CHECKED:
        if stat.st_size == 0:
            _CHECKED[key] = "is an empty (zero-byte) file"
        else:
            try:
                with Image.open(path) as image:
                    image.load()
                _CHECKED[key] = None
            except Exception as error:  # PIL raises many types for broken files
                first = str(error).splitlines()[0] if str(error) else type(error).__name__
                _CHECKED[key] = f"cannot be decoded as an image ({first})"
    return _CHECKED[key]


def without_files(folder: Path, class_names: tuple[str, ...], left_out: list[Path], store: Path) -> Path:
    """A view of `folder` without `left_out`, so its fingerprint (and every cache key) reflects the skip."""
    excluded = {path.resolve() for path in left_out}
    kept = {c: [p for p in image_files(folder, c) if p.resolve() not in excluded] for c in class_names}
    return link_view(folder, kept, "usable", store)


def training_subset(folder: Path, class_names: tuple[str, ...], fraction: float, seed: int, store: Path) -> Path:
    """A stratified share of the training images: per class, the first ceil(fraction × n) (at
    least 1) of a seeded shuffle, so a smaller subset is always part of a larger one."""
    chosen = {}
    for index, class_name in enumerate(class_names):
        files = image_files(folder, class_name)
        order = np.random.default_rng([seed, index]).permutation(len(files))
        chosen[class_name] = [files[i] for i in order[: max(1, math.ceil(fraction * len(files)))]]
    return link_view(folder, chosen, "subset", store)


def link_view(folder: Path, files_by_class: dict[str, list[Path]], kind: str, store: Path) -> Path:
    """Some of `folder`'s images as a class-folder tree of symlinks under <store>/splits/, named
    by what it holds: the same selection is one folder, written once, whole."""
    listing = {c: [p.name for p in files] for c, files in files_by_class.items()}
    key = hashlib.sha256(repr((str(folder.resolve()), listing)).encode()).hexdigest()[:12]
    view = store / "splits" / f"{folder.name}-{kind}-{key}"
    if view.is_dir():
        return view
    view.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=view.parent))
    for class_name, files in files_by_class.items():
        (staging / class_name).mkdir()
        for path in files:
            os.symlink(path.resolve(), staging / class_name / path.name)
    publish_folder(staging, view)
    return view


def _warn_skipped(key: str, bad: list[tuple[Path, str]]) -> None:
    marker = (key, tuple(path for path, _ in bad))
    if marker in _WARNED:  # once per process: not again for every trial
        return
    _WARNED.add(marker)
    lines = "".join(f"\n  {path}: {why}" for path, why in bad)
    print(f"regsweep: warning: data.on_bad_image=skip leaves out {len(bad)} file(s) of {key}:{lines}",
          file=sys.stderr, flush=True)


def _require_images_in_every_class(folder: Path, class_names: tuple[str, ...], key: str) -> None:
    for class_name in class_names:
        if not image_files(folder, class_name):
            raise RegsweepError(
                f"class folder {class_name} in {key}={folder} has no usable images: "
                "add images to it, or remove the folder from every split"
            )


def image_files(folder: Path, class_name: str) -> list[Path]:
    return sorted(
        p for p in (folder / class_name).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )


def split_fingerprints(splits: Splits) -> dict[str, str]:
    """`folder_fingerprint` of each split, by split name: the feature cache keys on them too."""
    return {split: folder_fingerprint(folder, splits.class_names) for split, folder in splits.folders.items()}


def shared_images(splits: Splits) -> list[list[str]]:
    """Images whose content appears in more than one split, as groups of `split/class/file`:
    a model scored on images it trained on looks better than it is."""
    by_content: dict[bytes, list[tuple[str, str]]] = {}
    for split, folder in splits.folders.items():
        for class_name, path in _listing(folder, splits.class_names):
            by_content.setdefault(_content_hash(path), []).append((split, f"{split}/{class_name}/{path.name}"))
    return [[name for _, name in group] for group in by_content.values() if len({split for split, _ in group}) > 1]


def fingerprint(splits: Splits, by_split: dict[str, str] | None = None) -> str:
    """A hash of every file's split, class, name and content: changes when any image does.

    Pass `by_split` (from `split_fingerprints`) when already computed, so no folder is listed twice.
    """
    digest = hashlib.sha256()
    for split, value in (by_split or split_fingerprints(splits)).items():
        digest.update(f"{split}:{value}\0".encode())
    return digest.hexdigest()[:16]


def folder_fingerprint(folder: Path, class_names: tuple[str, ...]) -> str:
    """A hash of one split's class names, file names and file contents."""
    digest = hashlib.sha256()
    files = _listing(folder, class_names)
    with progress.steps(f"fingerprinting {folder}", len(files)) as advance:  # reads every byte: minutes on 20,000
        for class_name, path in files:
            digest.update(f"{class_name}/{path.name}\0".encode())
            digest.update(_content_hash(path))
            advance()
    return digest.hexdigest()[:16]


def _listing(folder: Path, class_names: tuple[str, ...]) -> list[tuple[str, Path]]:
    """(class name, image file) of every image, class by class: the count a progress bar needs up front."""
    return [(class_name, path) for class_name in class_names for path in image_files(folder, class_name)]


_CONTENT_HASHES: dict[tuple, bytes] = {}


def _content_hash(path: Path) -> bytes:
    """sha256 of a file, remembered per (path, size, mtime, inode) so trials don't re-read images.

    Content, not timestamps, decides: copying or touching an unchanged image keeps every
    cache entry built from it; editing a single byte changes the fingerprint.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _CONTENT_HASHES:
        _CONTENT_HASHES[key] = hashlib.sha256(path.read_bytes()).digest()
    return _CONTENT_HASHES[key]


def split_folder(root: Path, val_fraction: float, test_fraction: float, seed: int, store: Path) -> Path:
    """A stratified, seeded train/validation(/test) view of one class-folder tree.

    The view is a tree of symlinks under `<store>/splits/`, named by a hash of the source's
    file list, the fractions and the seed, so the same inputs always give the same split and
    the split can be inspected (or reused by a teammate) as ordinary folders.
    """
    classes = class_folders(root)
    listing = {c: image_files(root, c) for c in classes}
    key = hashlib.sha256(
        repr((str(root.resolve()), val_fraction, test_fraction, seed,
              {c: [p.name for p in files] for c, files in listing.items()})).encode()
    ).hexdigest()[:12]
    view = store / "splits" / f"{root.name}-{key}"
    if view.is_dir():
        return view
    rng = np.random.default_rng(seed)
    view.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".split-", dir=view.parent))
    for class_name, files in listing.items():
        order = rng.permutation(len(files))
        n_val = max(1, round(len(files) * val_fraction))
        n_test = max(1, round(len(files) * test_fraction)) if test_fraction > 0 else 0
        if len(files) - n_val - n_test < 1:
            raise RegsweepError(
                f"class {class_name} in data.dir={root} has {len(files)} image(s), too few to split "
                f"by data.val_fraction={val_fraction} and data.test_fraction={test_fraction}: add images or lower the fractions"
            )
        assignment = {"validation": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
        for split, indices in assignment.items():
            if split == "test" and test_fraction == 0:
                continue
            target = staging / split / class_name
            target.mkdir(parents=True)
            for i in indices:
                os.symlink(files[i].resolve(), target / files[i].name)
    publish_folder(staging, view)
    return view


def load_folder(folder: Path, class_names: tuple[str, ...], image_size: int) -> "tf.data.Dataset":  # noqa: F821
    """Decoded, resized (image, label) pairs in file order, as float32 0–255 RGB.

    Images are converted to 3-channel RGB whatever their mode (grayscale, RGBA, palette).
    """
    import tensorflow as tf

    images, labels = load_images(folder, class_names, image_size)
    return tf.data.Dataset.from_tensor_slices((images, labels)).map(_to_float, num_parallel_calls=tf.data.AUTOTUNE)


_DECODED: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}
_DECODED_KEPT = 4  # folders: enough for train, validation and test of one dataset


def load_images(folder: Path, class_names: tuple[str, ...], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All images of a split as one uint8 array (N, size, size, 3) and int32 labels, in file order.

    Keras's loader decodes and resizes in parallel inside tf.data; the result is kept per
    process (keyed by the folder's content fingerprint), so the trials of a sweep decode each
    image once, and uint8 keeps that four times smaller than float.
    """
    import keras
    import tensorflow as tf

    key = (str(folder.resolve()), folder_fingerprint(folder, class_names), image_size)
    if key in _DECODED:
        _DECODED[key] = _DECODED.pop(key)  # most recently used last
        return _DECODED[key]
    loader = keras.utils.image_dataset_from_directory(
        folder,
        labels="inferred",
        label_mode="int",
        class_names=list(class_names),
        color_mode="rgb",
        batch_size=256,
        image_size=(image_size, image_size),
        shuffle=False,
        verbose=False,
    )
    dataset = loader.map(lambda x, y: (tf.cast(tf.round(tf.clip_by_value(x, 0, 255)), tf.uint8), tf.cast(y, tf.int32)),
                         num_parallel_calls=tf.data.AUTOTUNE)
    batches = []
    with progress.steps(f"decoding images in {folder}", len(loader.file_paths)) as advance:  # listed once, by Keras
        for batch in dataset.as_numpy_iterator():
            batches.append(batch)
            advance(len(batch[1]))
    images = np.concatenate([x for x, _ in batches]) if batches else np.zeros((0, image_size, image_size, 3), np.uint8)
    labels = np.concatenate([y for _, y in batches]) if batches else np.zeros((0,), np.int32)
    _DECODED[key] = (images, labels)
    while len(_DECODED) > _DECODED_KEPT:
        _DECODED.pop(next(iter(_DECODED)))
    return images, labels


def _to_float(images, labels):
    import tensorflow as tf

    return tf.cast(images, tf.float32), labels


def build_augmenter(strength: float, flip: str, augment: DictConfig, seed: int):
    """Keras preprocessing layers, every range scaled by `strength` (None when it is 0).

    At strength 1 the ranges are the `augment.max_*` values; flips (along `data.flip`) are on
    for any strength > 0, since a flip has no magnitude.
    """
    if strength <= 0:
        return None
    import keras

    layers = []
    if flip != "none":
        layers.append(keras.layers.RandomFlip(flip, seed=seed))
    layers += [
        keras.layers.RandomRotation(augment.max_rotation * strength, fill_mode="constant", seed=seed + 1),
        keras.layers.RandomZoom(augment.max_zoom * strength, fill_mode="constant", seed=seed + 2),
        keras.layers.RandomTranslation(
            augment.max_translation * strength, augment.max_translation * strength, fill_mode="constant", seed=seed + 3
        ),
        keras.layers.RandomContrast(augment.max_contrast * strength, value_range=(0, 255), seed=seed + 4),
        keras.layers.RandomBrightness(augment.max_brightness * strength, value_range=(0, 255), seed=seed + 5),
    ]
    return keras.Sequential(layers, name="augment")


def make_datasets(splits: Splits, image_size: int, batch_size: int, augmenter, seed: int) -> Datasets:
    """Online pipelines on decoded images: the training stream (reshuffled and augmented every
    epoch) and the un-augmented evaluation sets. Used when the feature cache is off."""
    import tensorflow as tf

    train_images = load_folder(splits.train, splits.class_names, image_size)
    val_images = load_folder(splits.val, splits.class_names, image_size)
    size = len(load_images(splits.train, splits.class_names, image_size)[1])
    train = train_images.shuffle(size, seed=seed, reshuffle_each_iteration=True).batch(batch_size)
    if augmenter is not None:
        # Sequential on purpose: the augmentation layers draw from one seeded random state, and
        # parallel calls would consume it in a varying order, so a trial would not replay.
        train = train.map(lambda x, y: (augmenter(x, training=True), y))
    return Datasets(
        train=train.prefetch(tf.data.AUTOTUNE),
        train_eval=train_images.batch(batch_size).prefetch(tf.data.AUTOTUNE),
        val=val_images.batch(batch_size).prefetch(tf.data.AUTOTUNE),
    )

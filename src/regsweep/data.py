"""Image folders → tf.data pipelines, with one loader for every source.

Ready-made splits (`data.train_dir`, `data.val_dir`, optional `data.test_dir`), one folder
split by fractions (`data.dir`), and the digits demo all end up as class-folder trees read by
Keras's own `image_dataset_from_directory`, so the demo exercises exactly the user's path.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

from regsweep import demo, progress
from regsweep.config import RegsweepError
from regsweep.files import publish_folder, write_text_atomically

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # TensorFlow loads when the first pipeline is built, not on import
    import tensorflow as tf

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif")  # what Keras's loader reads (ALLOWLIST_FORMATS)
# What Keras decodes (tf.io.decode_image reads the content, whatever the name), as PIL names the
# formats: a WebP photo named .jpg trains; a TIFF named .jpg would crash the loading.
KERAS_DECODES = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP"})
FEW_TRAINING_IMAGES = 3  # a class with fewer training images than this gets a warning
IMAGE_CHECKS_VERSION = 3  # the memo of image verdicts is kept per version of what is checked


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
    train: tf.data.Dataset  # shuffled and augmented, for fitting
    train_eval: tf.data.Dataset  # the same images, un-augmented, in order
    val: tf.data.Dataset
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
        check_class_folders({"train": Path(data.dir)}, {"train": "data.dir"})  # names data.dir, not a split of it
        root = split_folder(Path(data.dir), data.val_fraction, data.test_fraction, data.split_seed, Path(store))
        folders = {s: root / s for s in ("train", "validation", "test") if (root / s).is_dir()}
        keys = {s: f"data.dir ({s} part)" for s in folders}
    else:
        root = demo.ensure_demo_folders(Path(store), image_size, data.demo.train_per_class, data.demo.val_per_class)
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
        bad = unusable_files(folder, class_names, Path(store), data.max_pixels)
        if bad and data.on_bad_image == "error":
            path, why = bad[0]
            more = f" and {len(bad) - 1} more" if len(bad) > 1 else ""
            raise RegsweepError(
                f"{path} in {keys[split]}={folder} {why}{more}: {why.fix}, "
                "or set data.on_bad_image=skip to leave them out with a warning"
            )
        if bad:
            folders[split] = without_files(folder, class_names, [path for path, _ in bad], Path(store))
            skipped += [str(path) for path, _ in bad]
            _warn_skipped(keys[split], bad)
        counts = _require_images_in_every_class(folders[split], class_names, keys[split])
        if split == "train":
            _warn_few_training_images(counts, folders[split], keys[split])
    if data.train_fraction < 1:
        folders["train"] = training_subset(
            folders["train"], class_names, data.train_fraction, data.split_seed, Path(store)
        )
    return Splits(folders["train"], folders["validation"], folders.get("test"), class_names, tuple(skipped))


def _refuse_shared_folders(folders: dict[str, Path], keys: dict[str, str]) -> None:
    """One folder given as two splits would score the model on the images it trained on."""
    seen: dict[Path, str] = {}
    for split, folder in folders.items():
        resolved = folder.resolve()
        if resolved in seen:
            raise RegsweepError(
                f"{keys[split]}={folder} is the same folder as {seen[resolved]}: each split needs its own images, "
                "or the held-out accuracy measures memory; point it at a separate folder (or use data=split)"
            )
        seen[resolved] = keys[split]


def _require_folder(folder: Path, key: str) -> None:
    if not folder.is_dir():
        raise RegsweepError(f"{key}={folder} is not a folder: point it at a folder with one sub-folder per class")


def class_folders(folder: Path) -> list[str]:
    """The class names: the sub-folders Keras takes as classes (not hidden), in Unicode NFC, so a
    name typed as NFC in one split and NFD in another (macOS writes NFD) is one class."""
    spellings: dict[str, list[str]] = {}
    for path in folder.iterdir():
        if path.is_dir() and not path.name.startswith("."):
            spellings.setdefault(unicodedata.normalize("NFC", path.name), []).append(path.name)
    for class_name, names in spellings.items():
        if len(names) > 1:
            raise RegsweepError(
                f"{folder} has {len(names)} class folders named {class_name}, spelled in different Unicode "
                "normalizations (NFC and NFD): merge them into one folder"
            )
    return sorted(spellings)


def _class_dir(folder: Path, class_name: str) -> Path:
    """The class's folder as spelled on disk (class names are NFC; the folder may be NFD)."""
    exact = folder / class_name
    if exact.is_dir() or not folder.is_dir():
        return exact
    for path in folder.iterdir():
        if unicodedata.normalize("NFC", path.name) == class_name and path.is_dir():
            return path
    return exact


def check_class_folders(folders: dict[str, Path], keys: dict[str, str]) -> tuple[str, ...]:
    """The class names shared by every split; stops on any mismatch, naming it."""
    train_classes = class_folders(folders["train"])
    if len(train_classes) < 2:
        raise RegsweepError(
            f"{keys['train']}={folders['train']} has {len(train_classes)} class sub-folder(s): "
            "a classifier needs at least 2, one sub-folder per class"
        )
    with_comma = [name for name in train_classes if "," in name]
    if with_comma:  # the MLflow parameter data.class_names joins them with commas: "a,b" would read as two
        raise RegsweepError(
            f"class folder {with_comma[0]} in {keys['train']}={folders['train']} has a comma in its name, which "
            "the logged class list (data.class_names) uses between classes: rename the folder without it in every split"
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


_CHECKED: dict[tuple, str | None] = {}  # file_identity → why it is unusable, or None
_WARNED: set[tuple] = set()


class Unusable(str):
    """Why a file would not train, with what to do about it (`fix`), said by the check that
    found it."""

    fix: str

    def __new__(cls, why: str, fix: str = "fix or remove the file(s)") -> Unusable:
        found = super().__new__(cls, why)
        found.fix = fix
        return found


FIX_LINK = "repair or remove the link(s)"
FIX_SIZE = "downscale it (it trains at model.image_size anyway) or raise data.max_pixels"


def unusable_files(
    folder: Path, class_names: tuple[str, ...], store: Path, max_pixels: int = 0
) -> list[tuple[Path, Unusable]]:
    """Files in the class folders that would not train: not an image Keras reads, empty,
    undecodable (corrupt, truncated), in a format Keras cannot decode whatever the name, over
    `max_pixels` (data.max_pixels; 0: no limit), a broken symbolic link or a link loop, or a
    symlinked sub-folder (Keras does not enter one). Hidden files are ignored unless Keras reads them.

    It checks exactly the files Keras reads (`image_files`: sub-folders included), so nothing it
    passes can crash a run. A bad link is treated like a corrupt file: data.on_bad_image=skip
    leaves it out with the same warning. Keras would otherwise skip the wrong suffixes silently
    (the user believes their .webp files are used) and crash mid-training on a broken JPEG.
    Every image is decoded once: the verdicts are kept on disk under <store>/cache/image-checks
    by the folder's content fingerprint (which covers every listed file, so it changed when
    nested files joined the listing); links are checked afresh each time, at the cost of a stat.
    """
    found: list[tuple[Path, Unusable]] = []
    for class_name in class_names:
        class_dir = _class_dir(folder, class_name)
        for path, kind in _class_entries(folder, class_name):
            if kind == "image":
                why = _link_problem(path)
            elif any(part.startswith(".") for part in path.relative_to(class_dir).parts):
                why = None
            elif kind == "linked folder":
                why = Unusable(
                    "is a symbolic link to a folder, which Keras does not enter (put the folder itself there)", FIX_LINK
                )
            else:
                why = Unusable(f"is not an image file Keras reads (it takes {', '.join(IMAGE_SUFFIXES)})")
            if why:
                found.append((path, why))
    name = f"{folder_fingerprint(folder, class_names)}-v{IMAGE_CHECKS_VERSION}-{max_pixels}.json"
    memo = store / "cache" / "image-checks" / name
    if memo.is_file():
        verdicts = {name: Unusable(*verdict) for name, verdict in json.loads(memo.read_text()).items()}
    else:
        verdicts = {}
        unreadable = {path for path, _ in found}
        files = [path for _, _, path in _listing(folder, class_names) if path not in unreadable]
        with progress.steps(f"checking images in {folder}", len(files)) as advance:
            for path in files:
                why = _decode_problem(path, max_pixels)
                if why:
                    verdicts[path.relative_to(folder).as_posix()] = why
                advance()
        write_text_atomically(memo, json.dumps({name: [why, why.fix] for name, why in verdicts.items()}))
    found += [(folder / name, why) for name, why in verdicts.items()]
    return sorted(found)


def _decode_problem(path: Path, max_pixels: int = 0) -> Unusable | None:
    """Why Keras could not decode this image, or should not (None: it can).

    PIL reads the header first: an image over max_pixels is refused before it is decoded (a
    12,000 x 12,000 PNG takes 432 MB decoded and trains at 128 px anyway), and PIL's own
    decompression-bomb warning is kept from the user, who gets the sentence instead.
    """
    stat = path.stat()
    key = (*file_identity(stat), max_pixels)
    if key not in _CHECKED:
        if not path.is_file():  # a pipe would block the decoder (and Keras) forever
            _CHECKED[key] = Unusable("is not a regular file (a pipe or a device)")
        elif stat.st_size == 0:
            _CHECKED[key] = Unusable("is an empty (zero-byte) file")
        else:
            _CHECKED[key] = _image_problem(path, max_pixels)
    return _CHECKED[key]


def _image_problem(path: Path, max_pixels: int) -> Unusable | None:
    from PIL import Image

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as image:
                width, height = image.size
                if max_pixels and width * height > max_pixels:
                    return Unusable(f"is {width:,} x {height:,} pixels, over data.max_pixels={max_pixels:,}", FIX_SIZE)
                if image.format not in KERAS_DECODES:
                    return Unusable(
                        f"is a {image.format} image, which Keras cannot decode whatever the file is named",
                        "convert it to JPEG or PNG",
                    )
                image.load()
            return None
        except Image.DecompressionBombError as error:  # over twice PIL's own limit: refused at open
            pixels = re.search(r"\((\d+) pixels\)", str(error))
            size = f"{int(pixels.group(1)):,} pixels" if pixels else "larger"
            return Unusable(f"is {size}, more than PIL opens (twice its decompression-bomb limit)", FIX_SIZE)
        except Exception as error:  # PIL raises many types for broken files
            first = str(error).splitlines()[0] if str(error) else type(error).__name__
            return Unusable(f"cannot be decoded as an image ({first})")


def _link_problem(path: Path) -> Unusable | None:
    """Why Keras could not open this listed file through its symbolic link (None: it can)."""
    try:
        os.stat(path)
        return None
    except OSError as error:
        if not os.path.islink(path):
            return Unusable(f"cannot be read ({error.strerror})")
        target = os.readlink(path)
        if error.errno == errno.ELOOP:
            return Unusable(f"is a symbolic link loop (it points to {target}, which leads back to itself)", FIX_LINK)
        return Unusable(f"is a broken symbolic link (it points to {target}, which leads to no file)", FIX_LINK)


def without_files(folder: Path, class_names: tuple[str, ...], left_out: list[Path], store: Path) -> Path:
    """A view of `folder` without `left_out`, so its fingerprint (and every cache key) reflects the skip."""
    excluded = set(left_out)  # the same listing's paths: a link loop has no resolved path
    kept = {c: [p for p in image_files(folder, c) if p not in excluded] for c in class_names}
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
    by what it holds: the same selection is one folder, written once, whole. Each link keeps its
    path under the class folder (sub-folders too), so names stay unique and Keras reads the view
    exactly as the selection lists it."""
    listing = {c: _relative_names(folder, c, files) for c, files in files_by_class.items()}
    key = hashlib.sha256(repr((str(folder.resolve()), listing)).encode()).hexdigest()[:12]
    view = store / "splits" / f"{folder.name}-{kind}-{key}"
    if view.is_dir():
        return view
    view.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{kind}-", dir=view.parent))
    for class_name, files in files_by_class.items():
        (staging / class_name).mkdir()
        for path, name in zip(files, listing[class_name]):
            _link(path, staging / class_name / name)
    publish_folder(staging, view)
    return view


def _relative_names(folder: Path, class_name: str, files: list[Path]) -> list[str]:
    """Each file's path under its class folder, e.g. "sub/a.jpg": unique where names alone are not."""
    class_dir = _class_dir(folder, class_name)
    return [path.relative_to(class_dir).as_posix() for path in files]


def _link(path: Path, link: Path) -> None:
    """A link to the file's real path; to the listed path itself when that does not resolve, so
    the check on the view names the user's broken link (Path.resolve raises on a loop)."""
    target = os.path.realpath(path)
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target if os.path.exists(target) else os.path.abspath(path), link)


def _warn_skipped(key: str, bad: list[tuple[Path, str]]) -> None:
    marker = (key, tuple(path for path, _ in bad))
    if marker in _WARNED:  # once per process: not again for every trial
        return
    _WARNED.add(marker)
    lines = "".join(f"\n  {path}: {why}" for path, why in bad)
    log.warning(f"data.on_bad_image=skip leaves out {len(bad)} file(s) of {key}:{lines}")


def _warn_few_training_images(counts: dict[str, int], folder: Path, key: str) -> None:
    """One line naming the classes with fewer than FEW_TRAINING_IMAGES training images (`counts`:
    class → images): they train, but a class the model has seen once or twice is mostly
    guessed, and the learning curve's smaller shares keep at least one image a class."""
    few = {c: n for c, n in counts.items() if n < FEW_TRAINING_IMAGES}
    marker = (key, tuple(few.items()))
    if not few or marker in _WARNED:  # once per process: not again for every trial
        return
    _WARNED.add(marker)
    listed = ", ".join(f"{c} ({n})" for c, n in few.items())
    log.warning(
        f"{len(few)} class(es) in {key}={folder} have fewer than {FEW_TRAINING_IMAGES} "
        f"training images: {listed}; they will mostly be guessed: add photos of them if you can"
    )


def _require_images_in_every_class(folder: Path, class_names: tuple[str, ...], key: str) -> dict[str, int]:
    """Each class's number of images, once every class has some."""
    counts = {class_name: len(image_files(folder, class_name)) for class_name in class_names}
    for class_name, count in counts.items():
        if not count:
            raise RegsweepError(
                f"class folder {class_name} in {key}={folder} has no usable images: "
                "add images to it, or remove the folder from every split"
            )
    return counts


def image_files(folder: Path, class_name: str) -> list[Path]:
    """The files Keras's image_dataset_from_directory reads as this class's images, in its order.

    The one definition the check, the fingerprints, the link views and the loader's own listing
    (compared in `load_images`) share: files in sub-folders too, hidden ones, and links whether
    or not they lead to a file, since Keras lists them all; the check then names the bad ones.
    """
    return [path for path, kind in _class_entries(folder, class_name) if kind == "image"]


def _class_entries(folder: Path, class_name: str):
    """(path, kind) of everything under a class folder, walked as Keras walks it (keras/src/utils/
    dataset_utils.py, iter_valid_files with follow_links=False: os.walk, which does not enter
    symlinked sub-folders, roots sorted, names sorted within each; a name is an image when it
    ends, in lower case, with an image suffix). kind: "image", "other" (any other file) or
    "linked folder" (a symlinked sub-folder, which Keras leaves unread)."""
    for root, dirs, files in sorted(os.walk(_class_dir(folder, class_name)), key=lambda entry: entry[0]):
        for name in sorted(files):
            yield Path(root, name), "image" if name.lower().endswith(IMAGE_SUFFIXES) else "other"
        for name in sorted(dirs):
            if os.path.islink(os.path.join(root, name)):
                yield Path(root, name), "linked folder"


def split_fingerprints(splits: Splits) -> dict[str, str]:
    """`folder_fingerprint` of each split, by split name: the feature cache keys on them too."""
    return {split: folder_fingerprint(folder, splits.class_names) for split, folder in splits.folders.items()}


def shared_images(splits: Splits) -> list[list[str]]:
    """Images whose content appears in more than one split, as groups of `split/class/file`:
    a model scored on images it trained on looks better than it is."""
    by_content: dict[bytes, list[tuple[str, str]]] = {}
    for split, folder in splits.folders.items():
        for class_name, name, path in _listing(folder, splits.class_names):
            if _link_problem(path) is None:  # a link to nothing has no content to share
                by_content.setdefault(_content_hash(path), []).append((split, f"{split}/{class_name}/{name}"))
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
    """A hash of one split's class names, file paths (under the class folder) and file contents:
    of every file Keras reads, so an edit in a sub-folder changes it too. A link that leads to no
    file counts by where it points (the check refuses or skips it)."""
    digest = hashlib.sha256()
    files = _listing(folder, class_names)
    with progress.steps(f"fingerprinting {folder}", len(files)) as advance:  # reads every byte: minutes on 20,000
        for class_name, name, path in files:
            digest.update(f"{class_name}/{name}\0".encode())
            problem = _link_problem(path)
            digest.update(_content_hash(path) if problem is None else f"{problem}\0".encode())
            advance()
    return digest.hexdigest()[:16]


def _listing(folder: Path, class_names: tuple[str, ...]) -> list[tuple[str, str, Path]]:
    """(class name, path under the class folder, file) of every image Keras reads, in its order,
    class by class: the count a progress bar needs up front."""
    listing = []
    for class_name in class_names:
        files = image_files(folder, class_name)
        listing += zip([class_name] * len(files), _relative_names(folder, class_name, files), files)
    return listing


_CONTENT_HASHES: dict[tuple, bytes] = {}


def file_identity(stat: os.stat_result) -> tuple:
    """The file behind a path (links followed) and its version: device, inode, size, mtime.

    No path in it: resolving every image's path cost a trial more than hashing did once.
    """
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


def _content_hash(path: Path) -> bytes:
    """sha256 of a file, remembered per file_identity so trials don't re-read images.

    Content, not timestamps, decides: copying or touching an unchanged image keeps every
    cache entry built from it; editing a single byte changes the fingerprint.
    """
    stat = path.stat()
    key = file_identity(stat)
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
    names = {c: _relative_names(root, c, files) for c, files in listing.items()}  # sub-folders kept: unique
    key = hashlib.sha256(repr((str(root.resolve()), val_fraction, test_fraction, seed, names)).encode()).hexdigest()[
        :12
    ]
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
                f"by data.val_fraction={val_fraction} and data.test_fraction={test_fraction}: "
                "add images or lower the fractions"
            )
        assignment = {
            "validation": order[:n_val],
            "test": order[n_val : n_val + n_test],
            "train": order[n_val + n_test :],
        }
        for split, indices in assignment.items():
            if split == "test" and test_fraction == 0:
                continue
            target = staging / split / class_name
            target.mkdir(parents=True)
            for i in indices:
                _link(files[i], target / names[class_name][i])
    publish_folder(staging, view)
    return view


def load_folder(folder: Path, class_names: tuple[str, ...], image_size: int) -> tf.data.Dataset:
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
        class_names=[_class_dir(folder, c).name for c in class_names],  # as spelled on disk; labels follow this order
        color_mode="rgb",
        batch_size=256,
        image_size=(image_size, image_size),
        shuffle=False,
        follow_links=False,  # Keras's default, spelled out: `image_files` walks the same way
        verbose=False,
    )
    _require_same_files(folder, class_names, loader.file_paths)
    dataset = loader.map(
        lambda x, y: (tf.cast(tf.round(tf.clip_by_value(x, 0, 255)), tf.uint8), tf.cast(y, tf.int32)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    count = len(loader.file_paths)  # filled in place: no second copy of a large folder while it is joined
    images, labels = np.empty((count, image_size, image_size, 3), np.uint8), np.empty((count,), np.int32)
    start = 0
    with progress.steps(f"decoding images in {folder}", count) as advance:  # listed once, by Keras
        for batch_images, batch_labels in dataset.as_numpy_iterator():
            end = start + len(batch_labels)
            images[start:end], labels[start:end] = batch_images, batch_labels
            start = end
            advance(len(batch_labels))
    _DECODED[key] = (images, labels)
    while len(_DECODED) > _DECODED_KEPT:
        _DECODED.pop(next(iter(_DECODED)))
    return images, labels


def _require_same_files(folder: Path, class_names: tuple[str, ...], read: list[str]) -> None:
    """Stops if Keras reads other files than `image_files` lists (a Keras that walks differently):
    the check and the fingerprints would then vouch for images the model never sees, or miss some."""
    import keras

    listed = [path.relative_to(folder).as_posix() for _, _, path in _listing(folder, class_names)]
    got = [Path(os.path.relpath(path, folder)).as_posix() for path in read]
    if got != listed:
        first = next((a, b) for a, b in zip([*got, None], [*listed, None]) if a != b)
        raise RegsweepError(
            f"Keras {keras.__version__} reads {len(got)} image file(s) in {folder} where regsweep's image check lists "
            f"{len(listed)} (first difference: Keras {first[0]}, check {first[1]}): install the Keras version "
            "regsweep's requirements name, or report this"
        )


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

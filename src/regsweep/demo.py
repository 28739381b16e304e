"""The offline digits demo: a real transfer task that needs no network.

scikit-learn ships the handwritten digits (8×8, about 180 per class). Digits 8 and 9 pretrain
the small demo CNN once; digits 0–4 are the target task, written out as PNG class folders with
a deliberately small training split (10 per class), so the frozen model fits its training
images perfectly and trails on validation, as a transfer model usually does at first.

Why this split (measured; docs/getting-started.md, "The demo"): pretrained on digits 5–9, the frozen
features already suited 0–4 so well that no knob moved test accuracy by more than about 0.02,
which 576 test images cannot tell from noise, and the demo's answer stayed "can't tell yet".
Learned on two digits only, the top blocks carry less of what 0–4 need, so fine-tuning them
pays, as it does for photos far from ImageNet; and 30 validation images per class leave about
700 test images for the verdict.

Both are cached under `<store>/demo/`, keyed by everything that changes them, and written
atomically (regsweep.files), so that an interrupted run never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
from omegaconf import DictConfig

from regsweep.files import publish_folder, write_atomically

log = logging.getLogger(__name__)

SOURCE_CLASSES = (8, 9)  # pretrain the backbone on these
TARGET_CLASSES = (0, 1, 2, 3, 4)  # the demo's classification task
SPLIT_SEED = 0  # the demo dataset is fixed; train.seed varies the training only
PRETRAIN_EPOCHS = 3
CACHE_VERSION = 2  # bump when the demo's construction changes


def digit_images(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """All digits as uint8 grayscale images of image_size², with their labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    resized = np.stack(
        [np.asarray(Image.fromarray(p).resize((image_size, image_size), Image.BILINEAR)) for p in pixels]
    )
    return resized, digits.target


def _key(**settings) -> str:
    blob = json.dumps({"version": CACHE_VERSION, **settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def ensure_demo_folders(store: Path, image_size: int, train_per_class: int, val_per_class: int) -> Path:
    """Writes (once) train/, validation/ and test/ PNG class folders of digits 0–4."""
    root = Path(store) / "demo" / f"digits-{_key(size=image_size, train=train_per_class, val=val_per_class)}"
    if root.is_dir():
        return root
    images, labels = digit_images(image_size)
    rng = np.random.default_rng(SPLIT_SEED)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".digits-", dir=root.parent))
    from PIL import Image

    for digit in TARGET_CLASSES:
        indices = rng.permutation(np.flatnonzero(labels == digit))
        parts = {
            "train": indices[:train_per_class],
            "validation": indices[train_per_class : train_per_class + val_per_class],
            "test": indices[train_per_class + val_per_class :],
        }
        for split, chosen in parts.items():
            folder = staging / split / str(digit)
            folder.mkdir(parents=True)
            for i in chosen:
                Image.fromarray(images[i]).save(folder / f"digit{digit}_{i:04d}.png")
    publish_folder(staging, root)
    return root


def ensure_pretrained_backbone(store: Path, image_size: int) -> Path:
    """Pretrains the demo CNN on SOURCE_CLASSES once and returns its cached weights file."""
    source = "".join(map(str, SOURCE_CLASSES))
    key = _key(size=image_size, epochs=PRETRAIN_EPOCHS, source=SOURCE_CLASSES)
    path = Path(store) / "demo" / f"demo_cnn-digits{source}-{key}.weights.h5"
    if path.is_file():
        return path
    import keras

    from regsweep.model import build_demo_cnn, preprocess  # lazy: Keras (TensorFlow)

    log.info(
        f"Pretraining the demo backbone on digits {' and '.join(map(str, SOURCE_CLASSES))} (once; cached at {path}) ..."
    )
    images, labels = digit_images(image_size)
    source = np.isin(labels, SOURCE_CLASSES)
    x = np.repeat(images[source][..., None], 3, axis=-1).astype("float32")
    y = labels[source] - min(SOURCE_CLASSES)

    keras.utils.set_random_seed(SPLIT_SEED)
    base = build_demo_cnn(image_size)
    inputs = keras.Input((image_size, image_size, 3))
    features = base(preprocess("demo_cnn", inputs))
    pooled = keras.layers.GlobalAveragePooling2D()(features)
    outputs = keras.layers.Dense(len(SOURCE_CLASSES), activation="softmax")(pooled)
    pretrainer = keras.Model(inputs, outputs)
    pretrainer.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    pretrainer.fit(x, y, batch_size=32, epochs=PRETRAIN_EPOCHS, shuffle=True, verbose=0)

    write_atomically(path, base.save_weights)
    return path


def resolve_weights(model: DictConfig, store: Path) -> str | None:
    """model.weights as a backbone loader takes it: 'digits' means the demo CNN pretrained (once,
    cached) on digits 8 and 9; 'imagenet' and None pass through; a path is expanded."""
    weights = model.weights
    if weights == "digits":
        return str(ensure_pretrained_backbone(store, model.image_size))
    if weights in (None, "imagenet"):
        return weights
    return str(Path(weights).expanduser())

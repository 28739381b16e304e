"""Backbones, their block tables, and the classifier head.

A backbone is cut into *blocks* (not raw layers) so that `model.unfrozen_blocks=N` means
"fine-tune the top N blocks" on every architecture, and the cut between the frozen and the
trainable part is always a single tensor (the output of the last frozen block). Layers before
the first block form the stem, which always stays frozen; layers after the last block's own
layers (MobileNetV2's `Conv_1`, EfficientNet's `top_conv`) belong to the last block.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from regsweep.config import BLOCKS, RegsweepError


@dataclass(frozen=True)
class Backbone:
    name: str
    blocks: tuple[str, ...]  # bottom to top; a layer belongs to block b if named b or b_*
    preprocess: str  # how raw 0–255 RGB becomes the backbone's input: a key of PREPROCESSING
    constructor: Callable | None  # keras.applications constructor; None for the demo CNN


BACKBONES: dict[str, Backbone] = {
    "demo_cnn": Backbone("demo_cnn", BLOCKS["demo_cnn"], "unit", None),
    "vgg16": Backbone("vgg16", BLOCKS["vgg16"], "caffe", keras.applications.VGG16),
    "mobilenet_v2": Backbone("mobilenet_v2", BLOCKS["mobilenet_v2"], "tf", keras.applications.MobileNetV2),
    # EfficientNet's rescaling and normalization are layers of the model itself.
    "efficientnet_b0": Backbone(
        "efficientnet_b0", BLOCKS["efficientnet_b0"], "none", keras.applications.EfficientNetB0
    ),
    "resnet50": Backbone("resnet50", BLOCKS["resnet50"], "caffe", keras.applications.ResNet50),
}

# keras.applications' preprocess_input modes: "tf" scales to [-1, 1]; "caffe" turns RGB into BGR
# and subtracts the ImageNet mean per channel (BGR order).
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def preprocess(backbone: str, images, name: str | None = None):
    """The backbone's `preprocess_input`, made of stock Keras layers inside the model.

    Kept in the graph, it lets a saved model take raw 0–255 RGB images, exactly what the folder
    loader yields; made of stock layers, it lets the saved model load with plain Keras (and
    MLflow's pyfunc) in a process that has never imported regsweep.
    """
    mode = BACKBONES[backbone].preprocess
    if mode == "none":
        return images
    if mode == "unit":
        return keras.layers.Rescaling(1 / 255.0, name=name)(images)
    if mode == "tf":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name=name)(images)
    # caffe: a fixed 1×1 convolution reverses the channels (a permutation matrix) and its bias
    # subtracts the mean: the same numbers as keras.applications' own function.
    convolution = keras.layers.Conv2D(3, 1, name=name, trainable=False)
    output = convolution(images)
    convolution.set_weights(
        [np.eye(3, dtype="float32")[::-1].reshape(1, 1, 3, 3), -np.array(CAFFE_MEAN_BGR, dtype="float32")]
    )
    return output


def build_demo_cnn(image_size: int) -> keras.Model:
    """The demo backbone: three conv blocks, small enough to train on 2 CPU cores in seconds."""
    inputs = keras.Input((image_size, image_size, 3))
    x = inputs
    for i, filters in enumerate((16, 32, 64), start=1):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"block{i}_conv")(x)
        x = keras.layers.BatchNormalization(name=f"block{i}_bn")(x)
        x = keras.layers.ReLU(name=f"block{i}_relu")(x)
        x = keras.layers.MaxPooling2D(name=f"block{i}_pool")(x)
    return keras.Model(inputs, x, name="demo_cnn")


def _download_failure_message(backbone: str, error: Exception) -> str:
    match = re.search(r"URL fetch failure on (\S+): ", str(error))
    file_name = match.group(1).rsplit("/", 1)[-1] if match else f"the {backbone} no-top weights file"
    cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
    return (
        f"ImageNet weights for model.backbone={backbone} could not be downloaded (no network?): "
        f"put {file_name} into the Keras cache folder {cache}, "
        f"or pass a local weights file with model.weights=<path>."
    )


def load_backbone(backbone: str, image_size: int, weights: str | None) -> keras.Model:
    """Builds the headless backbone with `weights` = 'imagenet', None, or a file path."""
    spec = BACKBONES[backbone]
    shape = (image_size, image_size, 3)
    if spec.constructor is None:
        base = build_demo_cnn(image_size)
        if weights is not None:
            base.load_weights(weights)
        return base
    try:
        return spec.constructor(include_top=False, weights=weights, input_shape=shape)
    except Exception as error:
        if "URL fetch failure" in str(error):
            raise RegsweepError(_download_failure_message(backbone, error)) from error
        raise


def block_layers(base: keras.Model, backbone: str) -> dict[str, list[keras.layers.Layer]]:
    """Maps each block name (bottom to top) to its layers; the stem is under the key ''."""
    blocks = BACKBONES[backbone].blocks
    assignment: dict[str, list] = {"": [], **{b: [] for b in blocks}}
    current = ""
    for layer in base.layers:
        owner = next((b for b in blocks if layer.name == b or layer.name.startswith(b + "_")), None)
        if owner is not None:
            current = owner
        assignment[current].append(layer)
    return assignment


def unfreeze_top_blocks(base: keras.Model, backbone: str, n: int) -> list[str]:
    """Makes the top `n` blocks trainable, except BatchNormalization layers.

    BN layers stay frozen as well as in inference mode (the backbone is always called with
    training=False): with few images, updating BN's scale and shift undoes pretraining faster
    than it helps. Returns the names of the layers made trainable.
    """
    base.trainable = True
    for layer in base.layers:
        layer.trainable = False
    names = BACKBONES[backbone].blocks
    unfrozen = []
    if n <= 0:
        return unfrozen
    layers_by_block = block_layers(base, backbone)
    for block in names[len(names) - n :]:
        for layer in layers_by_block[block]:
            if not isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = True
                unfrozen.append(layer.name)
    return unfrozen


def cut_layer(base: keras.Model, backbone: str, unfrozen_blocks: int) -> str:
    """The layer whose output is the last frozen tensor: the top of the stem or of a block.

    With 0 unfrozen blocks that is the backbone's output; with all blocks unfrozen, the stem's.
    """
    names = BACKBONES[backbone].blocks
    layers_by_block = block_layers(base, backbone)
    frozen = ["", *names[: len(names) - unfrozen_blocks]]
    return next(layers_by_block[b][-1].name for b in reversed(frozen) if layers_by_block[b])


def split_backbone(backbone: str, base: keras.Model, unfrozen_blocks: int) -> tuple[keras.Model, keras.Model | None]:
    """The frozen prefix (raw 0–255 images → cut tensor, preprocessing included) and the
    trainable suffix (cut tensor → backbone output; None when nothing is unfrozen).

    Both share their layers with `base`, so training the suffix trains the backbone that the
    full classifier (the one logged to MLflow) uses.
    """
    cut = base.get_layer(cut_layer(base, backbone, unfrozen_blocks)).output
    trunk = keras.Model(base.input, cut, name=f"{backbone}_prefix_trunk")
    inputs = keras.Input(base.input_shape[1:], name="image")
    prefix = keras.Model(inputs, trunk(preprocess(backbone, inputs), training=False), name=f"{backbone}_prefix")
    return prefix, suffix_model(backbone, base, unfrozen_blocks)


def suffix_model(backbone: str, base: keras.Model, unfrozen_blocks: int) -> keras.Model | None:
    """Cut tensor → backbone output: the top `unfrozen_blocks` blocks (None when nothing is unfrozen)."""
    if unfrozen_blocks == 0:
        return None
    cut = base.get_layer(cut_layer(base, backbone, unfrozen_blocks)).output
    return keras.Model(cut, base.output, name=f"{backbone}_suffix")


HEAD_LAYERS = ("head_pool", "head_dense", "head_dropout", "predictions")


def cached_prefix(classifier: keras.Model, backbone: str, base: keras.Model, cuts: list[int]) -> keras.Model:
    """Raw 0–255 images → the outputs the feature cache stores for each cut, in one pass.

    A cut is named by its number of unfrozen blocks. Cut 0 ends with the head's pooling, which
    has no weights, so phase 1 caches one vector per image instead of a feature map (with avg
    or max pooling 9× smaller for MobileNetV2 at 96 px) and the head trains on it directly.
    """
    trunk = keras.Model(
        base.input, [base.get_layer(cut_layer(base, backbone, n)).output for n in cuts], name=f"{backbone}_prefix_trunk"
    )
    inputs = keras.Input(base.input_shape[1:], name="image")
    outputs = trunk(preprocess(backbone, inputs), training=False)
    pool = classifier.get_layer(HEAD_LAYERS[0])
    outputs = [pool(x) if n == 0 else x for n, x in zip(cuts, outputs)]
    return keras.Model(inputs, outputs, name=f"{backbone}_prefix")


def classifier_on_features(
    classifier: keras.Model, backbone: str, base: keras.Model, unfrozen_blocks: int, feature_shape: tuple
) -> keras.Model:
    """The model that trains on one cut's cached outputs: suffix (inference mode) → head.

    It shares its layers with `classifier`, so training it trains the classifier that gets
    logged, without running the frozen prefix again.
    """
    suffix = suffix_model(backbone, base, unfrozen_blocks)
    inputs = keras.Input(feature_shape, name="features")
    x, head = (inputs, HEAD_LAYERS[1:]) if suffix is None else (suffix(inputs, training=False), HEAD_LAYERS)
    for name in head:
        x = classifier.get_layer(name)(x)
    return keras.Model(inputs, x, name=f"{classifier.name}_on_features")


def prefix_digests(base, backbone: str, cuts: list[int]) -> dict[int, str]:
    """Identifies each cut's prefix weights by value: a file, 'imagenet' or a seeded random init
    all hash to what the numbers actually are. One pass over the layers, bottom to top."""
    blocks = BACKBONES[backbone].blocks
    owners = block_layers(base, backbone)
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


def build_classifier(
    backbone: str,
    base: keras.Model,
    num_classes: int,
    pooling: str,
    head_units: int,
    dropout: float,
    seed: int,
) -> keras.Model:
    """preprocess → frozen backbone (inference mode) → pooling → dense → dropout → softmax.

    The output is always a softmax over the classes, trained with sparse categorical
    cross-entropy: there is no setting that yields the sigmoid-with-N-units mistake common in
    adaptations of the Keras tutorial.
    """
    base.trainable = False
    size = base.input_shape[1]
    inputs = keras.Input((size, size, 3), name="image")
    x = preprocess(backbone, inputs, name="preprocess")
    x = base(x, training=False)
    pool = {
        "avg": keras.layers.GlobalAveragePooling2D,
        "max": keras.layers.GlobalMaxPooling2D,
        "flatten": keras.layers.Flatten,
    }[pooling]
    x = pool(name="head_pool")(x)
    x = keras.layers.Dense(head_units, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(dropout, seed=seed, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=f"regsweep_{backbone}")


def trained_layers(classifier: keras.Model, base: keras.Model, backbone: str, unfrozen_blocks: int) -> list:
    """The layers a run can change: the head's two Dense layers and every layer of the top
    `unfrozen_blocks` blocks. The rest is the backbone as loaded, which its digest identifies."""
    blocks = BACKBONES[backbone].blocks
    by_block = block_layers(base, backbone)
    top = blocks[len(blocks) - unfrozen_blocks :] if unfrozen_blocks > 0 else ()
    head = [classifier.get_layer(name) for name in ("head_dense", "predictions")]
    return head + [layer for block in top for layer in by_block[block] if layer.weights]


def trained_weights(classifier: keras.Model, base: keras.Model, backbone: str, unfrozen_blocks: int) -> dict:
    """What a run logs so that its whole model can be rebuilt: `<layer>:<index>` → array."""
    return {
        f"{layer.name}:{index}": np.asarray(weight.numpy())
        for layer in trained_layers(classifier, base, backbone, unfrozen_blocks)
        for index, weight in enumerate(layer.weights)
    }


def load_trained_weights(
    classifier: keras.Model, base: keras.Model, backbone: str, unfrozen_blocks: int, arrays: dict
) -> None:
    """Puts what `trained_weights` saved back into a freshly built classifier of the same shape."""
    layers = trained_layers(classifier, base, backbone, unfrozen_blocks)
    expected = {f"{layer.name}:{index}" for layer in layers for index in range(len(layer.weights))}
    if expected != set(arrays):
        raise ValueError(f"the saved weights do not fit this model: {sorted(set(arrays) ^ expected)[:5]} differ")
    for layer in layers:
        layer.set_weights([arrays[f"{layer.name}:{index}"] for index in range(len(layer.weights))])

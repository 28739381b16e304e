"""Backbones build, their block tables match the real layers, and unfreezing is exact."""

from __future__ import annotations

import keras
import pytest

from regsweep import model as models
from regsweep.config import RegsweepError

APPLICATIONS = ["vgg16", "mobilenet_v2", "efficientnet_b0", "resnet50"]
BLOCK_COUNTS = {"demo_cnn": 3, "vgg16": 5, "mobilenet_v2": 16, "efficientnet_b0": 16, "resnet50": 16}


@pytest.mark.parametrize("backbone", ["demo_cnn", *APPLICATIONS])
def test_backbone_builds_without_weights_and_every_block_owns_layers(backbone):
    base = models.load_backbone(backbone, 32, None)
    assert len(models.BACKBONES[backbone].blocks) == BLOCK_COUNTS[backbone]
    owned = models.block_layers(base, backbone)
    empty = [block for block in models.BACKBONES[backbone].blocks if not owned[block]]
    assert not empty, f"blocks with no layers: {empty}"
    assert sum(len(layers) for layers in owned.values()) == len(base.layers)
    classifier = models.build_classifier(backbone, base, 4, "avg", 8, 0.5, seed=0)
    assert classifier.output_shape == (None, 4)
    assert classifier.layers[-1].activation is keras.activations.softmax


def test_unfreezing_n_blocks_makes_exactly_their_non_bn_layers_trainable():
    base = models.load_backbone("mobilenet_v2", 32, None)
    models.build_classifier("mobilenet_v2", base, 3, "avg", 8, 0.0, seed=0)
    assert base.trainable_weights == []  # phase 1: frozen backbone

    unfrozen = models.unfreeze_top_blocks(base, "mobilenet_v2", 2)
    expected = {
        layer.name
        for layer in base.layers
        if layer.name.startswith(("block_15_", "block_16_", "Conv_1", "out_relu"))
        and not isinstance(layer, keras.layers.BatchNormalization)
    }
    assert set(unfrozen) == expected
    trainable = {layer.name for layer in base.layers if layer.trainable and layer.weights}
    assert trainable == {name for name in expected if base.get_layer(name).weights}
    assert "block_14_project" not in trainable and "Conv_1_bn" not in trainable

    models.unfreeze_top_blocks(base, "mobilenet_v2", 0)
    assert base.trainable_weights == []


def test_vgg16_block_unfreezing_matches_the_keras_blog():
    base = models.load_backbone("vgg16", 32, None)
    unfrozen = models.unfreeze_top_blocks(base, "vgg16", 1)
    assert unfrozen == ["block5_conv1", "block5_conv2", "block5_conv3", "block5_pool"]


def test_missing_imagenet_weights_explain_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty Keras cache
    try:
        models.load_backbone("mobilenet_v2", 96, "imagenet")
    except RegsweepError as error:
        message = str(error)
    else:
        pytest.skip("this machine could download the ImageNet weights, so the offline error cannot occur")
    assert "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_96_no_top.h5" in message
    assert str(tmp_path / "models") in message
    assert "model.weights=<path>" in message


@pytest.mark.parametrize(
    "backbone, unfrozen",
    [
        ("demo_cnn", 0),
        ("demo_cnn", 1),
        ("demo_cnn", 3),
        ("mobilenet_v2", 0),
        ("mobilenet_v2", 3),
        ("vgg16", 1),
        ("efficientnet_b0", 2),
        ("resnet50", 1),
    ],
)
def test_prefix_then_suffix_then_head_equals_the_whole_classifier(backbone, unfrozen):
    """The feature cache trains suffix + head on prefix outputs: that must be the same function."""
    import numpy as np

    base = models.load_backbone(backbone, 32, None)
    classifier = models.build_classifier(backbone, base, 3, "avg", 8, 0.0, seed=0)
    cuts = sorted({0, unfrozen})  # phase 1's pooled cut and phase 2's, from one pass
    prefix = models.cached_prefix(classifier, backbone, base, cuts)
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    outputs = prefix.predict(images, verbose=0)
    features = dict(zip(cuts, outputs if isinstance(outputs, list) else [outputs]))
    assert features[0].ndim == 2  # phase 1 caches one pooled vector per image, not a feature map
    for cut in cuts:
        on_features = models.classifier_on_features(classifier, backbone, base, cut, features[cut].shape[1:])
        np.testing.assert_allclose(
            on_features.predict(features[cut], verbose=0), classifier.predict(images, verbose=0), rtol=1e-5, atol=1e-6
        )
    _, suffix = models.split_backbone(backbone, base, unfrozen)
    assert (suffix is None) == (unfrozen == 0)
    if suffix is not None:  # the cut is a block boundary: the suffix holds exactly the top blocks
        top = set(models.BACKBONES[backbone].blocks[-unfrozen:])
        owners = models.block_layers(base, backbone)
        expected = {layer.name for block in top for layer in owners[block]}
        assert {layer.name for layer in suffix.layers if not isinstance(layer, keras.layers.InputLayer)} == expected


@pytest.mark.parametrize("backbone", sorted(models.BACKBONES))
def test_preprocessing_is_stock_layers_computing_the_backbones_own_function(backbone):
    """A saved model loads with plain Keras, and still gets exactly keras.applications' input."""
    import numpy as np

    own = {
        "demo_cnn": lambda x: x / 255.0,
        "vgg16": keras.applications.vgg16.preprocess_input,
        "mobilenet_v2": keras.applications.mobilenet_v2.preprocess_input,
        "efficientnet_b0": keras.applications.efficientnet.preprocess_input,
        "resnet50": keras.applications.resnet50.preprocess_input,
    }[backbone]
    inputs = keras.Input((8, 8, 3))
    layers = keras.Model(inputs, models.preprocess(backbone, inputs))
    assert all(type(layer).__module__.startswith("keras.") for layer in layers.layers)
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(layers.predict(images, verbose=0), own(images.copy()), rtol=1e-5, atol=1e-4)

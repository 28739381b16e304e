"""The two Keras workarounds of regsweep.fit, each checked against what Keras itself does, so a
Keras release that changes either fails here before it changes a trial's result."""

from __future__ import annotations

import keras
import numpy as np

from regsweep import fit


def small_model(rate: float) -> keras.Model:
    inputs = keras.Input((4,))
    x = keras.layers.Dense(8, activation="relu", kernel_initializer="ones")(inputs)
    x = keras.layers.Dropout(rate, seed=3)(x)
    model = keras.Model(inputs, keras.layers.Dense(2, kernel_initializer="ones")(x))
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy")
    return model


def batches():
    rng = np.random.default_rng(0)
    return rng.normal(size=(32, 4)).astype("float32"), rng.integers(0, 2, 32)


def test_a_reset_adam_holds_exactly_what_a_new_adam_holds():
    x, y = batches()
    used = small_model(0.0)
    used.fit(x, y, epochs=2, verbose=0)
    assert any(np.any(v.numpy() != 0) for v in used.optimizer.variables)
    fit.reset_optimizer(used.optimizer, 0.01)
    new = small_model(0.0)
    new.optimizer.build(new.trainable_variables)
    for reset, fresh in zip(used.optimizer.variables, new.optimizer.variables, strict=True):
        assert reset.shape == fresh.shape and reset.dtype == fresh.dtype
        np.testing.assert_array_equal(reset.numpy(), fresh.numpy())


def test_a_changed_dropout_rate_trains_only_after_a_retrace():
    """The rate is a constant of the traced train function: without the retrace a model keeps
    training at its old rate; with it, exactly as a model built at the new rate."""
    x, y = batches()

    def trained(model):
        model.fit(x, y, epochs=1, batch_size=32, shuffle=False, verbose=0)
        return [w.copy() for w in model.get_weights()]

    def changed(retrace: bool):
        model = small_model(0.5)
        trained(model)  # traces at 0.5
        for variable, new in zip(model.variables, small_model(0.9).variables, strict=True):
            variable.assign(new)  # weights and the dropout's seed state, as fit.start_head copies them
        fit.reset_optimizer(model.optimizer, 0.01)
        model.layers[2].rate = 0.9
        if retrace:
            fit.retrace_training(model)
        return trained(model)

    at_new_rate = small_model(0.9)
    at_new_rate.optimizer.build(at_new_rate.trainable_variables)
    expected = trained(at_new_rate)
    assert all(np.array_equal(a, b) for a, b in zip(changed(retrace=True), expected, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(changed(retrace=False), expected, strict=True))

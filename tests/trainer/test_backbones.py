"""Every backbone in the table builds with its preprocessing in the graph and takes raw 0-255 pixels."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.backbones import BACKBONES, build_classifier
from trainer.config import TrainConfig


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BACKBONES))
def test_backbone_builds_and_owns_its_preprocessing(name, tmp_path, dataset):
    import keras

    config = TrainConfig(dataset, tmp_path / "run", backbone=name, weights="none", image_size=32)
    model, backbone = build_classifier(config, num_classes=3)
    assert backbone.name == "backbone" and model.get_layer("backbone") is backbone
    assert tuple(model.input.shape) == (None, 32, 32, 3) and tuple(model.output.shape) == (None, 3)
    rescaling = [
        layer for layer in [*model.layers, *backbone.layers] if isinstance(layer, keras.layers.Rescaling)
    ]
    assert rescaling, "the backbone's pixel scaling must be inside the graph"
    assert not [layer for layer in backbone.layers if layer.name.startswith("random_")], (
        "no augmentation in graph"
    )
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.float32)
    probs = model.predict(pixels, verbose=0)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    if name != "simple_cnn":
        momenta = {
            layer.momentum for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)
        }
        assert momenta == {0.9}, "from scratch, batch-norm statistics must follow the data quickly"

"""Grad-CAM (Selvaraju et al. 2017): where in the image the predicted class's evidence lies.

The heat map is the backbone's last feature map weighted by the mean gradient of the class score
over each channel, ReLU'd and scaled to [0, 1]. The model is split at the backbone layer that
every edgecls classifier has (see :mod:`trainer.backbones`), so it works on a reloaded model.keras.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np


def heatmap(model, pixels: np.ndarray, class_index: int | None = None) -> tuple[np.ndarray, int]:
    """Grad-CAM map for one image.

    Args:
        model: an edgecls classifier (layers ``pixels → … → backbone → head``).
        pixels: float32 ``(H, W, 3)`` RGB 0–255, the model's input size.
        class_index: the class to explain; ``None`` explains the top prediction.

    Returns:
        ``(map, class_index)``: a float32 ``(h, w)`` map in [0, 1] at the feature-map resolution.

    Example:
        >>> cam, cls = heatmap(keras.models.load_model("run/model.keras"), pixels)
    """
    import tensorflow as tf

    layers = model.layers[1:]  # the InputLayer carries no computation
    split = next(i for i, layer in enumerate(layers) if layer.name == "backbone") + 1
    x = tf.convert_to_tensor(pixels[None].astype(np.float32))
    for layer in layers[:split]:
        x = layer(x, training=False)
    features = x
    with tf.GradientTape() as tape:
        tape.watch(features)
        y = features
        for layer in layers[split:]:
            y = layer(y, training=False)
        if class_index is None:
            class_index = int(tf.argmax(y[0]))
        score = y[0, class_index]
    grads = tape.gradient(score, features)[0]
    weights = tf.reduce_mean(grads, axis=(0, 1))
    cam = tf.nn.relu(tf.reduce_sum(features[0] * weights, axis=-1)).numpy()
    top = cam.max()
    return (cam / top if top > 0 else cam).astype(np.float32), class_index


def overlay(image: np.ndarray, cam: np.ndarray, strength: float = 0.45) -> np.ndarray:
    """Blend a JET-coloured ``cam`` over an RGB uint8 ``image``."""
    import cv2

    h, w = image.shape[:2]
    heat = cv2.resize(cam, (w, h), interpolation=cv2.INTER_CUBIC)
    colour = cv2.applyColorMap(np.uint8(255 * np.clip(heat, 0, 1)), cv2.COLORMAP_JET)[..., ::-1]
    return np.uint8(np.clip((1 - strength) * image + strength * colour, 0, 255))


def write_overlays(
    model,
    test: list[tuple[str, int]],
    probs: np.ndarray,
    labels: list[str],
    out_dir: Path,
    count: int,
    size: int,
) -> list[Path]:
    """Write ``count`` overlays (misclassified first, then correct ones) as ``out_dir/NN_true_as_pred.png``."""
    import cv2

    from edge_app.runtime.files import write_bytes
    from trainer.datasets import load_pixels

    out_dir.mkdir(parents=True, exist_ok=True)
    predicted = probs.argmax(axis=1)
    wrong = [i for i in range(len(test)) if predicted[i] != test[i][1]]
    right = [i for i in range(len(test)) if predicted[i] == test[i][1]]
    # Evenly spread over the (sorted, so class-grouped) test list, so several classes appear.
    chosen = _spread(wrong, count // 2) + _spread(right, count)
    chosen = chosen[:count]
    written = []
    for n, i in enumerate(chosen):
        path, target = test[i]
        pixels = load_pixels(path, size)
        cam, cls = heatmap(model, pixels.astype(np.float32), int(predicted[i]))
        shown = max(size, 160)
        image = load_pixels(path, shown)
        panel = np.concatenate([image, np.full((shown, 4, 3), 255, np.uint8), overlay(image, cam)], axis=1)
        caption = np.full((22, panel.shape[1], 3), 255, np.uint8)
        text = f"true {labels[target]} / pred {labels[cls]} {probs[i, cls]:.0%}"
        cv2.putText(caption, text[:60], (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
        panel = np.concatenate([caption, panel], axis=0)
        name = f"{n:02d}_{_slug(labels[target])}_as_{_slug(labels[cls])}.png"
        ok, data = cv2.imencode(".png", panel[..., ::-1])
        written.append(write_bytes(out_dir / name, data.tobytes()))
    return written


def _spread(indices: list[int], count: int) -> list[int]:
    if count <= 0 or not indices:
        return []
    picks = np.linspace(0, len(indices) - 1, min(count, len(indices))).round().astype(int)
    return [indices[p] for p in dict.fromkeys(picks)]


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:40] or "class"

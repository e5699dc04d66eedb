"""ImageNet weights without a download: Keras's MobileNetV2 ported from a TFLite MobileNetV2 1.0 classifier.

Keras's MobileNetV2 was ported from the same TF-slim checkpoints as Coral's quantized model that ships
with edgecls (``edge_app/learn/models``), so the 52 Conv2D/DepthwiseConv2D layers of the Keras backbone
map one to one, in graph order, onto the first 52 CONV_2D/DEPTHWISE_CONV_2D ops of the TFLite graph
(all SAME padding, which is what Keras's ``correct_pad`` does), and a 1×1 CONV_2D after the pooling is
the classifier. The TFLite graph has batch norm folded into each conv: a kernel and a bias. So each Keras
conv takes the dequantized kernel ((q − zero_point)·scale; OHWI → HWIO, depthwise 1HWC → HWC1) and the
BatchNormalization after it becomes the bias: gamma 1, beta = bias, moving mean 0, moving variance
1 − ε. The port is checked op by op (type, kernel shape, stride, activation), and its result is cached
as a ``.weights.h5`` beside Keras's own downloads, keyed by the file's hash, so it runs once.

Only the flatbuffer is read (edge_app's reader), never executed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_app.runtime.errors import ModelError, TrainError

log = logging.getLogger("edgecls")

SHIPPED = "imagenet-tflite"  # --weights: the ImageNet MobileNetV2 that ships with edgecls
SUFFIX = ".tflite"
BACKBONE = "mobilenet_v2"
ALPHA = 1.0
CONV_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D")


def keras_cache_dir() -> Path:
    """Where Keras keeps downloaded weights (``$KERAS_HOME/models``, default ``~/.keras/models``)."""
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "models"


def is_tflite(weights: str | None) -> bool:
    """True for ``--weights imagenet-tflite`` or a ``.tflite`` path."""
    return weights == SHIPPED or str(weights or "").lower().endswith(SUFFIX)


def model_path(weights: str) -> Path:
    """The ``.tflite`` file ``--weights`` names (the shipped model for ``imagenet-tflite``)."""
    if weights == SHIPPED:
        from edge_app.learn.learn import DEFAULT_BASE

        return DEFAULT_BASE
    return Path(weights)


def describe(weights: str) -> dict:
    """Where the weights come from, for config.json, the report and the demo summary."""
    path = model_path(weights)
    shipped = weights == SHIPPED
    return {
        "kind": "tflite",
        "name": SHIPPED if shipped else path.name,
        "file": str(path),
        "sha256": _sha256(path),
        "origin": "Coral's ImageNet MobileNetV2 1.0 224 (TF-slim, quantization-aware trained, uint8), shipped "
                  "with edgecls; Apache-2.0" if shipped else "a TFLite MobileNetV2 1.0 classifier",
        "ported": "weights dequantized, batch norm folded into conv bias (BN: gamma 1, beta bias, mean 0, "
                  "variance 1 - eps)",
        "cache": str(cache_path(path)),
    }


def cache_path(path: Path) -> Path:
    """``$KERAS_HOME/models/mobilenet_v2_1.0_from_tflite_<sha>_no_top.weights.h5``: one file per source model."""
    return keras_cache_dir() / f"mobilenet_v2_1.0_from_tflite_{_sha256(path)[:16]}_no_top.weights.h5"


def load_into(backbone, weights: str) -> None:
    """Give a Keras MobileNetV2 1.0 backbone (no top) the weights of the TFLite model ``weights`` names.

    Raises:
        TrainError: the file is not a readable TFLite MobileNetV2 1.0 classifier (exit code 2).

    Example:
        >>> backbone = keras.applications.MobileNetV2(input_shape=(160, 160, 3), include_top=False, weights=None)
        >>> load_into(backbone, "imagenet-tflite")
    """
    path = model_path(weights)
    cache = cache_path(path)
    if cache.is_file():
        try:
            backbone.load_weights(cache)
            log.info("ImageNet weights for %s from %s (ported from %s)", BACKBONE, cache, path.name)
            return
        except Exception as e:  # a cache cut short by a crash: port again and rewrite it
            log.warning("the weights cache %s is unreadable (%s); porting %s again", cache, e, path.name)
    port = read_port(path, weights)
    assign(backbone, port, weights)
    log.info("ported %d conv layers of %s into Keras's %s", len(port.kernels), path.name, BACKBONE)
    _save_cache(backbone, cache)


@dataclass(frozen=True)
class Port:
    """What a TFLite MobileNetV2 1.0 classifier holds, dequantized: per conv op in graph order
    ``(op type, tensor name, kernel in Keras layout, bias, stride, fused activation)``, and its classifier."""

    kernels: list[tuple[str, str, np.ndarray, np.ndarray, int, str]]
    classifier: tuple[np.ndarray, np.ndarray]  # weights [width, classes], bias [classes]


def read_port(path: Path, weights: str | None = None) -> Port:
    """Read every conv op and the classifier of the ``.tflite`` at ``path``, dequantized and in Keras layout."""
    from edge_app.runtime import graph as tfl

    flag = f"--weights {weights or path}"
    data = _read_bounded(path, flag)
    expected = f"expected a TFLite MobileNetV2 1.0 classifier such as --weights {SHIPPED}"
    try:
        model = tfl.read_model(data, source=str(path))
        embedding = tfl.find_embedding(model)
    except ModelError as e:
        raise TrainError(f"{flag}: {e}; {expected}") from e
    if embedding.classifier is None:
        raise TrainError(f"{flag}: no classification layer after its embedding '{embedding.name}' (an embedding "
                         f"extractor, or an Edge TPU model whose layers are one custom op): not a MobileNetV2 1.0 "
                         f"to port; {expected}")
    try:
        classifier, bias = tfl.classifier_weights(model, embedding)
    except ModelError as e:
        raise TrainError(f"{flag}: {e}; {expected}") from e
    graph = model.subgraphs[0]
    kernels = []
    for op in graph.operators:
        kind = tfl.op_type(model, op)
        if kind not in CONV_OPS or op.inputs[0] == embedding.index:
            continue
        try:
            kernel = tfl.constant(model, op.inputs[1])
            has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
            bias_values = tfl.constant(model, op.inputs[2]).reshape(-1) if has_bias else None
        except ModelError as e:
            raise TrainError(f"{flag}: {e}; {expected}") from e
        if kernel.ndim != 4:
            raise TrainError(f"{flag}: {kind} '{tfl.tensor_name(graph, op.inputs[1])}' has a {kernel.ndim}-D kernel; "
                             f"{expected}")
        # OHWI -> HWIO for a conv; 1HWC -> HWC1 for a depthwise conv (depth multiplier 1).
        kernel = kernel.transpose(1, 2, 3, 0) if kind == "CONV_2D" else kernel[0][..., None]
        if bias_values is None:
            bias_values = np.zeros(kernel.shape[-1] if kind == "CONV_2D" else kernel.shape[2], np.float32)
        options = op.builtinOptions
        activation = {0: "none", 1: "relu", 3: "relu6"}.get(options.fusedActivationFunction, "other")
        padding = "same" if options.padding == 0 else "valid"
        if padding != "same":
            raise TrainError(f"{flag}: op '{tfl.tensor_name(graph, op.inputs[1])}' uses VALID padding; the port "
                             "expects TF-slim's SAME padding throughout (Coral's MobileNetV2 models). A MobileNetV2 "
                             "exported from Keras pads explicitly: pass its .keras/.h5 file instead")
        kernels.append((kind, tfl.tensor_name(graph, op.inputs[1]), kernel, bias_values, int(options.strideH), activation))
    return Port(kernels=kernels, classifier=(classifier.T.copy(), bias))


def assign(backbone, port: Port, weights: str) -> None:
    """Check ``port`` against the Keras backbone op by op, then set every conv kernel and batch norm."""
    import keras

    convs = [layer for layer in backbone.layers if isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D))]
    flag = f"--weights {weights}"
    fix = f"pass a TFLite MobileNetV2 1.0 classifier such as --weights {SHIPPED}, or --weights none"
    if len(port.kernels) != len(convs):
        raise TrainError(f"{flag} has {len(port.kernels)} conv ops before its classifier; Keras's MobileNetV2 "
                         f"1.0 has {len(convs)}: not a MobileNetV2 1.0; {fix}")
    updates = []
    for i, (layer, (kind, name, kernel, bias, stride, activation)) in enumerate(zip(convs, port.kernels, strict=True)):
        depthwise = isinstance(layer, keras.layers.DepthwiseConv2D)
        want_kind = "DEPTHWISE_CONV_2D" if depthwise else "CONV_2D"
        want_shape = tuple(layer.weights[0].shape)
        # Project convs are linear (the bottleneck); every other conv of MobileNetV2 ends in ReLU6.
        want_activation = "none" if layer.name.endswith("project") else "relu6"
        norm = _batch_norm_after(backbone, layer)
        got = (kind, kernel.shape, stride, activation, bias.shape)
        want = (want_kind, want_shape, int(layer.strides[0]), want_activation, tuple(norm.beta.shape))
        if got != want:
            raise TrainError(f"{flag}: conv op {i} '{name}' is {kind} {list(kernel.shape)} stride {stride} "
                             f"{activation} with {bias.size} biases, but Keras's MobileNetV2 1.0 layer '{layer.name}' "
                             f"is {want_kind} {list(want_shape)} stride {want[2]} {want_activation} with {want[4][0]} "
                             f"channels: not a MobileNetV2 1.0; {fix}")
        updates.append((layer, norm, kernel, bias))
    for layer, norm, kernel, bias in updates:
        layer.set_weights([kernel])
        ones = np.ones_like(bias)
        # BN(x) = gamma (x - mean) / sqrt(var + eps) + beta = x + bias with var = 1 - eps.
        norm.set_weights([ones, bias, np.zeros_like(bias), ones - np.float32(norm.epsilon)])


def ported_classifier(weights: str = SHIPPED, image_size: int = 224):
    """The whole ported ImageNet classifier in Keras (0–255 pixels in, softmax over its classes out):
    what the agreement with the original TFLite model is measured on."""
    import keras

    port = read_port(model_path(weights), weights)
    backbone = keras.applications.MobileNetV2(input_shape=(image_size, image_size, 3), include_top=False,
                                              weights=None)
    assign(backbone, port, weights)
    inputs = keras.Input((image_size, image_size, 3), name="pixels")
    x = keras.layers.Rescaling(1 / 127.5, -1.0, name="preprocess")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(backbone(x, training=False))
    kernel, bias = port.classifier
    dense = keras.layers.Dense(len(bias), activation="softmax", name="predictions")
    outputs = dense(x)
    dense.set_weights([kernel, bias])
    return keras.Model(inputs, outputs, name="mobilenet_v2_ported")


def _batch_norm_after(backbone, conv):
    import keras

    for name in (f"{conv.name}_BN", f"{conv.name}_bn", f"bn_{conv.name}"):
        try:
            layer = backbone.get_layer(name)
        except ValueError:
            continue
        if isinstance(layer, keras.layers.BatchNormalization):
            return layer
    raise TrainError(f"Keras's MobileNetV2 has no batch norm after '{conv.name}' (Keras {keras.__version__}); "
                     "this Keras is not the one edgecls knows: train with --weights none or report it")


def _read_bounded(path: Path, flag: str) -> bytes:
    """The model's bytes, checked before they are read (a regular file, under the size cap, a flatbuffer)."""
    from edge_app.runtime.artifact import read_model_bytes

    try:
        return read_model_bytes(path, flag)
    except ModelError as e:
        raise TrainError(f"{e}; give a MobileNetV2 1.0 .tflite such as --weights {SHIPPED}") from e


def _sha256(path: Path) -> str:
    return hashlib.sha256(_read_bounded(path, f"--weights {path}")).hexdigest()


def _save_cache(backbone, cache: Path) -> None:
    """Write the cache atomically (two runs may port at once); a cache that cannot be written only costs time."""
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        handle, tmp = tempfile.mkstemp(dir=cache.parent, prefix=".port-", suffix=".weights.h5")
        os.close(handle)
        try:
            backbone.save_weights(tmp, overwrite=True)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide the cache from other users of this home
            os.replace(tmp, cache)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        log.warning("could not cache the ported weights in %s (%s); the next run ports them again", cache, e)
        return
    log.info("cached the ported weights: %s", cache)

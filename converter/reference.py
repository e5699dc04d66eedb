"""The float model everything is compared against: a Keras file or a SavedModel, checked to be a classifier."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import numpy as np

from edge_app.runtime.errors import ModelError, first_line
from edge_app.runtime.interpreter import native_stderr_to_log

log = logging.getLogger("edgecls")


def quiet_tensorflow():
    """Import TensorFlow without its C++ start-up chatter on stderr (shown with ``-v``)."""
    if "tensorflow" not in sys.modules:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        with native_stderr_to_log():
            import tensorflow as tf

            tf.get_logger().setLevel(logging.ERROR)
    import tensorflow as tf

    return tf


class ReferenceModel:
    """A float classifier taking ``(N, H, W, 3)`` float32 input and giving ``(N, num_classes)`` scores.

    Example:
        >>> ref = ReferenceModel.load(Path("run/model.keras"))
        >>> probs = ref.predict(batch)
    """

    def __init__(self, path: Path, fn, trackable, input_shape, num_classes: int):
        self.path, self._fn, self.trackable = path, fn, trackable
        self.input_shape, self.num_classes = input_shape, num_classes

    @classmethod
    def load(cls, path: Path, image_size: tuple[int, int] | None = None) -> ReferenceModel:
        tf = quiet_tensorflow()
        if path.is_dir():
            try:
                loaded = tf.saved_model.load(str(path))
                fn = loaded.signatures["serving_default"]
            except (OSError, ValueError, KeyError) as e:
                raise ModelError(f"cannot load SavedModel {path} ({first_line(e)}); it needs a "
                                 "'serving_default' signature taking one image tensor") from e
            specs = list(fn.structured_input_signature[1].values())
            if len(specs) != 1:
                raise ModelError(f"{path} takes {len(specs)} inputs; an image classifier takes one")
            name = next(iter(fn.structured_input_signature[1]))
            outputs = list(fn.structured_outputs.values())
            if len(outputs) != 1:
                raise ModelError(f"{path} has {len(outputs)} outputs; a classifier has one (class scores)")
            input_shape, output_shape = specs[0].shape.as_list(), outputs[0].shape.as_list()
            out_key = next(iter(fn.structured_outputs))

            def call(x):
                return fn(**{name: x})[out_key]

            ref = cls(path, call, loaded, input_shape, 0)
        else:
            with native_stderr_to_log():
                import keras

            _check_keras_file(path)
            try:
                model = keras.models.load_model(path, compile=False)
            except Exception as e:  # Keras raises anything from ValueError to OSError to TypeError here
                reason = first_line(e)
                raise ModelError(f"cannot load Keras model {path} ({reason[:300]}); is it a complete model saved "
                                 "with model.save() (not weights only)? Custom layers must be importable") from e
            if len(model.inputs) != 1:
                raise ModelError(f"{path} takes {len(model.inputs)} inputs; an image classifier takes one")
            if len(model.outputs) != 1:
                raise ModelError(f"{path} has {len(model.outputs)} outputs; a classifier has one (class scores)")
            input_shape, output_shape = list(model.inputs[0].shape), list(model.outputs[0].shape)

            def call(x):
                return model(x, training=False)

            # The converter freezes the variables it can reach from the trackable: Keras 3 keeps the
            # tf.Variables inside its own Variable objects, so hand them over explicitly.
            holder = tf.Module()
            holder.tf_variables = [getattr(v, "value", v) for v in model.weights]
            ref = cls(path, call, holder, input_shape, 0)
        if len(output_shape) != 2 or not output_shape[1]:
            raise ModelError(f"{path} outputs shape {output_shape}; a classifier outputs (batch, num_classes). "
                             "Detection, segmentation or embedding models are not classifiers")
        if len(input_shape) != 4 or input_shape[3] not in (1, 3):
            raise ModelError(f"{path} takes input shape {input_shape}; an image classifier takes (batch, H, W, 3)")
        h, w = input_shape[1:3]
        if image_size is not None:
            if (h, w) != (None, None) and (h, w) != tuple(image_size):
                log.warning("%s takes %sx%s images; converting at the requested %sx%s", path.name, h, w, *image_size)
            h, w = image_size
        if h is None or w is None:
            raise ModelError(f"{path} takes images of any size; pass --image-size H W for the converted model")
        ref.input_shape = [1, int(h), int(w), int(input_shape[3])]
        ref.num_classes = int(output_shape[1])
        return ref

    @property
    def input_size(self) -> tuple[int, int]:
        return self.input_shape[1], self.input_shape[2]

    def predict(self, batch: np.ndarray, batch_size: int = 32) -> np.ndarray:
        """Scores for a float32 batch, in chunks (eager calls: no retracing per batch size)."""
        out = [np.asarray(self._fn(batch[i:i + batch_size])) for i in range(0, len(batch), batch_size)]
        return np.concatenate(out).astype(np.float32)

    def concrete_function(self):
        """A batch-1, static-shape function for the TFLite converter (the Edge TPU wants static shapes)."""
        tf = quiet_tensorflow()
        fn = tf.function(self._fn, input_signature=[tf.TensorSpec(self.input_shape, tf.float32, name="image")])
        return fn.get_concrete_function()

    def outputs_probabilities(self, scores: np.ndarray) -> bool:
        """True when rows are already probabilities (a softmax head), so nothing is applied on the device."""
        return bool(np.all(scores >= -1e-6) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-3))


def _check_keras_file(path: Path) -> None:
    """A ``.keras`` file is a zip archive and an ``.h5`` file an HDF5 one: say so before Keras says "not found"."""
    import zipfile

    with open(path, "rb") as f:
        head = f.read(8)
    suffix = path.suffix.lower()
    if suffix == ".keras" and not zipfile.is_zipfile(path):
        raise ModelError(f"{path} is not a Keras model file (a .keras file is a zip archive; this one is not): "
                         "is it truncated or something else renamed? Save it again with model.save('model.keras')")
    if suffix in (".h5", ".hdf5") and head != b"\x89HDF\r\n\x1a\n":
        raise ModelError(f"{path} is not an HDF5 file (no HDF5 signature): is it truncated or something else "
                         "renamed? Save it again with model.save('model.h5')")

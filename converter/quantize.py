"""int8 from one calibration, with chosen ops or layers kept in float (runs in the converter's child process).

TensorFlow's converter calibrates (records every tensor's range on the representative images)
and then quantizes. Split in two, one calibration serves every quantization the converter tries:
full integer for the Edge TPU, HARD_SWISH kept float for XNNPACK, the accuracy repair's layers
kept float. ``mlir_quantize`` with deny lists is what ``tf.lite.experimental.QuantizationDebugger``
calls; it is used directly because the debugger cannot set uint8/int8 input and output types.
"""

from __future__ import annotations

import csv
import io

import numpy as np

from converter.reference import quiet_tensorflow
from converter.targets import TARGETS
from edge_app.runtime.interpreter import native_stderr_to_log


def calibrate(reference, calibration) -> bytes:
    """The float graph carrying the ranges the representative images produced (not yet quantized)."""
    tf = quiet_tensorflow()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([reference.concrete_function()], reference.trackable)
    TARGETS["int8"].configure(converter, tf, calibration, "float32")
    converter._experimental_calibrate_only = True  # noqa: SLF001 (the debugger's documented route)
    with native_stderr_to_log():
        return bytes(converter.convert())


def quantize_calibrated(calibrated: bytes, io_type: str, ops=(), nodes=()) -> bytes:
    """int8 per-channel with ``io_type`` input/output; op types ``ops`` and the layers whose output tensors
    are named ``nodes`` stay float, with QUANTIZE/DEQUANTIZE around them."""
    tf = quiet_tensorflow()
    from tensorflow.lite.python.convert import mlir_quantize

    with native_stderr_to_log():
        return bytes(mlir_quantize(calibrated, input_data_type=getattr(tf, io_type),
                                   output_data_type=getattr(tf, io_type),
                                   denylisted_ops=list(ops) or None, denylisted_nodes=list(nodes) or None))


def layer_errors(calibrated: bytes, pixels: np.ndarray, ops=(), nodes=()) -> list[dict]:
    """Each quantized layer's error, worst first: its int8 output against its float op run on the same
    (dequantized) input, as RMSE over the output's quantization step, averaged over ``pixels``.

    The debugger's per-layer mode isolates each layer: errors do not accumulate from earlier ones,
    so the ranking says which layers quantize badly themselves (TensorFlow's selective-quantization
    guide keeps layers above ~0.7 steps in float).
    """
    tf = quiet_tensorflow()
    from tensorflow.lite.python.convert import mlir_quantize

    with native_stderr_to_log():
        debug_model = mlir_quantize(calibrated, enable_numeric_verify=True, denylisted_ops=list(ops) or None,
                                    denylisted_nodes=list(nodes) or None)

        def dataset():
            for image in pixels:
                yield [np.asarray(image[None], np.float32)]

        debugger = tf.lite.experimental.QuantizationDebugger(quant_debug_model_content=debug_model,
                                                             debug_dataset=dataset)
        debugger.run()
    table = io.StringIO()
    debugger.layer_statistics_dump(table)
    table.seek(0)
    rows = []
    for row in csv.DictReader(table):
        scale = float(row["scale"])
        if scale > 0:
            rows.append({"node": row["tensor_name"], "op": row["op_name"],
                         "rmse_per_scale": float(np.sqrt(float(row["mean_squared_error"])) / scale)})
    return sorted(rows, key=lambda r: -r["rmse_per_scale"])

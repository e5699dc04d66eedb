"""THE table of conversion targets: one row and one function each (a new target is a row and a function).

Like Ultralytics' ``export_formats()``: name, file suffix, I/O type, whether it needs
calibration data, whether the Edge TPU compiler accepts it.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from edge_app.runtime.errors import ConversionError
from edge_app.runtime.rundir import QUANTS, model_file

log = logging.getLogger("edgecls")



@dataclass(frozen=True)
class Target:
    name: str
    description: str
    io: str  # "float32", or "config": the --io choice
    needs_calibration: bool
    edgetpu_ready: bool
    configure: Callable

    def filename(self) -> str:
        return model_file(self.name)


def _fp32(converter, tf, calibration, io: str) -> None:
    """No optimization: the float graph as TFLite builtins."""


def _fp16(converter, tf, calibration, io: str) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]


def _dynamic(converter, tf, calibration, io: str) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]


def _int8(converter, tf, calibration, io: str) -> None:
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = calibration
    # Builtins INT8 only: an op without an int8 kernel fails the conversion instead of silently
    # staying float, which the Edge TPU compiler would reject later anyway.
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if io != "float32":
        converter.inference_input_type = getattr(tf, io)
        converter.inference_output_type = getattr(tf, io)


TARGETS = {t.name: t for t in (
    Target("fp32", "float32 weights and kernels: the reference", "float32", False, False, _fp32),
    Target("fp16", "float16 weights: half the size, float32 kernels on CPU", "float32", False, False, _fp16),
    Target("dynamic", "int8 weights, float activations: small, usually the slowest on CPU", "float32", False,
           False, _dynamic),
    Target("int8", "integer, per-channel; ops XNNPACK has no int8 kernel for stay float on CPU (the Edge TPU's "
           "copy is full integer); --io uint8 (default) for CPU and Edge TPU", "config",
           True, True, _int8),
)}


if tuple(TARGETS) != QUANTS:  # the run directory's quant names and this table must not drift apart
    raise RuntimeError(f"converter targets {tuple(TARGETS)} differ from the run contract's {QUANTS}")
IO_TYPES = ("uint8", "int8", "float32")


def target_table() -> list[dict]:
    """The table as rows, for ``--help``, the config's validation, the report and docs."""
    return [{"quant": t.name, "file": t.filename(), "io": t.io if t.io != "config" else f"{'|'.join(IO_TYPES)} (--io)",
             "calibration": t.needs_calibration, "edgetpu_ready": t.edgetpu_ready, "description": t.description}
            for t in TARGETS.values()]


def convert(reference, target: Target, io: str = "uint8", calibration=None) -> bytes:
    """Convert ``reference`` (a :class:`~converter.reference.ReferenceModel`) for ``target``.

    Example:
        >>> data = convert(ref, TARGETS["int8"], io="uint8", calibration=representative_dataset(pixels))
    """
    from converter.reference import quiet_tensorflow
    from edge_app.runtime.interpreter import native_stderr_to_log

    tf = quiet_tensorflow()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([reference.concrete_function()], reference.trackable)
    target.configure(converter, tf, calibration, io)
    try:
        with native_stderr_to_log():
            return bytes(converter.convert())
    except Exception as e:  # ConverterError, and ValueError/RuntimeError from the calibrator
        raise ConversionError(explain_failure(str(e), target.name, reference.path)) from e


_TF_OP = re.compile(r"'(tf\.[A-Za-z0-9_]+)' op")
_UNQUANTIZABLE = re.compile(r"(?:Quantization not yet supported for op|not supported for op)[: ]*'?([A-Za-z0-9_.]+)")
_FAILED_OP = re.compile(r"failed to legalize operation '([A-Za-z0-9_.]+)'")


def explain_failure(message: str, quant: str, path) -> str:
    """One line: which op(s) could not be lowered for ``quant``, and what to try instead."""
    ops = sorted(set(_TF_OP.findall(message)) | set(_UNQUANTIZABLE.findall(message)) | set(_FAILED_OP.findall(message)))
    what = f"op {', '.join(ops)}" if ops else "an op"
    if quant == "int8":
        fix = ("it has no int8 kernel; try --quant dynamic (int8 weights, float activations) or --quant fp16, "
               "or replace that layer")
    else:
        fix = ("TFLite has no builtin kernel for it; replace that layer with standard Keras layers, "
               "or try --quant dynamic")
    first = next((line.strip() for line in message.splitlines() if "error" in line.lower()), message.strip()[:200])
    log.debug("converter said: %s", message)
    return f"cannot convert {path} to {quant}: {what} cannot be lowered to TFLite ({first[:200]}); {fix}"


def targets_help() -> str:
    """The ``targets (--quant):`` block of ``edgecls convert --help``, from the table."""
    width = max(len(name) for name in TARGETS)
    rows = [f"  {t.name:<{width}}  {t.description}" + ("; Edge TPU ready" if t.edgetpu_ready else "")
            + ("; needs calibration images" if t.needs_calibration else "") for t in TARGETS.values()]
    return "targets (--quant):\n" + "\n".join(rows)

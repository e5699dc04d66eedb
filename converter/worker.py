"""Run the TFLite converter in a child process, so a crash in it becomes a clear error, not a segfault.

TensorFlow's MLIR quantizer dies with SIGSEGV on some graphs (in TF 2.21, int8 with a Keras
``softplus``, ``mish`` or ``selu`` activation). In a child, the parent survives, names the target
that crashed and the ops that likely caused it, and suggests a target that works.

The child reads a JSON request (model, input size, targets, I/O type, calibration ``.npy``),
writes ``<quant>.tflite`` files into the request's folder and prints one JSON line per target.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from converter.targets import TARGETS, ConversionError

log = logging.getLogger("edgecls")

# Builtin ops with int8 kernels (TFLite's quantization spec), used only to guess what crashed the quantizer.
INT8_OPS = frozenset("""ADD ARG_MAX ARG_MIN AVERAGE_POOL_2D BATCH_TO_SPACE_ND CONCATENATION CONV_2D DEPTH_TO_SPACE
DEPTHWISE_CONV_2D DEQUANTIZE ELU EQUAL EXP FULLY_CONNECTED GATHER HARD_SWISH L2_NORMALIZATION LEAKY_RELU LOGISTIC
LOG_SOFTMAX MAXIMUM MAX_POOL_2D MEAN MINIMUM MUL PACK PAD PADV2 PRELU QUANTIZE REDUCE_MAX REDUCE_MIN RELU RELU6
RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR RESIZE_NEAREST_NEIGHBOR RSQRT SHAPE SLICE SOFTMAX SPACE_TO_BATCH_ND
SPACE_TO_DEPTH SPLIT SPLIT_V SQUEEZE STRIDED_SLICE SUB SUM TANH TRANSPOSE TRANSPOSE_CONV UNPACK""".split())


def convert_all(model: Path, image_size: tuple[int, int] | None, quants: tuple[str, ...], io: str,
                calibration: np.ndarray | None, timeout_s: float = 1800) -> dict[str, bytes]:
    """Flatbuffers for ``quants``, converted in one child process.

    Raises:
        ConversionError: a target could not be lowered (the op and a fix named), or the converter crashed.

    Example:
        >>> data = convert_all(Path("run/model.keras"), None, ("fp32", "int8"), "uint8", pixels)
    """
    with tempfile.TemporaryDirectory(prefix="edgecls-convert-") as tmp:
        folder = Path(tmp)
        calibration_file = None
        if calibration is not None:
            calibration_file = folder / "calibration.npy"
            np.save(calibration_file, calibration)
        request = {"model": str(model), "image_size": image_size, "quants": list(quants), "io": io,
                   "calibration": str(calibration_file) if calibration_file else None, "out": tmp,
                   "verbose": log.isEnabledFor(logging.DEBUG)}
        (folder / "request.json").write_text(json.dumps(request))
        results: dict[str, dict] = {}
        with open(folder / "stderr.txt", "w+b") as err:
            proc = subprocess.Popen([sys.executable, "-m", "converter.worker", str(folder / "request.json")],
                                    stdout=subprocess.PIPE, stderr=err, text=True)
            try:
                for line in proc.stdout:
                    if line.startswith("{"):
                        message = json.loads(line)
                        if "started" in message:
                            log.info("converting to %s: %s", message["started"], TARGETS[message["started"]].description)
                        else:
                            results[message["quant"]] = message
                proc.wait(timeout=timeout_s)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
        for line in stderr.splitlines():
            if line.strip():
                log.debug("converter: %s", line)
        flatbuffers = {}
        for quant in quants:
            result = results.get(quant)
            if result is None:
                raise ConversionError(_crash_message(model, image_size, quant, proc.returncode, flatbuffers, stderr))
            if "error" in result:
                raise ConversionError(result["error"])
            flatbuffers[quant] = (folder / f"{quant}.tflite").read_bytes()
        return flatbuffers


def _crash_message(model: Path, image_size, quant: str, returncode: int, done: dict[str, bytes], stderr: str) -> str:
    how = f"signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"
    suspects = ""
    float_graph = done.get("fp32")
    if float_graph is None and quant == "int8":
        try:  # only on this failure path: the float graph tells which ops the quantizer met
            float_graph = convert_all(model, image_size, ("fp32",), "float32", None)["fp32"]
        except ConversionError:
            float_graph = None
    if float_graph is not None and quant == "int8":
        from converter.graph import inspect_flatbuffer

        unusual = sorted(set(inspect_flatbuffer(float_graph).op_counts) - INT8_OPS)
        if unusual:
            suspects = f"; ops of the float graph without int8 kernels: {', '.join(unusual)}"
    last = next((line for line in reversed(stderr.splitlines()) if "rror" in line), "")
    detail = f" ({last.strip()[:200]})" if last else ""
    fix = ("try --quant dynamic or --quant fp16, or replace those layers (e.g. relu/hard-swish instead of "
           "softplus/mish/selu)") if quant == "int8" else "try --quant fp32 or --quant dynamic"
    return f"the TensorFlow Lite converter crashed ({how}) converting {model} to {quant}{suspects}{detail}; {fix}"


def _child(request_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    logging.basicConfig(level=logging.DEBUG if request["verbose"] else logging.WARNING, stream=sys.stderr)
    from converter.calibration import representative_dataset
    from converter.reference import ReferenceModel
    from converter.targets import convert
    from edge_app.runtime.errors import EdgeclsError

    out = Path(request["out"])
    try:
        image_size = tuple(request["image_size"]) if request["image_size"] else None
        reference = ReferenceModel.load(Path(request["model"]), image_size)
    except EdgeclsError as e:
        for quant in request["quants"]:
            print(json.dumps({"quant": quant, "error": str(e)}), flush=True)
        return 0
    calibration = None
    if request["calibration"]:
        calibration = representative_dataset(np.load(request["calibration"], mmap_mode="r"))
    for quant in request["quants"]:
        print(json.dumps({"started": quant}), flush=True)
        try:
            data = convert(reference, TARGETS[quant], request["io"], calibration)
        except EdgeclsError as e:
            print(json.dumps({"quant": quant, "error": str(e)}), flush=True)
            continue
        (out / f"{quant}.tflite").write_bytes(data)
        print(json.dumps({"quant": quant, "ok": True, "size_bytes": len(data)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1]))

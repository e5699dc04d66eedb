"""TensorFlow's converter in a child process, so a crash in it becomes a clear error, not a segfault.

TensorFlow's MLIR quantizer dies with SIGSEGV on some graphs (in TF 2.21, int8 with a Keras
``softplus``, ``mish`` or ``selu`` activation). In a child, the parent survives, names the target
that crashed and the ops that likely caused it, and suggests a target that works.

The child holds the model and its calibration for the whole conversion: int8 is calibrated once,
then quantized as often as the delegate-aware pass and the accuracy repair need (each quantization
is a fraction of a second). The protocol is JSON lines: the parent writes one request per line on
the child's stdin, the child answers each with one line on stdout; flatbuffers travel as files in
a private temporary folder.
"""

from __future__ import annotations

import itertools
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


class ConverterProcess:
    """One child process converting one model: ``convert`` a target, ``quantize`` int8 with ops or layers
    kept in float, rank layers by their ``layer_errors``.

    Raises:
        ConversionError: a target could not be lowered (the op and a fix named), or the converter crashed.

    Example:
        >>> with ConverterProcess(Path("run/model.keras"), None, "uint8", pixels) as child:
        ...     fp32, int8 = child.convert("fp32"), child.convert("int8")
        ...     cpu_int8 = child.quantize(ops=["HARD_SWISH"])
    """

    def __init__(self, model: Path, image_size: tuple[int, int] | None, io: str,
                 calibration: np.ndarray | None):
        self.model, self.image_size, self.io = model, image_size, io
        self._tmp = tempfile.TemporaryDirectory(prefix="edgecls-convert-")
        self.folder = Path(self._tmp.name)
        calibration_file = None
        if calibration is not None:
            calibration_file = self.folder / "calibration.npy"
            np.save(calibration_file, calibration)
        self._err = open(self.folder / "stderr.txt", "w+b")  # noqa: SIM115 (lives as long as the child)
        self._proc = subprocess.Popen([sys.executable, "-m", "converter.worker"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, stderr=self._err, text=True)
        self._ids = itertools.count()
        self.done: dict[str, bytes] = {}
        try:
            self._send({"cmd": "load", "model": str(model), "image_size": image_size, "io": io, "out": str(self.folder),
                        "calibration": str(calibration_file) if calibration_file else None,
                        "verbose": log.isEnabledFor(logging.DEBUG)}, what="load", payload=False)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> ConverterProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                self._proc.stdin.close()
                self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        self._log_stderr()
        self._err.close()
        self._tmp.cleanup()

    def convert(self, quant: str) -> bytes:
        """The flatbuffer of target ``quant`` (``int8``: every op integer, as the Edge TPU needs)."""
        log.info("converting to %s: %s", quant, TARGETS[quant].description)
        data = self._send({"cmd": "convert", "quant": quant}, what=quant)
        self.done[quant] = data
        return data

    def quantize(self, ops: list[str] = (), nodes: list[str] = ()) -> bytes:
        """int8 from the same calibration with op types ``ops`` and the layers whose output tensors are named
        ``nodes`` kept in float (TFLite's selective quantization)."""
        return self._send({"cmd": "quantize", "ops": list(ops), "nodes": list(nodes)}, what="int8")

    def layer_errors(self, ops: list[str] = (), nodes: list[str] = (), samples: int = 64) -> list[dict]:
        """Every quantized layer's error against its float twin fed the same int8 input, worst first:
        ``{"node", "op", "rmse_per_scale"}`` (RMSE in units of the output's quantization step), measured on
        ``samples`` calibration images by TensorFlow's quantization debugger."""
        return self._send({"cmd": "layer_errors", "ops": list(ops), "nodes": list(nodes), "samples": samples},
                          what="int8", payload=False)

    def _send(self, request: dict, what: str, payload: bool = True):
        request["id"] = next(self._ids)
        answer = None
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
            line = self._proc.stdout.readline()
            answer = json.loads(line) if line.startswith("{") else None
        except OSError:  # the child died before reading: a broken pipe
            pass
        if answer is None:
            if self._proc.poll() is None:
                self._proc.kill()
            self._proc.wait()
            raise ConversionError(self._crash_message(what))
        if "error" in answer:
            raise ConversionError(answer["error"])
        if not payload:
            return answer.get("result")
        return (self.folder / answer["file"]).read_bytes()

    def _log_stderr(self) -> str:
        self._err.seek(0)
        stderr = self._err.read().decode("utf-8", "replace")
        for line in stderr.splitlines():
            if line.strip():
                log.debug("converter: %s", line)
        return stderr

    def _crash_message(self, quant: str) -> str:
        returncode = self._proc.returncode
        how = f"signal {signal.Signals(-returncode).name}" if returncode < 0 else f"exit code {returncode}"
        stderr = self._log_stderr()
        suspects = ""
        float_graph = self.done.get("fp32")
        if float_graph is None and quant == "int8":
            try:  # only on this failure path: the float graph tells which ops the quantizer met
                float_graph = convert_all(self.model, self.image_size, ("fp32",), "float32", None)["fp32"]
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
        return (f"the TensorFlow Lite converter crashed ({how}) converting {self.model} to {quant}{suspects}"
                f"{detail}; {fix}")


def convert_all(model: Path, image_size: tuple[int, int] | None, quants: tuple[str, ...], io: str,
                calibration: np.ndarray | None) -> dict[str, bytes]:
    """Flatbuffers for ``quants``, converted in one child process.

    Example:
        >>> data = convert_all(Path("run/model.keras"), None, ("fp32", "int8"), "uint8", pixels)
    """
    with ConverterProcess(model, image_size, io, calibration) as child:
        return {quant: child.convert(quant) for quant in quants}


class _Child:
    """The child's side: TensorFlow, the model, and int8's calibrated graph once it exists."""

    def __init__(self, request: dict):
        from converter.calibration import representative_dataset
        from converter.reference import ReferenceModel

        image_size = tuple(request["image_size"]) if request["image_size"] else None
        self.reference = ReferenceModel.load(Path(request["model"]), image_size)
        self.io = request["io"]
        self.pixels = np.load(request["calibration"], mmap_mode="r") if request["calibration"] else None
        self.calibration = representative_dataset(self.pixels) if self.pixels is not None else None
        self.calibrated: bytes | None = None

    def convert(self, request: dict) -> bytes:
        from converter.targets import convert

        return convert(self.reference, TARGETS[request["quant"]], self.io, self.calibration)

    def quantize(self, request: dict) -> bytes:
        from converter.quantize import quantize_calibrated

        return quantize_calibrated(self._calibrated(), self.io, request["ops"], request["nodes"])

    def layer_errors(self, request: dict) -> list[dict]:
        from converter.quantize import layer_errors

        return layer_errors(self._calibrated(), self.pixels[:request["samples"]], request["ops"], request["nodes"])

    def _calibrated(self) -> bytes:
        from converter.quantize import calibrate

        if self.calibrated is None:
            self.calibrated = calibrate(self.reference, self.calibration)
        return self.calibrated


def _child() -> int:
    from edge_app.runtime.errors import EdgeclsError

    child, out = None, None
    for line in sys.stdin:
        request = json.loads(line)
        answer: dict = {"id": request["id"]}
        try:
            if request["cmd"] == "load":
                logging.basicConfig(level=logging.DEBUG if request["verbose"] else logging.WARNING, stream=sys.stderr)
                out = Path(request["out"])
                child = _Child(request)
            elif request["cmd"] == "layer_errors":
                answer["result"] = child.layer_errors(request)
            else:
                data = getattr(child, request["cmd"])(request)
                name = f"{request['id']}.tflite"
                (out / name).write_bytes(data)
                answer["file"] = name
        except EdgeclsError as e:
            answer["error"] = str(e)
        except AttributeError as e:  # "load" failed earlier and the parent asked anyway
            answer["error"] = f"the converter could not start: {e}"
        print(json.dumps(answer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(_child())

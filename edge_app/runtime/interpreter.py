"""One factory for interpreters: LiteRT first, then tflite-runtime, then TensorFlow Lite.

The Edge TPU delegate is found by platform, as pycoral's ``utils/edgetpu.py`` does. Which kernels
actually run a model (XNNPACK, the Edge TPU, or LiteRT's built-in ones) is read back from the allocated
interpreter by :func:`applied_kernels`, never assumed: a container or an emulator without ``/sys`` makes
LiteRT start without XNNPACK, silently.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import importlib
import logging
import os
import platform
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edge_app.runtime.artifact import EDGETPU_OP, ModelArtifact, read_artifact
from edge_app.runtime.errors import DelegateError, ModelError, first_line

log = logging.getLogger("edgecls")

EDGETPU_LIBS = {"Linux": "libedgetpu.so.1", "Darwin": "libedgetpu.1.dylib", "Windows": "edgetpu.dll"}
# (name shown to users, module holding Interpreter and load_delegate, distribution for the version)
RUNTIMES = (
    ("ai-edge-litert", "ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite-runtime", "tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow", "tensorflow"),
)
# EDGECLS_XNNPACK=off: LiteRT's built-in kernels only (to see what XNNPACK changes, or to rule it out).
XNNPACK_ENV = "EDGECLS_XNNPACK"
XNNPACK = "XNNPACK"
INSTALL_EDGETPU = ("install libedgetpu1-std (Coral's apt repository; see the README's Coral section), "
                   "or run with --device cpu and the model without '_edgetpu'")


@dataclass(frozen=True)
class Runtime:
    name: str
    version: str
    interpreter_class: type
    load_delegate: Callable


@functools.cache
def load_runtime(preferred: str | None = None) -> Runtime:
    """The first TFLite runtime that imports. ``EDGECLS_RUNTIME`` (or ``preferred``) forces one by name."""
    preferred = preferred or os.environ.get("EDGECLS_RUNTIME")
    candidates = [r for r in RUNTIMES if preferred in (None, r[0])]
    if not candidates:
        raise ModelError(f"unknown runtime {preferred!r}; choose one of: {', '.join(r[0] for r in RUNTIMES)}")
    for name, module_name, dist in candidates:
        if module_name == "tensorflow":
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # only the fallback; keep TF's start-up chatter off
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if module_name == "tensorflow":
            # The public tf.lite namespace, not the tensorflow.lite package (which lacks Interpreter).
            interpreter_class, load_delegate = module.lite.Interpreter, module.lite.experimental.load_delegate
        else:
            interpreter_class, load_delegate = module.Interpreter, module.load_delegate
        runtime = Runtime(name, _version(dist), interpreter_class, load_delegate)
        log.debug("runtime: %s %s", runtime.name, runtime.version)
        return runtime
    raise ModelError("no TFLite runtime is installed; pip install 'edgecls[edge]' (ai-edge-litert), "
                     "or on 32-bit Raspberry Pi OS: pip install tflite-runtime")


def _version(dist: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def parse_device(device: str) -> tuple[str, str | None]:
    """``"cpu"`` → ``("cpu", None)``; ``"edgetpu:usb:0"`` → ``("edgetpu", "usb:0")``."""
    kind, _, which = device.partition(":")
    if kind not in ("cpu", "edgetpu") or (kind == "cpu" and which):
        raise ModelError(f"unknown device {device!r}; use cpu, edgetpu, or edgetpu:usb, edgetpu:usb:0, edgetpu:pci:0")
    return kind, which or None


def default_num_threads() -> int:
    """All cores, at most 4 (a Raspberry Pi 4/5 has 4; more threads than cores only slows LiteRT down)."""
    return max(1, min(4, os.cpu_count() or 1))


def load_edgetpu_delegate(runtime: Runtime, which: str | None = None):
    """Load the Coral Edge TPU delegate for this platform, or raise :class:`DelegateError` saying how to fix it."""
    lib = EDGETPU_LIBS.get(platform.system())
    if lib is None:
        raise DelegateError(f"the Edge TPU runtime has no build for {platform.system()}; run with --device cpu")
    options = {"device": which} if which else {}
    hook, failure = sys.unraisablehook, None
    # A failed load leaves a half-built Delegate whose __del__ prints a traceback. The exception's
    # traceback keeps it alive, so the error is not chained: we collect it here, quietly.
    sys.unraisablehook = lambda _: None
    try:
        try:
            return runtime.load_delegate(lib, options)
        except (OSError, ValueError, RuntimeError) as e:
            failure = first_line(e)
        gc.collect()
    finally:
        sys.unraisablehook = hook
    where = f" for device '{which}'" if which else ""
    raise DelegateError(f"could not load the Edge TPU delegate '{lib}'{where} ({failure}). "
                        f"Is the Coral plugged in? If so, {INSTALL_EDGETPU}")


def xnnpack_wanted(xnnpack: bool | None = None) -> bool:
    """Whether the default XNNPACK delegate should be applied: ``xnnpack`` if given, else not ``EDGECLS_XNNPACK=off``."""
    if xnnpack is not None:
        return xnnpack
    value = os.environ.get(XNNPACK_ENV, "on").strip().lower()
    if value not in ("on", "off", "1", "0", ""):
        raise ModelError(f"{XNNPACK_ENV}={value!r}: use on or off")
    return value not in ("off", "0")


def without_default_delegates(runtime: Runtime) -> dict:
    """The interpreter option that keeps XNNPACK off (LiteRT's ``BUILTIN_WITHOUT_DEFAULT_DELEGATES``)."""
    kinds = getattr(sys.modules.get(runtime.interpreter_class.__module__), "OpResolverType", None)
    if kinds is None:
        raise ModelError(f"{runtime.name} {runtime.version} cannot turn XNNPACK off; unset {XNNPACK_ENV} "
                         "or pip install -U ai-edge-litert")
    return {"experimental_op_resolver_type": kinds.BUILTIN_WITHOUT_DEFAULT_DELEGATES}


def make_interpreter(model: str | Path | ModelArtifact, device: str = "cpu", num_threads: int | None = None,
                     xnnpack: bool | None = None):
    """Create and allocate an interpreter for ``model`` on ``device``.

    Args:
        model: path to a ``.tflite`` file, or its already-read :class:`ModelArtifact`.
        device: ``cpu``, ``edgetpu``, or ``edgetpu:usb``/``edgetpu:usb:0``/``edgetpu:pci:0``.
        num_threads: CPU threads for the interpreter; ``None`` = :func:`default_num_threads`.
        xnnpack: apply LiteRT's default XNNPACK delegate; ``None``: unless ``EDGECLS_XNNPACK=off``.
            What was applied in the end: :func:`applied_kernels`.

    Example:
        >>> interpreter = make_interpreter("mobilenet_v2_1.0_224_quant.tflite", num_threads=2)
    """
    artifact = model if isinstance(model, ModelArtifact) else read_artifact(model)
    path = artifact.path
    kind, which = parse_device(device)
    if num_threads is not None and num_threads < 1:
        raise ModelError(f"--threads must be 1 or more, got {num_threads}")
    runtime = load_runtime()
    delegates = []
    if kind == "edgetpu":
        delegates.append(load_edgetpu_delegate(runtime, which))
        if not artifact.edgetpu:
            log.warning("%s is not compiled for the Edge TPU: every op runs on the CPU. "
                        "Compile it with edgetpu_compiler (edgecls convert RUN --edgetpu)", path)
    elif artifact.edgetpu:
        raise ModelError(f"{path} is compiled for the Coral Edge TPU ({EDGETPU_OP.decode()}) and cannot run on the CPU. "
                         f"Run it with --device edgetpu on a machine with a Coral: {INSTALL_EDGETPU}")
    threads = num_threads or default_num_threads()
    options = {} if xnnpack_wanted(xnnpack) else without_default_delegates(runtime)
    try:
        # Hide "INFO: Created TensorFlow Lite XNNPACK delegate"; real native errors still show.
        with native_stderr_to_log(show=lambda line: bool(line.strip()) and not line.startswith("INFO: ")):
            source = {"model_path": str(path)} if artifact.data is None else {"model_content": artifact.data}
            interpreter = runtime.interpreter_class(**source, experimental_delegates=delegates or None,
                                                    num_threads=threads, **options)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        reason = first_line(e)
        if "flatbuffer" in reason.lower():
            # A verifier failure: the bytes are damaged, not too new.
            size = len(artifact.data) if artifact.data is not None else path.stat().st_size
            raise ModelError(f"{path} is damaged ({reason}; {size} bytes): it was probably truncated "
                             "while copying; copy it again, or convert it again") from e
        raise ModelError(f"{runtime.name} {runtime.version} cannot load {path}: {reason}. "
                         "If it uses ops this runtime lacks, upgrade it: pip install -U ai-edge-litert") from e
    log.debug("interpreter: %s %s, device %s, %d threads", runtime.name, runtime.version, device, threads)
    return interpreter


@dataclass(frozen=True)
class Kernels:
    """Which kernels run a model, read from an allocated interpreter's node list (see :func:`applied_kernels`).

    Attributes:
        delegate: ``"XNNPACK"``, ``"edgetpu"``, or ``None`` when every op runs on LiteRT's built-in kernels.
        partitions: delegate partitions (one ``DELEGATE`` node each); more than one means the graph is split.
        delegated_ops: the model's ops the delegate runs, of ``total_ops``.
        builtin_ops: the ops left on the built-in kernels, by type (an int8 ``SOFTMAX`` at the end is usual).
    """

    delegate: str | None
    partitions: int
    delegated_ops: int
    total_ops: int
    builtin_ops: dict

    def summary(self) -> str:
        """One line for a log header, a kiosk footer, a report: ``XNNPACK (67/67 ops)``."""
        if self.delegate is None:
            return "no delegate: built-in kernels only"
        split = f", {self.partitions} partitions" if self.partitions > 1 else ""
        return f"{self.delegate} ({self.delegated_ops}/{self.total_ops} ops{split})"

    def to_dict(self) -> dict:
        return {"delegate": self.delegate, "partitions": self.partitions, "delegated_ops": self.delegated_ops,
                "total_ops": self.total_ops, "builtin_ops": dict(self.builtin_ops)}


def applied_kernels(interpreter, device: str = "cpu") -> Kernels | None:
    """The delegate an allocated ``interpreter`` actually applied, from its nodes; ``None`` when the runtime
    does not show them (old tflite-runtime).

    LiteRT appends one ``DELEGATE`` node per partition a delegate claimed, after the model's own ops. An op
    is delegated when it is reached walking back from a partition's outputs without crossing its inputs.
    On ``cpu`` the only delegate is the default XNNPACK one; with an Edge TPU, partitions are its own.

    Example:
        >>> applied_kernels(make_interpreter("mobilenet_v2_1.0_224_quant.tflite")).summary()
        'XNNPACK (64/66 ops, 2 partitions)'
    """
    try:
        nodes = list(interpreter._get_ops_details())  # the only node-level view the Python API offers
    except (AttributeError, RuntimeError, ValueError):
        return None
    delegates, originals, delegated = delegated_nodes(nodes)
    left: dict[str, int] = {}
    for n in originals:
        if n["index"] not in delegated:
            left[n["op_name"]] = left.get(n["op_name"], 0) + 1
    name = None if not delegates else "edgetpu" if parse_device(device)[0] == "edgetpu" else XNNPACK
    return Kernels(name, len(delegates), len(delegated), len(originals), dict(sorted(left.items())))


def delegated_nodes(nodes: list[dict]) -> tuple[list[dict], list[dict], set[int]]:
    """``(DELEGATE nodes, the model's own nodes, indexes of those a delegate runs)`` from an allocated
    interpreter's ``_get_ops_details()`` (see :func:`applied_kernels`)."""
    delegates = [n for n in nodes if n["op_name"] == "DELEGATE"]
    originals = [n for n in nodes if n["op_name"] != "DELEGATE"]
    producer = {int(t): n for n in originals for t in n["outputs"]}
    delegated: set[int] = set()
    for d in delegates:
        boundary, stack = {int(t) for t in d["inputs"]}, [int(t) for t in d["outputs"]]
        while stack:
            t = stack.pop()
            if t in boundary or t not in producer or producer[t]["index"] in delegated:
                continue
            delegated.add(producer[t]["index"])
            stack.extend(int(i) for i in producer[t]["inputs"] if i >= 0)
    return delegates, originals, delegated


def missing_xnnpack(kernels: Kernels | None, device: str = "cpu") -> str | None:
    """Why XNNPACK should have run and did not (one line to warn with), or ``None`` when all is as expected."""
    if kernels is None or kernels.delegate is not None or parse_device(device)[0] != "cpu" or not xnnpack_wanted():
        return None
    return (f"XNNPACK is not applied: all {kernels.total_ops} ops run on LiteRT's built-in kernels, several times "
            "slower. In a container, chroot or emulator, mount /sys (LiteRT reads the CPU's features there) and "
            f"give it the board's /proc/cpuinfo; {XNNPACK_ENV}=off turns it off on purpose")


@contextlib.contextmanager
def native_stderr_to_log(show: Callable[[str], bool] = lambda line: False):
    """Send what native code writes to stderr (LiteRT, TensorFlow, MLIR) to the DEBUG log.

    Lines for which ``show(line)`` is true still reach the console. Python's own stderr is
    unaffected outside the block.
    """
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode("utf-8", "replace").splitlines():
                if show(line):
                    print(line, file=sys.stderr)
                elif line.strip():
                    log.debug("%s", line)

"""One benchmark row: load a model, time it with the runtime's one timer, and describe it.

The timing itself is :mod:`edge_app.runtime.timing`, the same code ``edgecls convert``'s latency
check runs, so the same file, threads and runs give the same p50 in both.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

from edge_app.runtime import ImageClassifier, ModelArtifact, load_runtime, read_artifact
from edge_app.runtime.interpreter import make_interpreter
from edge_app.runtime.rewrite import KNN_PREFIX
from edge_app.runtime.rundir import QUANTS
from edge_app.runtime.timing import latency_stats, time_invokes


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (VmHWM; ``ru_maxrss`` where /proc is absent)."""
    hwm = _proc_status_kb("VmHWM")
    if hwm is not None:
        return hwm / 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux, bytes on macOS.
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def rss_mb() -> float | None:
    """Resident memory of this process now, in MiB (None where /proc is absent)."""
    rss = _proc_status_kb("VmRSS")
    return None if rss is None else rss / 1024


def _proc_status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def infer_quant(artifact: ModelArtifact, interpreter=None) -> str:
    """The model's quantization: the ``quant`` the converter embedded, else what its tensor types say.

    The file name is not consulted: a renamed file keeps its quantization. Tensor types: integer
    input → ``int8`` (with int8 tensors inside; uint8 I/O costs little) or ``uint8`` (legacy
    per-tensor uint8 throughout, like Coral's models); float input with float16 tensors → ``fp16``;
    with int8 weights → ``dynamic``; else ``fp32``.

    Example:
        >>> infer_quant(read_artifact("mobilenet_v2_1.0_224_quant.tflite"), interpreter)
        'uint8'
    """
    quant = artifact.metadata.get("quant")
    if quant in QUANTS:
        return str(quant)
    if interpreter is None:
        return "unknown"
    input_dtype = np.dtype(interpreter.get_input_details()[0]["dtype"])
    dtypes = set()
    for detail in interpreter.get_tensor_details():
        if detail["name"].startswith(KNN_PREFIX):  # 'unknown's int8 reference rows say nothing of the model
            continue
        try:
            dtypes.add(np.dtype(detail["dtype"]))
        except TypeError:
            continue
    if input_dtype in (np.dtype(np.uint8), np.dtype(np.int8)):
        return "int8" if np.dtype(np.int8) in dtypes else "uint8"
    if np.dtype(np.float16) in dtypes:
        return "fp16"
    if np.dtype(np.int8) in dtypes:
        return "dynamic"
    return "fp32"


def measure_latency(model: str | Path, threads: int, runs: int = 100, warmup: int = 10,
                    duration: float | None = None, device: str = "cpu", labels: str | None = None,
                    mean=None, std=None) -> tuple[dict, ImageClassifier]:
    """Load ``model`` and time it; returns ``(result, classifier)`` where ``result`` is one report row.

    Peak RSS is read right after the timed loop, so it covers loading and invoking the model (and
    whatever this process held before); run it in a fresh process for per-model figures.

    Example:
        >>> row, clf = measure_latency("model_int8.tflite", threads=2, runs=100)
        >>> row["latency_ms"]["p50"], row["fps"]
    """
    start = time.perf_counter_ns()
    load_runtime()  # import the runtime first: a one-off process cost, neither the model's load time nor its memory
    import_ms = (time.perf_counter_ns() - start) / 1e6
    baseline_rss = rss_mb()
    start = time.perf_counter_ns()
    clf = ImageClassifier(model, labels=labels, device=device, num_threads=threads, mean=mean, std=std)
    load_ms = (time.perf_counter_ns() - start) / 1e6
    artifact = read_artifact(clf.path)
    first_ms, samples = time_invokes(clf, runs, warmup, duration)
    peak = peak_rss_mb()
    stats = latency_stats(samples)
    novelty = _novelty_cost(clf, stats["p50"])
    row = {
        "model": str(clf.path),
        "name": display_name(clf.path),
        "quant": infer_quant(artifact, clf.interpreter),
        "size_bytes": os.path.getsize(clf.path),
        "threads": clf.num_threads,
        "device": device,
        "kernels": None if clf.kernels is None else clf.kernels.to_dict(),
        "input": clf.describe()["input"],
        "num_classes": clf.num_classes,
        "runs": len(samples),
        "warmup": warmup,
        "latency_ms": stats,
        "fps": 1000.0 / stats["mean"],
        "first_invoke_ms": first_ms,
        "load_ms": load_ms,
        "runtime_import_ms": import_ms,
        "peak_rss_mb": peak,
        # Python, numpy and the runtime before the model was loaded: peak minus this is the model's own share.
        "baseline_rss_mb": baseline_rss,
        "model_rss_mb": None if baseline_rss is None else peak - baseline_rss,
        "accuracy": None,
        "novelty_ms": novelty,
        "samples_ms": [round(s, 4) for s in samples],
    }
    return row, clf


def _novelty_cost(clf: ImageClassifier, invoke_p50_ms: float, runs: int = 300) -> dict | None:
    """What 'unknown' adds per frame (p50), and its share of the p50 invoke; ``None`` for a model without a
    reference set. Scored in numpy: reading the embedding and scoring it. Scored in the graph: the invoke with the
    k-NN ops minus the invoke of the model as written, paired frame by frame (the same input, one after the
    other, so a busy moment hits both), plus reading the result."""
    if clf.reference is None:
        return None
    samples = []
    plain = None if clf.similarity_detail is None else make_interpreter(clf.artifact, clf.device, clf.num_threads)
    if plain is not None:
        plain.set_tensor(clf.input_detail["index"], clf.interpreter.get_tensor(clf.input_detail["index"]))
        plain.invoke()
    for _ in range(runs):
        start = without = time.perf_counter_ns()
        if plain is not None:
            plain.invoke()
            without = 2 * time.perf_counter_ns() - start  # counts the plain invoke's time off
            clf.invoke()
        clf.novelty()
        samples.append((time.perf_counter_ns() - without) / 1e6)
    p50 = max(0.0, float(np.median(samples)))
    return {"p50": round(p50, 4), "share_of_p50": round(p50 / invoke_p50_ms, 4) if invoke_p50_ms else None,
            "references": len(clf.reference.labels), "scored_in": "numpy" if plain is None else "graph"}


def display_name(path: str | Path) -> str:
    """``run/model_int8.tflite`` → ``run/model_int8``; a file elsewhere → its stem (short names for tables)."""
    path = Path(path)
    return f"{path.parent.name}/{path.stem}" if path.stem.startswith("model_") and path.parent.name else path.stem

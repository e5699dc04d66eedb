"""How latency is timed, once: ``edgecls convert``'s check and ``edgecls bench`` both call this.

What is timed is ``set_tensor`` + ``invoke`` on a fixed input of the model's shape and type,
after the first invoke (timed on its own: XNNPACK packs weights then) and ``warmup`` untimed
ones. Nothing else runs between the two clock reads, so the figure is what a bare interpreter
loop gets (``scripts/raw_loop.py`` checks that).
"""

from __future__ import annotations

import time

import numpy as np


def timing_input(spec, seed: int = 0) -> np.ndarray:
    """A fixed pseudo-random input tensor for ``spec`` (an :class:`InputSpec`): CPU latency does not depend on pixels."""
    rng = np.random.default_rng(seed)
    buffer = spec.new_buffer()
    if np.issubdtype(buffer.dtype, np.integer):
        info = np.iinfo(buffer.dtype)
        buffer[...] = rng.integers(info.min, info.max, size=buffer.shape, endpoint=True, dtype=buffer.dtype)
    else:
        buffer[...] = rng.uniform(-1.0, 1.0, size=buffer.shape)
    return buffer


def time_invokes(classifier, runs: int = 100, warmup: int = 10, duration: float | None = None,
                 tensor: np.ndarray | None = None) -> tuple[float, list[float]]:
    """Time ``set_tensor`` + ``invoke`` of an :class:`ImageClassifier`: returns ``(first_invoke_ms, samples_ms)``.

    ``runs`` timed invokes, or as many as fit in ``duration`` seconds when it is given.

    Example:
        >>> first_ms, samples = time_invokes(ImageClassifier("model_int8.tflite", num_threads=2), runs=50)
        >>> latency_stats(samples)["p50"]
    """
    if tensor is None:
        tensor = timing_input(classifier.spec)
    set_tensor, invoke, clock = classifier.set_tensor, classifier.invoke, time.perf_counter_ns
    start = clock()
    set_tensor(tensor)
    invoke()
    first_ms = (clock() - start) / 1e6
    for _ in range(warmup):
        set_tensor(tensor)
        invoke()
    ticks = []
    append = ticks.append
    if duration is None:
        for _ in range(runs):
            start = clock()
            set_tensor(tensor)
            invoke()
            append(clock() - start)
    else:
        deadline = clock() + int(duration * 1e9)
        while True:
            start = clock()
            set_tensor(tensor)
            invoke()
            end = clock()
            append(end - start)
            if end >= deadline:
                break
    return first_ms, [t / 1e6 for t in ticks]


def latency_stats(samples_ms) -> dict:
    """Mean, min, p50, p90, p99, max and standard deviation of latencies in milliseconds.

    Percentiles interpolate linearly between samples (numpy's default), so with few runs
    ``p99`` lies between the two slowest samples.

    Example:
        >>> latency_stats([2.0, 1.0, 3.0])["p50"]
        2.0
    """
    values = np.asarray(samples_ms, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no latency samples")
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"mean": float(values.mean()), "p50": float(p50), "p90": float(p90), "p99": float(p99),
            "min": float(values.min()), "max": float(values.max()), "std": float(values.std())}

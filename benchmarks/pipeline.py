"""Pipeline mode: time the real ``edgecls run`` loop on a video or camera, next to two references.

Three rates for one model and thread count, so the overhead of the live loop is a number:

- ``invoke_fps``: bare ``set_tensor`` + ``invoke`` on a fixed tensor (the latency loop): the ceiling.
- ``sequential_fps``: a plain decode → pre-process → invoke → post-process loop over the same
  source, with the product's own ``ImageClassifier`` (no second copy of the pre-processing).
- ``app_fps``: ``edge_app.live.app.run`` itself, headless, as ``edgecls run`` runs it.

On a Pi the camera's ISP scales frames, so there the bare invoke rate is the honest ceiling; on a
2-core host decoding shares the cores with the interpreter (docs/bench.md).
"""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np

from edge_app.runtime import ImageClassifier
from edge_app.runtime.errors import SourceError

log = logging.getLogger("edgecls")

STAGES = ("capture", "preprocess", "invoke", "postprocess")


def stage_summary(stage_ms: dict[str, list[float]]) -> dict[str, dict]:
    """``{stage: {"p50", "p90", "mean", "n"}}`` from per-frame stage times in milliseconds.

    Example:
        >>> stage_summary({"invoke": [4.0, 5.0, 6.0]})["invoke"]["p50"]
        5.0
    """
    out = {}
    for stage, values in stage_ms.items():
        values = np.asarray([v for v in values if v is not None], dtype=np.float64)
        if values.size == 0:
            continue
        p50, p90 = np.percentile(values, [50, 90])
        out[stage] = {"p50": float(p50), "p90": float(p90), "mean": float(values.mean()), "n": int(values.size)}
    return out


def _capture_source(source: str):
    if source.isdigit():
        return int(source)
    return source


def sequential_loop(clf: ImageClassifier, source: str, max_frames: int, top_k: int = 1) -> dict:
    """Decode → pre-process → invoke → post-process, one frame after the other, timed per stage.

    Uses OpenCV's ``VideoCapture`` (a video file, a camera index or a URL). The first invoke is
    made before timing so this reference, like the bare invoke rate, excludes the one-off cost.

    Example:
        >>> sequential_loop(ImageClassifier("model.tflite", num_threads=2), "clip.mp4", 100)["fps"]
    """
    import cv2

    capture = cv2.VideoCapture(_capture_source(source))
    if not capture.isOpened():
        raise SourceError(f"cannot open --pipeline {source}; pass a readable video file, a camera index or a URL")
    clf.invoke()
    stage_ms: dict[str, list[float]] = {s: [] for s in STAGES}
    clock = time.perf_counter_ns
    frames = 0
    try:
        start = clock()
        while frames < max_frames:
            t0 = clock()
            ok, frame = capture.read()
            if not ok:
                break
            t1 = clock()
            clf.set_input(frame, image_order="BGR")
            t2 = clock()
            clf.invoke()
            t3 = clock()
            clf.top(clf.scores(), top_k)
            t4 = clock()
            for stage, a, b in zip(STAGES, (t0, t1, t2, t3), (t1, t2, t3, t4), strict=True):
                stage_ms[stage].append((b - a) / 1e6)
            frames += 1
        seconds = (clock() - start) / 1e9
    finally:
        capture.release()
    if frames == 0:
        raise SourceError(f"--pipeline {source} gave no frames; is it an empty or unreadable video?")
    return {"frames": frames, "seconds": seconds, "fps": frames / seconds, "stages": stage_summary(stage_ms)}


def app_loop(model: str, source: str, threads: int, max_frames: int, device: str = "cpu",
             labels: str | None = None, mean=None, std=None) -> dict:
    """Run the real live app (``edge_app.live.app.run``) headless on ``source`` and summarize its :class:`RunStats`.

    Example:
        >>> app_loop("model.tflite", "clip.mp4", threads=2, max_frames=100)["fps"]
    """
    try:
        from edge_app.live.app import AppConfig, run
    except ImportError as e:
        raise SourceError(f"pipeline mode needs the live app (edge_app.live.app: AppConfig, run), which did not "
                          f"import: {e}. Reinstall edgecls, or bench without --pipeline") from e
    extra = {}
    if mean is not None or std is not None:
        names = {f.name for f in dataclasses.fields(AppConfig)}
        # One value per channel when they differ; the app's flags take one number for all three.
        extra = {k: (v[0] if v is not None and len(set(v)) == 1 else v)
                 for k, v in (("mean", mean), ("std", std)) if k in names}
    config = AppConfig(model=model, labels=labels, source=source, device=device, num_threads=threads,
                       display=False, max_frames=max_frames, **extra)
    stats = run(config)
    stage_ms = {k: list(v) for k, v in (stats.stage_ms or {}).items()}
    return {"frames": int(stats.frames), "seconds": float(stats.seconds), "fps": float(stats.fps),
            "stages": stage_summary(stage_ms)}


def measure_pipeline(model: str, source: str, threads: int, max_frames: int, device: str = "cpu",
                     labels: str | None = None, mean=None, std=None, invoke_fps: float | None = None) -> dict:
    """The three rates and the per-stage times for one model and thread count (see the module docstring).

    Example:
        >>> measure_pipeline("model.tflite", "clip.mp4", threads=2, max_frames=100, invoke_fps=250.0)["app_vs_invoke"]
    """
    sequential = None
    if source == "picamera" or source.startswith("picamera:"):
        # OpenCV cannot open the Pi camera; there the ISP scales frames and the bare invoke rate is the ceiling.
        log.info("no plain OpenCV reference loop for %s: compare the app with the bare invoke rate", source)
    else:
        clf = ImageClassifier(model, labels=labels, device=device, num_threads=threads, mean=mean, std=std)
        sequential = sequential_loop(clf, source, max_frames)
        del clf
    app = app_loop(model, source, threads, max_frames, device, labels, mean, std)
    result = {
        "model": model, "source": source, "threads": threads, "device": device,
        "invoke_fps": invoke_fps, "sequential": sequential, "app": app,
        "sequential_fps": sequential and sequential["fps"], "app_fps": app["fps"],
        "app_vs_sequential": app["fps"] / sequential["fps"] if sequential else None,
        "app_vs_invoke": app["fps"] / invoke_fps if invoke_fps else None,
    }
    return result

"""The live loop: one frame at a time from a feed, through the classifier, to the sinks."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np

from edge_app.live.config import AppConfig
from edge_app.runtime.errors import Interrupted

log = logging.getLogger("edgecls")

STAGES = ("capture", "preprocess", "invoke", "postprocess")
HEARTBEAT_S = 60.0
STAGE_HISTORY = 20_000  # per-frame stage times kept (the latest): bounded for months-long runs


@dataclass
class RunStats:
    """What a run did. ``stage_ms`` holds per-frame times (the latest 20,000 frames) for
    ``capture`` (waiting for a frame), ``preprocess``, ``invoke``, ``postprocess`` (scores,
    smoothing, top-k and the outputs)."""

    frames: int
    seconds: float
    fps: float
    stage_ms: dict[str, list[float]]
    device: dict
    stopped: str = "end"
    labels: dict[str, int] = field(default_factory=dict)
    reopens: int = 0
    dropped: int = 0


def preparer(current_spec, depth: int):
    """Pre-processing for the decode thread, into a ring of preallocated input tensors.

    ``current_spec()`` is the running model's input spec: after a swap, frames are prepared for
    the new model (the loop redoes the few already queued for the old one). ``depth + 2`` slots:
    the queue's, the one being filled, the one being invoked.
    """
    from edge_app.runtime import preprocess

    ring = {"spec": None, "slots": []}
    counter = iter(range(1 << 62))

    def prepare(frame) -> None:
        started = time.perf_counter()
        spec = current_spec()
        if spec is not ring["spec"]:  # new buffers: the old ones may still be in the queue
            ring["spec"], ring["slots"] = spec, [spec.new_buffer() for _ in range(depth + 2)]
        frame.tensor = preprocess(frame.image, spec, out=ring["slots"][next(counter) % (depth + 2)],
                                  image_order=frame.order)
        frame.spec = spec
        frame.preprocess_ms = (time.perf_counter() - started) * 1000

    return prepare


def classify_frames(config: AppConfig, clf, feed, sinks: list, device: dict, stop: threading.Event,
                    swapper=None) -> RunStats:
    """Classify until the feed ends or a stop; ``swapper`` (a :class:`~edge_app.live.swap.ModelSwapper`)
    hands over a new model, switched to between two frames."""
    from edge_app.frames.sinks import UNCERTAIN, UNKNOWN, Result, StopRequested
    from edge_app.frames.smoothing import RateMeter, Smoother
    from edge_app.runtime import preprocess
    from edge_app.runtime.device import cpu_temperature_c

    live_input = clf.spec.new_buffer()
    # Field collection judges a frame by its top two (and keeps the top five beside it).
    ranked = max(config.top_k, 5) if config.collect else config.top_k
    smoother, meter = Smoother(config.smooth, clf.num_classes), RateMeter()
    # Novelty is smoothed over the same frames, on its own: averaged class scores never hide an unknown scene.
    novelty_smoother = Smoother(config.smooth, 1)
    stage_ms = {stage: deque(maxlen=STAGE_HISTORY) for stage in STAGES}
    counts: Counter = Counter()
    frames, reopens, shown = 0, 0, None
    started = time.monotonic()
    deadline = None if config.duration is None else started + config.duration
    stopped = "end"
    perf = time.perf_counter
    heartbeat = perf()
    try:
        while True:
            if config.max_frames is not None and frames >= config.max_frames:
                stopped = "max_frames"
                break
            if deadline is not None and time.monotonic() >= deadline:
                stopped = "duration"
                break
            if stop.is_set():
                stopped = "stopped"
                break
            if swapper is not None and swapper.take() is not None:
                clf, live_input, smoother = _swap(clf, swapper, sinks, config)
                novelty_smoother.reset()
            t0 = perf()
            try:
                # Bounded waits: a camera that is reconnecting must not hide --duration or stop.
                frame = feed.get(timeout=0.5 if deadline is None else max(0.01, min(0.5, deadline - time.monotonic())))
            except queue.Empty:
                continue
            if frame is None:
                break
            t1 = perf()
            if swapper is not None:
                swapper.latest = frame
            if frame.tensor is None or frame.spec is not clf.spec:
                preprocess(frame.image, clf.spec, out=live_input, image_order=frame.order)
                tensor, preprocess_ms = live_input, (perf() - t1) * 1000
            else:
                tensor, preprocess_ms = frame.tensor, frame.preprocess_ms
            t2 = perf()
            clf.set_tensor(tensor)
            clf.invoke()
            t3 = perf()
            if feed.reopens != reopens:
                reopens = feed.reopens
                smoother.reset()
                novelty_smoother.reset()
            scores = smoother.update(clf.scores())
            top = clf.top(scores, ranked)
            best = top[0]
            novelty = clf.novelty()
            if novelty is not None:
                novelty = float(novelty_smoother.update(np.float32([novelty]))[0])
            label = UNKNOWN if clf.is_unknown(novelty) else best.label if best.score >= config.threshold else UNCERTAIN
            now = time.time()
            result = Result(frame=frame.index, t=now, label=label, score=best.score,
                            top_k=[(c.label, c.score) for c in top[:config.top_k]],
                            latency_ms=(now - frame.t) * 1000, fps=meter.tick(), file=frame.file,
                            ranked=[(c.label, c.score) for c in top] if ranked > config.top_k else None,
                            novelty=novelty, invoke_ms=(t3 - t2) * 1000, embedding=clf.embedding())
            for sink in sinks:
                sink.update(frame, result)
            frames += 1
            counts[label] += 1
            if label != shown:
                shown = label
                log.info("frame %d: %s %.0f%%", frame.index, label, best.score * 100)
            t4 = perf()
            if t4 - heartbeat >= HEARTBEAT_S:  # a line a minute in the journal: alive, how fast, how hot
                heartbeat = t4
                temperature = cpu_temperature_c()
                log.info("%d frames, %.1f FPS%s%s", frames, result.fps,
                         f", CPU {temperature:.0f} °C" if temperature is not None else "",
                         f", camera reopened {feed.reopens} times" if feed.reopens else "")
            stage_ms["capture"].append((t1 - t0) * 1000)
            stage_ms["preprocess"].append(preprocess_ms)
            stage_ms["invoke"].append((t3 - t2) * 1000)
            stage_ms["postprocess"].append((t4 - t3) * 1000)
    except Interrupted:
        stopped = "sigterm"
    except KeyboardInterrupt:
        stopped = "interrupt"
    except StopRequested:
        stopped = "window"
    seconds = time.monotonic() - started
    stats = RunStats(frames, seconds, frames / seconds if seconds > 0 else 0.0,
                     {stage: list(values) for stage, values in stage_ms.items()}, device, stopped,
                     dict(counts), feed.reopens, getattr(feed, "dropped", 0))
    why = {"end": "end of source", "max_frames": "--max-frames reached", "duration": "--duration reached",
           "sigterm": "stopped by SIGTERM", "interrupt": "stopped by Ctrl-C", "window": "window closed",
           "stopped": "stopped"}[stopped]
    log.info("%s: %d frames in %.1f s (%.1f FPS)%s", why, frames, seconds, stats.fps,
             f", source reopened {stats.reopens} times" if stats.reopens else "")
    return stats


def _swap(clf, swapper, sinks: list, config: AppConfig):
    """Switch to the swapper's new model: fresh input buffer and smoothing, an event to every sink."""
    from edge_app.frames.smoothing import Smoother

    new = swapper.take()
    old_sha, new_sha = clf.artifact.sha256, new.artifact.sha256
    swapper.swapped(new)
    log.info("model swapped: %s (%s, %d classes) replaces %s", new.path.name, new_sha[:12], new.num_classes,
             old_sha[:12])
    detail = f"{new.path.name} {new_sha[:12]} ({new.num_classes} classes) replaces {old_sha[:12]}"
    for sink in sinks:
        try:
            sink.event("model_swapped", detail, old_sha256=old_sha, new_sha256=new_sha, model=str(new.path),
                       num_classes=new.num_classes, labels=new.labels,
                       delegate=new.kernels.summary() if new.kernels else None)
        except Exception as e:  # one broken output must not undo a swap
            log.warning("%s: model_swapped not recorded: %s", type(sink).__name__, e)
    return new, new.spec.new_buffer(), Smoother(config.smooth, new.num_classes)

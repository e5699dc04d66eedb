"""The live loop: one frame at a time from a feed, through the classifier, to the sinks."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

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


def preparer(clf, depth: int):
    """Pre-processing for the decode thread, into a ring of preallocated input tensors.

    ``depth + 2`` slots: the queue's, the one being filled, the one being invoked.
    """
    from edge_app.runtime import preprocess

    slots = [clf.spec.new_buffer() for _ in range(depth + 2)]
    counter = iter(range(1 << 62))

    def prepare(frame) -> None:
        started = time.perf_counter()
        frame.tensor = preprocess(frame.image, clf.spec, out=slots[next(counter) % len(slots)], image_order=frame.order)
        frame.preprocess_ms = (time.perf_counter() - started) * 1000

    return prepare


def classify_frames(config: AppConfig, clf, feed, sinks: list, device: dict, stop: threading.Event) -> RunStats:
    from edge_app.live.sinks import UNCERTAIN, Result, StopRequested
    from edge_app.live.smoothing import RateMeter, Smoother
    from edge_app.runtime import preprocess
    from edge_app.runtime.device import cpu_temperature_c

    live_input = clf.spec.new_buffer()
    smoother, meter = Smoother(config.smooth, clf.num_classes), RateMeter()
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
            t0 = perf()
            try:
                # Bounded waits: a camera that is reconnecting must not hide --duration or stop.
                frame = feed.get(timeout=0.5 if deadline is None else max(0.01, min(0.5, deadline - time.monotonic())))
            except queue.Empty:
                continue
            if frame is None:
                break
            t1 = perf()
            if frame.tensor is None:
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
            scores = smoother.update(clf.scores())
            top = clf.top(scores, config.top_k)
            best = top[0]
            label = best.label if best.score >= config.threshold else UNCERTAIN
            now = time.time()
            result = Result(frame.index, now, label, best.score, [(c.label, c.score) for c in top],
                            (now - frame.t) * 1000, meter.tick(), frame.file)
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

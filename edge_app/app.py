"""``edgecls run``: the live classifier, from a camera, stream, video or folder to a label.

One interpreter and one preallocated input tensor for the whole run. File sources are decoded
and pre-processed one frame ahead on a second thread (OpenCV and LiteRT both release the GIL);
live sources are read by a capture thread that keeps only the newest frame and reopens a camera
that vanishes. Results go to a JSONL log, a window, a kiosk web page and saved evidence frames.
SIGTERM (systemd stopping the service) and Ctrl-C end the run cleanly, logs flushed, exit 0.

Example:
    >>> stats = run(AppConfig("leaf.tflite", source="field.avi", log="field.jsonl"))
    >>> stats.fps
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import queue
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from edge_app.errors import EdgeclsError, Interrupted

log = logging.getLogger("edgecls")

STAGES = ("capture", "preprocess", "invoke", "postprocess")
HEARTBEAT_S = 60.0
STAGE_HISTORY = 20_000  # per-frame stage times kept (the latest): bounded for months-long runs


@dataclass(frozen=True)
class AppConfig:
    """Everything ``edgecls run`` does; fields are named like its flags. Validated on creation.

    Example:
        >>> AppConfig("model.tflite", source="picamera", web="127.0.0.1:8080", threshold=0.6, smooth=5)
    """

    model: str
    labels: str | None = None
    source: str = "0"
    device: str = "cpu"
    num_threads: int | None = None
    headless: bool = True
    display: bool = False
    web: str | None = None
    allow_remote: bool = False
    log: str | None = None
    log_max_mb: float = 10.0
    log_backups: int = 3
    threshold: float = 0.0
    smooth: int = 1
    top_k: int = 1
    max_frames: int | None = None
    duration: float | None = None
    save_frames: str | None = None
    save_when: tuple[str, ...] = ()
    save_every: float = 1.0
    save_max: int = 1000
    loop: bool = False
    fast_decode: bool = True
    queue_depth: int = 2
    web_fps: float = 10.0
    mean: float | None = None
    std: float | None = None

    def __post_init__(self):
        object.__setattr__(self, "model", str(self.model))
        object.__setattr__(self, "source", str(self.source))
        when = self.save_when.split(",") if isinstance(self.save_when, str) else self.save_when
        object.__setattr__(self, "save_when", tuple(w.strip() for w in when if w.strip()))
        problems = []
        if self.display and self.headless:
            problems.append("--display and --headless contradict each other (in Python: display=True, headless=False)")
        if not 0.0 <= self.threshold <= 1.0:
            problems.append(f"--threshold must be between 0 and 1, got {self.threshold}")
        for name, value in (("--smooth", self.smooth), ("--top-k", self.top_k), ("--save-max", self.save_max),
                            ("--queue-depth", self.queue_depth)):
            if value < 1:
                problems.append(f"{name} must be 1 or more, got {value}")
        if self.num_threads is not None and self.num_threads < 1:
            problems.append(f"--threads must be 1 or more, got {self.num_threads}")
        if self.max_frames is not None and self.max_frames < 1:
            problems.append(f"--max-frames must be 1 or more, got {self.max_frames}")
        if self.duration is not None and self.duration <= 0:
            problems.append(f"--duration must be more than 0 seconds, got {self.duration}")
        if self.log_max_mb <= 0 or self.log_backups < 0:
            problems.append("--log-max-mb must be more than 0 and --log-backups 0 or more")
        if self.save_every < 0 or self.web_fps <= 0:
            problems.append("--save-every must be 0 or more and --web-fps more than 0")
        if self.save_when and not self.save_frames:
            problems.append("--save-when needs --save-frames DIR (where to keep the frames)")
        if (self.mean is None) != (self.std is None):
            problems.append("give both --mean and --std, or neither")
        if problems:
            raise EdgeclsError("; ".join(problems))
        if self.web:
            from edge_app.web import parse_web_address

            parse_web_address(self.web, self.allow_remote)


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


def run(config: AppConfig, source=None, stop: threading.Event | None = None) -> RunStats:
    """Classify frames from ``config.source`` (or an already made ``source``) until it ends or is stopped.

    Args:
        config: the run's settings.
        source: a :class:`~edge_app.sources.FrameSource` to use instead of ``config.source``
            (tests inject fakes; integrators their own cameras).
        stop: set it (from another thread) to end the run, as SIGTERM does.

    Returns:
        :class:`RunStats`. The end of a file, ``--max-frames``, ``--duration``, SIGTERM, Ctrl-C
        and closing the window all return normally.

    Raises:
        EdgeclsError: a model, label file, source, log path or web address that does not work.
    """
    import cv2

    from edge_app.device import device_facts
    from edge_app.feeds import FileFeed, LiveFeed
    from edge_app.runtime import ImageClassifier
    from edge_app.sources import open_source

    clf = ImageClassifier(config.model, config.labels, config.device, config.num_threads, config.mean, config.std)
    device = {"runtime": clf.runtime.name, "version": clf.runtime.version,
              "delegate": "edgetpu" if config.device.startswith("edgetpu") else "cpu (XNNPACK)",
              "threads": clf.num_threads, "model": str(clf.path), **device_facts()}
    threads_before = cv2.getNumThreads()
    # OpenCV's own worker threads would fight the interpreter's for the same cores.
    cv2.setNumThreads(1)
    sinks, feed = [], None
    started = time.monotonic()
    try:
        _make_sinks(config, clf, sinks)
        src = source or open_source(config.source, clf.input_size, loop=config.loop, fast_decode=config.fast_decode,
                                    want_display=_display_wanted(config, sinks))
        if src.live:
            feed = LiveFeed(src, on_event=lambda name, detail: [s.event(name, detail) for s in sinks])
        else:
            feed = FileFeed(src, prepare=_preparer(clf, config.queue_depth), depth=config.queue_depth)
        from edge_app import __version__

        info = {"edgecls": __version__, "source": src.name, "started": round(time.time(), 3), **device, "input": clf.describe()["input"],
                "num_classes": clf.num_classes, "threshold": config.threshold, "smooth": config.smooth,
                "top_k": config.top_k}
        try:
            feed.start()  # an RTSP camera may take seconds to answer: stopping meanwhile is still clean
        except KeyboardInterrupt as e:
            stopped = "sigterm" if isinstance(e, Interrupted) else "interrupt"
            log.info("stopped while opening %s", src.name)
            return RunStats(0, time.monotonic() - started, 0.0, {s: [] for s in STAGES}, device, stopped)
        for sink in sinks:
            sink.start(info)
        log.info("classifying %s with %s (%s, %d threads)", src.name, clf.path.name, device["delegate"],
                 clf.num_threads)
        return _loop(config, clf, feed, sinks, device, stop or threading.Event())
    finally:
        with _sigterm_deferred():
            if feed is not None:
                feed.stop()
            for sink in reversed(sinks):
                try:
                    sink.close()
                except Exception as e:  # one broken output must not keep the log from closing
                    log.warning("closing %s: %s", type(sink).__name__, e)
            cv2.setNumThreads(threads_before)


def _make_sinks(config: AppConfig, clf, sinks: list) -> None:
    """Open the outputs into ``sinks`` one by one, so those made before a failure still get closed."""
    from edge_app.sinks import UNCERTAIN, FrameSaver, JsonlLog, OverlayWindow

    if config.web:
        from edge_app.web import WebView, parse_web_address

        host, port = parse_web_address(config.web, config.allow_remote)
        sinks.append(WebView(host, port, max_fps=config.web_fps))
    if config.log:
        sinks.append(JsonlLog(config.log, int(config.log_max_mb * 1_000_000), config.log_backups, config.top_k > 1))
    if config.save_frames:
        unknown = [w for w in config.save_when if w not in clf.labels and w != UNCERTAIN]
        if unknown:
            import difflib

            hints = {w: difflib.get_close_matches(w, clf.labels, 1) for w in unknown}
            said = ", ".join(f"{w!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for w, h in hints.items())
            raise EdgeclsError(f"--save-when {said}: not a label of {clf.path.name}; use its labels "
                               f"(or '{UNCERTAIN}' for frames below --threshold)")
        sinks.append(FrameSaver(config.save_frames, config.save_when, config.save_every, config.save_max))
    if config.display:
        sinks.append(OverlayWindow(f"edgecls - {clf.path.name}"))


def _display_wanted(config: AppConfig, sinks: list):
    """Whether a camera should also deliver its display-sized frame: always for a window or saved
    evidence, for the web view only while someone is watching."""
    if config.display or config.save_frames:
        return True
    views = [s for s in sinks if hasattr(s, "viewers")]
    return (lambda: any(v.viewers for v in views)) if views else False


def _preparer(clf, depth: int):
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


def _loop(config: AppConfig, clf, feed, sinks: list, device: dict, stop: threading.Event) -> RunStats:
    from edge_app.device import cpu_temperature_c
    from edge_app.runtime import preprocess
    from edge_app.sinks import UNCERTAIN, Result, StopRequested
    from edge_app.smoothing import RateMeter, Smoother

    interpreter, input_index = clf.interpreter, clf.input_detail["index"]
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
            interpreter.set_tensor(input_index, tensor)
            interpreter.invoke()
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
                            (now - frame.t) * 1000, meter.tick())
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


@contextlib.contextmanager
def _sigterm_deferred():
    """Hold a second SIGTERM until the logs are closed (systemd sends one, then waits)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if pending and callable(previous):
            previous(signal.SIGTERM, None)


EPILOG = """examples:
  edgecls run leaf.tflite --source picamera --web 127.0.0.1:8080 --threshold 0.6 --smooth 5
  edgecls run leaf.tflite --source 0 --display                          # USB camera, a window
  edgecls run leaf.tflite --source field.avi --log field.jsonl          # every frame of a video
  edgecls run leaf.tflite --source rtsp://user:pass@10.0.0.5/stream --headless --log /var/log/edgecls/run.jsonl
  edgecls run leaf.tflite --source photos/ --save-frames evidence/ --save-when late_blight,uncertain
  edgecls run model_int8_edgetpu.tflite --device edgetpu --source picamera

--log writes one JSON object per line: first {"header": {...device facts...}}, then per frame
{"frame", "t", "label", "score", "latency_ms", "fps"}, and {"event": ...} when a camera drops out.
SIGTERM and Ctrl-C stop cleanly (exit 0) with the log flushed."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("model", help="a .tflite model or a run directory")
    parser.add_argument("--labels", metavar="FILE", help="label file; None: labels embedded in the model, or labels.txt beside it")
    parser.add_argument("--source", default="0", help="picamera[:N], a camera index, a video file, an image folder, "
                        "or an rtsp:// / http:// URL")
    parser.add_argument("--device", default="cpu", help="cpu, edgetpu, edgetpu:usb, edgetpu:pci:0")
    parser.add_argument("--threads", dest="num_threads", type=int, metavar="N", help="interpreter threads; None: all cores, at most 4")
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--headless", action="store_true", help="no window (what happens without --display; for services)")
    out.add_argument("--display", action="store_true", help="a window with label, score and FPS (needs a desktop)")
    parser.add_argument("--web", metavar="HOST:PORT", help="kiosk page, MJPEG view and /status JSON, e.g. 127.0.0.1:8080")
    parser.add_argument("--allow-remote", action="store_true", help="let --web listen on a non-local address")
    parser.add_argument("--web-fps", type=float, default=10.0, metavar="FPS", help="frames per second sent to web viewers, at most")
    parser.add_argument("--log", metavar="FILE.jsonl", help="JSON-lines log: a header line, then one line per frame; rotated by size")
    parser.add_argument("--log-max-mb", type=float, default=10.0, metavar="MB", help="rotate the log at this size")
    parser.add_argument("--log-backups", type=int, default=3, metavar="N", help="rotated logs kept (FILE.1, FILE.2, ...)")
    parser.add_argument("--threshold", type=float, default=0.0, metavar="P", help="below this top score the label is 'uncertain'")
    parser.add_argument("--smooth", type=int, default=1, metavar="N", help="average scores over the last N frames (1: off)")
    parser.add_argument("--top-k", type=int, default=1, metavar="K", help="classes per frame in the log and web view")
    parser.add_argument("--max-frames", type=int, metavar="N", help="stop after N classified frames")
    parser.add_argument("--duration", type=float, metavar="SECONDS", help="stop after this long")
    parser.add_argument("--loop", action="store_true", help="start a video or folder over at its end")
    parser.add_argument("--save-frames", metavar="DIR", help="keep JPEGs of frames as evidence")
    parser.add_argument("--save-when", default="", metavar="LABEL[,LABEL]",
                        help="only frames with these labels ('uncertain' too); empty: every label")
    parser.add_argument("--save-every", type=float, default=1.0, metavar="SECONDS",
                        help="at most one saved frame per label per this many seconds")
    parser.add_argument("--save-max", type=int, default=1000, metavar="N", help="keep at most this many saved frames (oldest go)")
    parser.add_argument("--full-decode", action="store_true",
                        help="decode MJPEG video at full size, not at the smallest JPEG scale that covers the model input")
    parser.add_argument("--mean", type=float, metavar="M", help="float models without metadata: pixels become (x - mean) / std")
    parser.add_argument("--std", type=float, metavar="S", help="see --mean")


def main(args: argparse.Namespace) -> int:
    config = AppConfig(
        model=args.model, labels=args.labels, source=args.source, device=args.device, num_threads=args.num_threads,
        headless=not args.display, display=args.display, web=args.web, allow_remote=args.allow_remote,
        log=args.log, log_max_mb=args.log_max_mb, log_backups=args.log_backups, threshold=args.threshold,
        smooth=args.smooth, top_k=args.top_k, max_frames=args.max_frames, duration=args.duration,
        save_frames=args.save_frames, save_when=args.save_when, save_every=args.save_every, save_max=args.save_max,
        loop=args.loop, fast_decode=not args.full_decode, web_fps=args.web_fps, mean=args.mean, std=args.std)
    run(config)
    return 0

"""``GET /metrics`` with ``--web``: the run's Prometheus metrics, kept by a sink and served by the kiosk.

Made with ``prometheus_client`` on a registry of the run's own (two runs in one process, as tests make,
never share a counter). Per frame the loop pays one lock, two counter increments and two histogram
observations: O(1), a few microseconds (docs/prometheus.md has the measurement). Everything else (the
model's and the build's facts, FPS, temperature, throttling, the collection queue, the process) is read
when Prometheus scrapes, on the web server's worker threads. The exposition holds the same lock, so a
scrape sees every frame whole: the label counts add up to ``edgecls_frames_total`` and so does the
inference histogram's count.

``/metrics`` needs no kiosk token: it carries counts and facts about the run, never an image or a file's
content. It still answers only to the kiosk's own address (unless ``--allow-remote``), within the
server's connection limits. docs/prometheus.md lists every metric.
"""

from __future__ import annotations

import logging
import os
import platform
import threading
import time
from collections.abc import Callable

from edge_app.frames.sinks import UNCERTAIN, UNKNOWN, Result, Sink
from edge_app.frames.sources import Frame
from edge_app.runtime.device import cpu_temperature_c, throttled

log = logging.getLogger("edgecls")

# From a Coral's few milliseconds to a float model on a Raspberry Pi 3 (half a second and more).
BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0)
# No frame for this long (a camera lost, a stream stalled) reads as 0 FPS, not as the last rate measured.
STALE_S = 5.0
# Prometheus keeps every series in memory: a 1001-class model and the 965-class one swapped in after it fit;
# the labels of a model deployed with more classes than are left are counted under OTHER.
MAX_LABEL_SERIES = 2048
OTHER = "(other)"
# A model with this few classes gets a series per class (at 0) from the start: rate() then sees the first frame.
PRESET_LABELS = 100
# vcgencmd starts a process: throttling is read at most once per this long, however often Prometheus scrapes.
THROTTLED_EVERY_S = 10.0
# vcgencmd get_throttled: bits 0-3 are "now" (under-voltage, frequency capped, throttled, soft temperature limit).
THROTTLED_NOW = 0xF
# A scrape holds the frames' lock while it encodes (~1 ms): scrapes closer together than this get the same body,
# so a client hammering /metrics (it needs no token) cannot stall the live loop.
SCRAPE_REUSE_S = 1.0


def make_metrics(model: Callable[[], object], collector=None) -> Metrics | None:
    """:class:`Metrics`, or ``None`` (one warning: the kiosk runs on, ``/metrics`` says what to install)
    where ``prometheus_client`` is not installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        log.warning("--web: no /metrics, prometheus_client is not installed; pip install 'edgecls[edge]' "
                    "(or pip install prometheus_client)")
        return None
    return Metrics(model, collector)


class Metrics(Sink):
    """The run's Prometheus metrics, as a sink of the live loop; :meth:`exposition` is what ``/metrics`` sends.

    Args:
        model: the running classifier, now (``lambda: swapper.clf``); its facts are read when scraped.
        collector: the run's :class:`~edge_app.kiosk.collect.FrameCollector` with ``--collect`` (its queue of
            frames to review), else ``None``.

    Example:
        >>> metrics = Metrics(lambda: clf)
        >>> metrics.start(info); metrics.update(frame, result)
        >>> body, content_type = metrics.exposition()
    """

    def __init__(self, model: Callable[[], object], collector=None):
        from prometheus_client import (
            CollectorRegistry,
            Counter,
            Gauge,
            Histogram,
            Info,
            PlatformCollector,
            ProcessCollector,
        )

        self.model = model
        self.registry = registry = CollectorRegistry()
        self._lock = threading.Lock()  # one frame's metrics, and a scrape, whole
        self._frames = Counter("edgecls_frames", "Frames classified.", registry=registry)
        self._labels = Counter("edgecls_label_frames", "Frames classified, by the label given ('unknown': none of "
                               "the model's classes; 'uncertain': below --threshold).", ["label"], registry=registry)
        self._inference = Histogram("edgecls_inference_seconds", "The interpreter's invoke time, per frame.",
                                    buckets=BUCKETS_S, registry=registry)
        self._latency = Histogram("edgecls_frame_latency_seconds", "From a frame's capture (or decode) to its "
                                  "result, per frame.", buckets=BUCKETS_S, registry=registry)
        Gauge("edgecls_fps", f"Frames classified per second over the last second or so (0 after {STALE_S:g} s "
              "without a frame).", registry=registry).set_function(self._fps)
        Gauge("edgecls_last_frame_timestamp_seconds", "When the latest frame was classified (Unix time; 0: none "
              "yet).", registry=registry).set_function(self._last_frame_t)
        self._swaps = Counter("edgecls_model_swaps", "Models swapped in live (file replaced, SIGHUP, kiosk apply "
                              "or undo, fleet deploy).", registry=registry)
        self._rejected = Counter("edgecls_model_rejected", "Replacement models rejected (the running one stayed).",
                                 registry=registry)
        self._reopens = Counter("edgecls_source_reopens", "Times a lost camera or stream came back.",
                                registry=registry)
        self._model_info = Info("edgecls_model", "The running model.", registry=registry)
        self._build_info = Info("edgecls_build", "This edgecls, its Python and its TFLite runtime.",
                                registry=registry)
        self._facts = _Facts(collector)
        registry.register(self._facts)
        ProcessCollector(registry=registry)  # process_cpu_seconds_total, process_resident_memory_bytes ...
        PlatformCollector(registry=registry)  # python_info
        self._by_label: dict = {}
        self._latest: Result | None = None
        self._described = None  # the classifier whose facts edgecls_model_info holds
        self._scrapes: dict[str, tuple[float, bytes]] = {}  # content type -> (when, body) of the latest scrape
        self._preset([UNKNOWN, UNCERTAIN])

    # --- the live loop's side: O(1) per frame ----------------------------------------------------------------------
    def start(self, info: dict) -> None:
        from edge_app import __version__

        self._build_info.info({"version": str(info.get("edgecls") or __version__),
                               "python": str(info.get("python") or platform.python_version()),
                               "runtime": str(info.get("runtime") or ""), "runtime_version": str(info.get("version") or "")})
        self._preset(info.get("labels") or [])

    def update(self, frame: Frame, result: Result) -> None:
        with self._lock:
            self._frames.inc()
            child = self._by_label.get(result.label)
            (child if child is not None else self._child(result.label)).inc()
            if result.invoke_ms is not None:
                self._inference.observe(result.invoke_ms / 1000)
            self._latency.observe(result.latency_ms / 1000)
        self._latest = result

    def event(self, name: str, detail: str, **fields) -> None:
        if name == "model_swapped":
            self._swaps.inc()
            self._preset(fields.get("labels") or [])
        elif name == "model_rejected":
            self._rejected.inc()
        elif name == "source_reopened":
            self._reopens.inc()

    def _child(self, label: str):
        """The label's counter, made on its first frame (under the lock)."""
        key = label if len(self._by_label) < MAX_LABEL_SERIES else OTHER
        child = self._by_label.get(key)
        if child is None:
            child = self._by_label[key] = self._labels.labels(key)
        return child

    def _preset(self, labels: list[str]) -> None:
        if len(labels) <= PRESET_LABELS:
            with self._lock:
                for label in labels:
                    if label not in self._by_label:
                        self._child(label)

    def _fps(self) -> float:
        latest = self._latest
        return latest.fps if latest is not None and time.time() - latest.t < STALE_S else 0.0

    def _last_frame_t(self) -> float:
        latest = self._latest
        return 0.0 if latest is None else latest.t

    # --- the web server's side --------------------------------------------------------------------------------------
    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """What ``/metrics`` sends, and its content type: the Prometheus text format, or OpenMetrics when the
        ``Accept`` header asks for it (Prometheus does). Blocks (reads files, may run vcgencmd): off the loop."""
        from prometheus_client.exposition import choose_encoder

        try:
            encoder, content_type = choose_encoder(accept or "")
        except (TypeError, ValueError, IndexError):  # "version=junk" raises: the plain format every scraper reads
            encoder, content_type = choose_encoder("")
        now = time.monotonic()
        at, body = self._scrapes.get(content_type, (-SCRAPE_REUSE_S, b""))
        if now - at < SCRAPE_REUSE_S:
            return body, content_type
        clf = self.model()
        if clf is not None and clf is not self._described:  # a new model: hashed here, once, never on the loop
            self._model_info.info(model_facts(clf))
            self._described = clf
        self._facts.refresh()
        with self._lock:
            body = encoder(self.registry)
        self._scrapes[content_type] = (now, body)
        return body, content_type


def model_facts(clf) -> dict[str, str]:
    """``edgecls_model_info``'s labels for an :class:`~edge_app.runtime.ImageClassifier`."""
    described = clf.describe()
    height, width = described["input"]["size"][:2]
    return {"sha256": clf.artifact.sha256 or "", "model": clf.path.name, "num_classes": str(clf.num_classes),
            "input_size": f"{width}x{height}", "input_dtype": described["input"]["dtype"],
            "quant": str(clf.artifact.metadata.get("quant", "")), "device": str(clf.device),
            "unknown": "true" if clf.reference is not None else "false"}


class _Facts:
    """A custom collector: the device and the collection queue, read by :meth:`refresh` outside the metrics
    lock (a file listing, vcgencmd), yielded from what it read. A fact this machine cannot tell is left out."""

    def __init__(self, collector=None):
        self.collector = collector
        self._temperature: float | None = None
        self._throttled: tuple[float, int | None] = (-1e9, None)
        self._waiting: int | None = None

    def refresh(self) -> None:
        self._temperature = cpu_temperature_c()
        now = time.monotonic()
        if now - self._throttled[0] >= THROTTLED_EVERY_S:
            raw = throttled()
            try:
                self._throttled = (now, int(raw, 16) if raw else None)
            except ValueError:
                self._throttled = (now, None)
        if self.collector is not None:
            self._waiting = _count_waiting(self.collector.inbox)

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        if self._temperature is not None:
            yield GaugeMetricFamily("edgecls_cpu_temperature_celsius", "The CPU's temperature.",
                                    value=self._temperature)
        flags = self._throttled[1]
        if flags is not None:
            yield GaugeMetricFamily("edgecls_throttled", "1 while the Pi is under-volted, frequency-capped or "
                                    "throttled now (vcgencmd get_throttled bits 0-3), else 0.",
                                    value=1 if flags & THROTTLED_NOW else 0)
            yield GaugeMetricFamily("edgecls_throttled_flags", "vcgencmd get_throttled as a number (bits 16-19: "
                                    "the same has happened since boot).", value=flags)
        collector = self.collector
        if collector is not None:
            if self._waiting is not None:
                yield GaugeMetricFamily("edgecls_collect_waiting_frames", "Collected frames waiting for review "
                                        "(--collect DIR/inbox).", value=self._waiting)
            yield GaugeMetricFamily("edgecls_collect_paused", "1 while field collection is paused (too many "
                                    "frames wait, or the disk is full), else 0.", value=1 if collector.paused else 0)
            yield CounterMetricFamily("edgecls_collected_frames", "Frames field collection kept.",
                                      value=collector.collected)


def _count_waiting(inbox) -> int | None:
    """Frames in the inbox: one ``<id>.json`` sidecar each, as FrameCollector counts them at start."""
    try:
        with os.scandir(inbox) as entries:
            return sum(1 for entry in entries if entry.name.endswith(".json"))
    except OSError:
        return None

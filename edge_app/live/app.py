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
import os
import signal
import threading
import time
from pathlib import Path

from edge_app.live.config import AppConfig
from edge_app.live.loop import STAGES, RunStats, classify_frames, preparer
from edge_app.runtime.errors import EdgeclsError, Interrupted
from edge_app.runtime.flags import add_max_pixels, add_normalization, add_threads, add_unknown

log = logging.getLogger("edgecls")


def run(config: AppConfig, source=None, stop: threading.Event | None = None) -> RunStats:
    """Classify frames from ``config.source`` (or an already made ``source``) until it ends or is stopped.

    Args:
        config: the run's settings.
        source: a :class:`~edge_app.frames.sources.FrameSource` to use instead of ``config.source``
            (tests inject fakes; integrators their own cameras).
        stop: set it (from another thread) to end the run, as SIGTERM does.

    Returns:
        :class:`RunStats`. The end of a file, ``--max-frames``, ``--duration``, SIGTERM, Ctrl-C
        and closing the window all return normally.

    Raises:
        EdgeclsError: a model, label file, source, log path or web address that does not work.
    """
    import cv2

    from edge_app.frames.feeds import FileFeed, LiveFeed
    from edge_app.frames.sources import open_source
    from edge_app.live.swap import ModelSwapper, recover_interrupted_install
    from edge_app.runtime import ImageClassifier
    from edge_app.runtime.device import device_facts
    from edge_app.runtime.interpreter import missing_xnnpack
    from edge_app.runtime.rundir import resolve_model

    slow_kernels_said = []  # once per run, not at every swap

    def load(path, **kwargs):
        # From its bytes in memory: the file may be replaced or rewritten in place while we run (the live swap).
        loaded = ImageClassifier(path, config.labels, config.device, config.num_threads, config.mean, config.std,
                                 in_memory=True, unknown=config.unknown, **kwargs)
        why = missing_xnnpack(loaded.kernels, config.device)
        if why and not slow_kernels_said:
            slow_kernels_said.append(why)
            log.warning("%s: %s", loaded.path.name, why)
        return loaded

    recover_interrupted_install(resolve_model(config.model, config.device), load)
    clf = load(config.model)
    if clf.reference is None:
        log.debug("%s: %s", clf.path.name, "--unknown off" if not config.unknown else "no reference set: no "
                  "'unknown' (models edgecls learn writes carry one)")
    sinks, feed = [], None

    def emit(name: str, detail: str, **fields) -> None:
        for sink in list(sinks):
            try:
                sink.event(name, detail, **fields)
            except Exception as e:  # a full disk must not stop a camera thread or a swap
                log.debug("event %s not recorded by %s: %s", name, type(sink).__name__, e)

    swapper = ModelSwapper(clf, load=lambda path: load(path, embedded_labels_first=True), watch=config.watch,
                           on_event=emit)
    device = {"runtime": clf.runtime.name, "version": clf.runtime.version,
              # read back from the interpreter, not assumed: without /sys (containers, emulators) XNNPACK is gone
              "delegate": clf.kernels.summary() if clf.kernels else "unknown (the runtime does not show its nodes)",
              "kernels": clf.kernels.to_dict() if clf.kernels else None,
              "threads": clf.num_threads, "model": str(clf.path), **device_facts()}
    threads_before = cv2.getNumThreads()
    # OpenCV's own worker threads would fight the interpreter's for the same cores.
    cv2.setNumThreads(1)
    started = time.monotonic()
    hangup = _on_sighup(swapper)
    try:
        _make_sinks(config, clf, sinks, swapper, emit)
        src = source or open_source(config.source, clf.input_size, loop=config.loop, fast_decode=config.fast_decode,
                                    want_display=_display_wanted(config, sinks), max_pixels=config.max_pixels)
        if src.live:
            feed = LiveFeed(src, on_event=emit)
        else:
            feed = FileFeed(src, prepare=preparer(lambda: swapper.clf.spec, config.queue_depth),
                            depth=config.queue_depth)
        from edge_app import __version__

        info = {"edgecls": __version__, "source": src.name, "started": round(time.time(), 3), **device, "input": clf.describe()["input"],
                "num_classes": clf.num_classes, "threshold": config.threshold, "smooth": config.smooth,
                "top_k": config.top_k, "model_sha256": clf.artifact.sha256, "labels": clf.labels}
        try:
            feed.start()  # an RTSP camera may take seconds to answer: stopping meanwhile is still clean
        except KeyboardInterrupt as e:
            stopped = "sigterm" if isinstance(e, Interrupted) else "interrupt"
            log.info("stopped while opening %s", src.name)
            return RunStats(0, time.monotonic() - started, 0.0, {s: [] for s in STAGES}, device, stopped)
        for sink in sinks:
            sink.start(info)
        swapper.start()
        log.info("classifying %s with %s (%s, %d threads)%s", src.name, clf.path.name, device["delegate"],
                 clf.num_threads, "; a replaced model file is swapped in live" if config.watch else "")
        return classify_frames(config, clf, feed, sinks, device, stop or threading.Event(), swapper)
    finally:
        hangup()
        swapper.stop()
        with _sigterm_deferred():
            if feed is not None:
                feed.stop()
            for sink in reversed(sinks):
                try:
                    sink.close()
                except Exception as e:  # one broken output must not keep the log from closing
                    log.warning("closing %s: %s", type(sink).__name__, e)
            cv2.setNumThreads(threads_before)


def _make_sinks(config: AppConfig, clf, sinks: list, swapper, emit) -> None:
    """Open the outputs into ``sinks`` one by one, so those made before a failure still get closed."""
    from edge_app.frames.sinks import UNCERTAIN, UNKNOWN, FrameSaver, JsonlLog, OverlayWindow

    web = collector = ha = None
    if config.web:
        from edge_app.kiosk.address import parse_web_address
        from edge_app.kiosk.server import WebView

        host, port = parse_web_address(config.web, config.allow_remote)
        token = _kiosk_token(config) if config.learn else None
        web = WebView(host, port, max_fps=config.web_fps, allow_remote=config.allow_remote, token=token,
                      public_view=config.public_view, lang=config.lang)
        web.model = lambda: swapper.clf  # its class cards, after every swap
        sinks.append(web)
        if config.learn and config.allow_remote:
            log.warning("--allow-remote with --learn: any machine that can reach %s may try the kiosk's actions; "
                        "only the token stops them (the Host checks are off). Keep the token secret, and the "
                        "port behind a firewall or an SSH tunnel", web.url)
        if token and not config.token_file:
            log.info("kiosk token (for the field loop: its actions and pages): %s  open %s#token=%s", token, web.url, token)
    if config.mqtt:
        from edge_app.link.mqtt import MqttLink

        def install(data: bytes, origin: str) -> tuple[bool, str, str | None]:
            outcome = swapper.install(data, f"deploy from {origin}")
            return outcome.accepted, outcome.reason, outcome.sha256

        if config.ha_discovery is not None:
            from edge_app.link.ha_discovery import HaDiscovery

            ha = HaDiscovery(config.ha_discovery, image=bool(config.collect))
        sinks.append(MqttLink(config.mqtt, config.fleet_id, ca_file=config.mqtt_ca, trust=config.trust,
                              installer=install, ha_discovery=ha, kept_model=swapper.kept_model,
                              status_every_s=config.status_every, field_folder=config.collect))
    if config.collect:
        from edge_app.kiosk.collect import FrameCollector

        collector = FrameCollector(config.collect_config(), model_sha256=lambda: swapper.sha256, on_event=emit,
                                   on_saved=ha.offer_frame if ha is not None else None)
        sinks.append(collector)
        if config.learn:
            from edge_app.kiosk.field import FieldLearning

            web.field = FieldLearning(collector, swapper)
    if web is not None:
        from edge_app.kiosk.metrics import make_metrics

        web.metrics = make_metrics(lambda: swapper.clf, collector)
        if web.metrics is not None:
            sinks.append(web.metrics)
    if config.log:
        sinks.append(JsonlLog(config.log, int(config.log_max_mb * 1_000_000), config.log_backups, config.top_k > 1))
    if config.save_frames:
        strange = [w for w in config.save_when if w not in clf.labels and w not in (UNCERTAIN, UNKNOWN)]
        if strange:
            import difflib

            hints = {w: difflib.get_close_matches(w, clf.labels, 1) for w in strange}
            said = ", ".join(f"{w!r}" + (f" (did you mean {h[0]!r}?)" if h else "") for w, h in hints.items())
            raise EdgeclsError(f"--save-when {said}: not a label of {clf.path.name}; use its labels "
                               f"(or '{UNCERTAIN}' for frames below --threshold, '{UNKNOWN}' for none of its classes)")
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


def _kiosk_token(config: AppConfig) -> str:
    """The token state-changing kiosk requests need: from ``--token-file`` (made, mode 0600, when missing), else new."""
    import secrets

    if not config.token_file:
        return secrets.token_urlsafe(18)
    path = Path(config.token_file)
    try:
        if not path.exists():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_urlsafe(18) + "\n")
            log.info("--token-file %s: a new kiosk token was written there", path)
        token = path.read_text().strip()
    except OSError as e:
        raise EdgeclsError(f"--token-file {path}: {e.strerror}; give a readable file, or a new path to create") from e
    if len(token) < 16:
        raise EdgeclsError(f"--token-file {path}: the token is shorter than 16 characters; put a longer one in it")
    return token


def _on_sighup(swapper):
    """SIGHUP (``systemctl reload``) loads the model file again; returns the undo."""
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: swapper.request("SIGHUP"))
    return lambda: signal.signal(signal.SIGHUP, previous)


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
  edgecls run leaf.tflite --source picamera --web 127.0.0.1:8080 --collect /var/lib/edgecls/field --learn
  edgecls run leaf.tflite --source picamera --mqtt mqtts://kiosk3@broker.lan --mqtt-ca ca.crt \
      --device-id kiosk-03 --trust fleet.key.pub       # status, results, events; signed deploys

Replacing the model file (write a temporary file and rename it over MODEL) or SIGHUP swaps the
new model in between two frames once it loads, has labels that fit and runs on the latest frame;
otherwise it is rejected and the running model stays. --collect DIR keeps frames the model was
unsure of in DIR/inbox; with --learn the kiosk page labels them (DIR/labelled/<class>/, a
dataset edgecls learn and edgecls train read), relabels or sends back labelled frames, teaches new
classes from the camera, applies (learns and swaps live) and undoes. Kiosk actions need the token
printed at start, and so do the field loop's reads (the frames, classes and models) unless
--public-view; the live view (/, /status, /frame.jpg, /stream.mjpg) needs none. With --allow-remote
the kiosk answers to any host name: only the token protects its actions.

A model that carries a reference set (edgecls learn writes one) labels frames unlike everything it
was taught "unknown" (the page and the window say "Not something I know"); --collect keeps those
first (reason "novel"); --save-when unknown keeps them as evidence; --unknown off turns it off.

--log writes one JSON object per line: first {"header": {...device facts...}}, then per frame
{"frame", "t", "label", "score", "latency_ms", "fps"} (+ "novelty"), and {"event": ...} when a camera drops out,
a model is swapped in (model_swapped: old_sha256, new_sha256) or rejected (model_rejected: reason).
SIGTERM and Ctrl-C stop cleanly (exit 0) with the log flushed."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EPILOG
    parser.add_argument("model", help="a .tflite model or a run directory")
    parser.add_argument("--labels", metavar="FILE", help="label file; None: labels embedded in the model, or labels.txt beside it")
    parser.add_argument("--source", default="0", help="picamera[:N], a camera index, a video file, an image folder, "
                        "or an rtsp:// / http:// URL")
    parser.add_argument("--device", default="cpu", help="cpu, edgetpu, edgetpu:usb, edgetpu:pci:0")
    add_threads(parser)
    out = parser.add_mutually_exclusive_group()
    out.add_argument("--headless", action="store_true", help="no window (what happens without --display; for services)")
    out.add_argument("--display", action="store_true", help="a window with label, score and FPS (needs a desktop)")
    parser.add_argument("--web", metavar="HOST:PORT", help="kiosk page, MJPEG view and /status JSON, e.g. 127.0.0.1:8080")
    parser.add_argument("--lang", metavar="CODE", help="the kiosk page's language: en, es, fr, hi or sw (default: "
                        "the browser's); a switch on the page changes it for one viewer")
    parser.add_argument("--allow-remote", action="store_true", help="let --web listen on a non-local address "
                        "(any host name is then answered: with --learn, only the kiosk token protects its actions)")
    parser.add_argument("--web-fps", type=float, default=10.0, metavar="FPS", help="frames per second sent to web viewers, at most")
    parser.add_argument("--log", metavar="FILE.jsonl", help="JSON-lines log: a header line, then one line per frame; rotated by size")
    parser.add_argument("--log-max-mb", type=float, default=10.0, metavar="MB", help="rotate the log at this size")
    parser.add_argument("--log-backups", type=int, default=3, metavar="N", help="rotated logs kept (FILE.1, FILE.2, ...)")
    parser.add_argument("--threshold", type=float, default=0.0, metavar="P", help="below this top score the label is 'uncertain'")
    add_unknown(parser, "'unknown' for frames unlike the model's reference photos (models edgecls learn and "
                "convert write)")
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
    add_normalization(parser)
    add_max_pixels(parser)
    field = parser.add_argument_group("live model swap and field learning")
    field.add_argument("--no-watch", action="store_true",
                       help="do not swap in a replaced model file (SIGHUP still reloads it)")
    field.add_argument("--collect", metavar="DIR", help="keep unsure frames (and a few sure ones) in DIR/inbox to label")
    field.add_argument("--collect-below", type=float, default=0.5, metavar="P", help="keep frames whose top score is below P")
    field.add_argument("--collect-margin", type=float, default=0.1, metavar="M",
                       help="keep frames whose top two scores are within M")
    field.add_argument("--collect-every", type=float, default=2.0, metavar="SECONDS", help="keep at most one frame per this long")
    field.add_argument("--collect-sample-every", type=float, default=300.0, metavar="SECONDS",
                       help="also keep one confident frame per this long (to see drift)")
    field.add_argument("--collect-max", type=int, default=1000, metavar="N",
                       help="pause collecting while N frames wait for review")
    field.add_argument("--learn", action="store_true",
                       help="the kiosk page reviews, teaches, applies and undoes (needs --collect and --web)")
    field.add_argument("--token-file", metavar="FILE",
                       help="the kiosk token for --learn (made, mode 0600, when missing); default: a new one, printed")
    field.add_argument("--public-view", action="store_true",
                       help="the field loop's reads (frames to review, labelled frames, classes, models) need no "
                       "token; the live view never does. Actions always need the token")
    fleet = parser.add_argument_group("fleet (MQTT; pip install edgecls[fleet])")
    fleet.add_argument("--mqtt", metavar="URL", help="report to this broker and take signed deploys: "
                       "mqtt[s]://[user[:pass]@]host[:port] (a password may come from EDGECLS_MQTT_PASSWORD)")
    fleet.add_argument("--device-id", metavar="ID", help="this device's name in the fleet (default: the host name)")
    fleet.add_argument("--mqtt-ca", metavar="FILE", help="the CA certificate of an mqtts:// broker")
    fleet.add_argument("--status-every", type=float, default=5.0, metavar="SECONDS",
                       help="how often the retained status (what edgecls fleet status and a staged rollout read) is sent")
    fleet.add_argument("--trust", metavar="KEY.pub", help="the ed25519 public key deploys must be signed with "
                       "(edgecls fleet keygen); without it, remote deploys are refused")
    from edge_app.link.ha_discovery import DEFAULT_PREFIX

    fleet.add_argument("--ha-discovery", nargs="?", const=DEFAULT_PREFIX, metavar="PREFIX",
                       help="also appear in Home Assistant as one device (MQTT discovery, retained configs under "
                       f"PREFIX, default {DEFAULT_PREFIX}): label, confidence, unknown, FPS, latency, inference time, "
                       "temperature, throttled, model, and with --collect the newest collected frame. Needs --mqtt; write it "
                       "after MODEL or as --ha-discovery=PREFIX, e.g. edgecls run leaf.tflite --mqtt "
                       "mqtt://broker.lan --device-id kiosk-03 --ha-discovery")


def main(args: argparse.Namespace) -> int:
    run(AppConfig.from_args(args))
    return 0

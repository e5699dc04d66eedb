"""``edgecls run --mqtt URL --device-id ID``: the device's link to a fleet through an MQTT broker.

A sink like the log or the web view: status, results and events go out, signed commands come in
(topics in :mod:`edge_app.runtime.broker`). A broker that is down never slows or stops
classification: ``update()`` only stores the latest result, publishing happens on a thread of its
own, paho reconnects with back-off, results are dropped while offline and events wait in a bounded
buffer. Commands are verified and carried out on worker threads, never on paho's network thread.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from edge_app.frames.sinks.base import Result, Sink
from edge_app.frames.sources import Frame
from edge_app.link.commands import CommandDesk, Installer
from edge_app.link.pull import FieldPull
from edge_app.runtime.broker import (
    MAX_PAYLOAD_BYTES,
    BrokerUrl,
    check_device_id,
    make_client,
    parse_broker_url,
    topic,
)
from edge_app.runtime.errors import first_line

log = logging.getLogger("edgecls")


class MqttLink(Sink):
    """Status, results and events to an MQTT broker; signed model deploys and benchmarks from it.

    Args:
        url: ``mqtt[s]://[user[:password]@]host[:port]`` (a password may also come from ``EDGECLS_MQTT_PASSWORD``).
        device_id: this device's topic level, ``edgecls/<device_id>/...``.
        ca_file: the CA certificate that signed the broker's (``mqtts://``); default: the system's CAs.
        trust: the ed25519 public key (a ``KEY.pub`` path or a loaded key) that deploys must be signed with;
            ``None`` refuses every deploy and benchmark request.
        installer: ``installer(data, origin) -> (accepted, reason, sha256)`` installs verified model bytes.
        status_every_s: how often the retained status is refreshed.
        result_heartbeat_s: a result is published at least this often while frames come in, label change or not.
        result_min_interval_s: at most one result per this many seconds, however fast labels change.
        max_payload_bytes: command messages larger than this are rejected (the model is base64 in JSON).
        event_buffer: events kept while the broker is away; beyond it the oldest are dropped and counted.
        reconnect_delay_s: (first, longest) wait between reconnection attempts; it doubles in between.
        download_timeout_s: for a deploy that names a URL instead of carrying the model.
        bench_timeout_s: a remote benchmark running longer is stopped.
        ha_discovery: a :class:`~edge_app.link.ha_discovery.HaDiscovery` (or its prefix, e.g. ``"homeassistant"``):
            the device also appears in Home Assistant; ``None`` (the default) publishes nothing for it.
        kept_model: ``kept_model()`` -> the bytes of the model the last install replaced, or ``None``: what a
            signed rollback (``"previous": true``) installs.
        field_folder: the ``--collect`` folder whose ``labelled/`` photos a signed ``fleet pull`` may ask for;
            ``None`` answers every pull ``accepted: false``.

    Example:
        >>> link = MqttLink("mqtts://kiosk3:pw@broker.lan", "kiosk-03", ca_file="ca.crt",
        ...                 trust="fleet.key.pub", installer=swapper.install)
        >>> link.start({"model": "leaf.tflite", "model_sha256": "...", "labels": [...], "edgecls": "0.1.0"})
    """

    def __init__(self, url: str | BrokerUrl, device_id: str, ca_file: str | os.PathLike | None = None,
                 trust=None, installer: Installer | None = None, status_every_s: float = 5.0,
                 result_heartbeat_s: float = 30.0, *, result_min_interval_s: float = 0.5,
                 max_payload_bytes: int = MAX_PAYLOAD_BYTES, event_buffer: int = 1000,
                 reconnect_delay_s: tuple[float, float] = (1.0, 30.0), download_timeout_s: float = 60.0,
                 bench_timeout_s: float = 900.0, keepalive_s: int = 30, ha_discovery=None,
                 kept_model: Callable[[], bytes | None] | None = None, field_folder: str | os.PathLike | None = None):
        self.broker = url if isinstance(url, BrokerUrl) else parse_broker_url(url)
        self.device_id = check_device_id(device_id)
        if isinstance(trust, (str, os.PathLike)):
            from edge_app.runtime.signing import load_public_key

            trust = load_public_key(trust)
        self.trust = trust
        self.status_every_s, self.result_heartbeat_s = status_every_s, result_heartbeat_s
        self.result_min_interval_s = result_min_interval_s
        self.reconnect_delay_s, self.keepalive_s = reconnect_delay_s, keepalive_s
        self._client = make_client(self.broker, f"edgecls-{device_id}", ca_file)
        self._client.on_connect, self._client.on_disconnect = self._on_connect, self._on_disconnect
        self._client.on_connect_fail, self._client.on_message = self._on_connect_fail, self._on_message
        self._client.max_inbound_bytes = max_payload_bytes  # an oversize command is never held whole
        # Bounds paho's own queue too: a flush that hits it keeps the rest in our buffer.
        self._client.max_queued_messages_set(200)
        self._lock = threading.Lock()
        self._wake, self._stop = threading.Event(), threading.Event()
        self._connected = False
        self._events: collections.deque[dict] = collections.deque(maxlen=event_buffer)
        self._unacked: list = []  # MQTTMessageInfo of events sent and not yet confirmed by the broker
        self._stats = {"events_sent": 0, "events_acked": 0, "events_dropped": 0, "results_sent": 0,
                      "results_dropped": 0, "connects": 0, "connect_failures": 0}
        self._latest: Result | None = None
        self._frames = 0
        self._unknown = 0  # frames called "unknown" (none of the model's classes)
        self._uncertain = 0  # frames below --threshold
        self._errors = 0  # source_lost and model_rejected events: what a staged rollout's errors gate counts
        self._last_swap: dict | None = None  # the latest swap's outcome, swapped or rejected
        self._reopens = 0
        self._change_pending = False
        self._published_label: str | None = None
        self._published_result: Result | None = None
        self._result_at = -1e9
        self._status_due = True
        self._info: dict = {}
        self._model: dict = {}
        self._started = time.monotonic()
        self.field_pull = FieldPull(self.device_id, field_folder, trust, lambda kind, payload: self._client.publish(
            topic(self.device_id, kind), payload, qos=1))
        self._desk = CommandDesk(device_id, self._send_ack, trust, installer, max_payload_bytes,
                                 download_timeout_s, bench_timeout_s, kept_model=kept_model, pull=self.field_pull)
        self._threads: list[threading.Thread] = []
        self._outage_logged = False
        if isinstance(ha_discovery, str):
            from edge_app.link.ha_discovery import HaDiscovery

            ha_discovery = HaDiscovery(ha_discovery)
        self._ha = ha_discovery

    # -- the Sink calls ---------------------------------------------------------------------------------

    def start(self, info: dict) -> None:
        self._info = dict(info)
        self._model = {"model": info.get("model"), "model_sha256": info.get("model_sha256"),
                       "labels": info.get("labels")}
        if not self._model["model_sha256"] and info.get("model") and Path(str(info["model"])).is_file():
            self._model.update(model_facts(info["model"]))
        self._started = time.monotonic()
        self._set_will()
        if self._ha is not None:
            self._ha.start(self.device_id, self._version(), info.get("board") or info.get("machine"),
                           status_every_s=self.status_every_s, result_heartbeat_s=self.result_heartbeat_s,
                           wake=self._wake.set, on_birth=self._resend)
        self._client.reconnect_delay_set(*self.reconnect_delay_s)
        # connect_async + loop_start: the first attempt happens on paho's thread, so an unreachable
        # broker never delays the first frame; paho retries with back-off from then on.
        self._client.connect_async(self.broker.host, self.broker.port, self.keepalive_s)
        self._client.loop_start()
        self._desk.start()
        thread = threading.Thread(target=self._publish_loop, name="mqtt-publish", daemon=True)
        thread.start()
        self._threads.append(thread)
        log.info("mqtt: device %s on %s (deploys %s)", self.device_id, self.broker,
                 "need a signature" if self.trust is not None else "refused: no --trust")

    def update(self, frame: Frame, result: Result) -> None:
        # Called per frame from the hot loop: store, count, and wake the publisher only on a new label.
        self._latest = result
        self._frames += 1
        self._unknown += result.unknown
        self._uncertain += result.uncertain
        if not self._change_pending and result.label != self._published_label:
            self._change_pending = True
            self._wake.set()

    def event(self, name: str, detail: str, **fields) -> None:
        record = {"device_id": self.device_id, "event": name, "t": round(time.time(), 3), "detail": detail, **fields}
        with self._lock:
            if len(self._events) == self._events.maxlen:
                self._stats["events_dropped"] += 1
            self._events.append(record)
            if name in ("source_lost", "model_rejected"):
                self._errors += 1
            if name in ("model_swapped", "model_rejected"):
                self._last_swap = {"outcome": "swapped" if name == "model_swapped" else "rejected",
                                   "sha256": fields.get("new_sha256" if name == "model_swapped" else "sha256"),
                                   "t": record["t"]}
                self._status_due = True
            if name == "source_reopened":
                self._reopens += 1
            if name == "model_swapped":
                for key, value in (("model", fields.get("model")), ("model_sha256", fields.get("new_sha256")),
                                   ("labels", fields.get("labels"))):
                    if value is not None:
                        self._model[key] = value
                if fields.get("delegate"):
                    self._info["delegate"] = fields["delegate"]  # read back from the new interpreter
                self._status_due = True
                self._set_will()  # takes effect at the next connection
        self._wake.set()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        self._desk.close()
        for thread in self._threads:
            thread.join(timeout=2)
        if self._connected:
            self._flush_events()
            info = self._client.publish(topic(self.device_id, "status"), self._status_json(online=False, why="stopped"),
                                        qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=3)
            except (RuntimeError, ValueError) as e:
                log.debug("mqtt: the offline status was not confirmed: %s", e)
        self._client.disconnect()
        # loop_stop joins paho's thread, which may sit in a connection attempt: bounded, it is a daemon thread.
        stopper = threading.Thread(target=self._client.loop_stop, daemon=True)
        stopper.start()
        stopper.join(timeout=5)

    @property
    def stats(self) -> dict:
        """Counts since start: ``events_sent``, ``events_acked`` (confirmed by the broker), ``events_dropped``
        (the buffer overflowed while offline), ``results_sent``, ``results_dropped``, ``connects``,
        ``connect_failures``."""
        self._count_acked()
        with self._lock:
            return dict(self._stats)

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def pending_events(self) -> int:
        """Events waiting in the buffer for the broker to come back."""
        return len(self._events)

    # -- messages ---------------------------------------------------------------------------------------

    def _status(self, online: bool, why: str | None = None) -> dict:
        from edge_app.runtime.device import cpu_temperature_c, throttled

        latest = self._latest
        # No frame for a while (camera lost, stream stalled): 0 FPS, not the last rate measured.
        fresh = latest is not None and time.time() - latest.t < max(5.0, 2 * self.status_every_s)
        status = {"device_id": self.device_id, "online": online, "version": self._version(),
                  **self._model, "fps": round(latest.fps, 1) if fresh else 0.0, "frames": self._frames,
                  "unknown_frames": self._unknown, "uncertain_frames": self._uncertain, "errors": self._errors,
                  "last_swap": self._last_swap,
                  "swap_failed": self._last_swap is not None and self._last_swap["outcome"] == "rejected",
                  "uptime_s": round(time.monotonic() - self._started, 1), "reopens": self._reopens,
                  "temperature_c": cpu_temperature_c(), "throttled": throttled(), "t": round(time.time(), 3),
                  "hostname": self._info.get("hostname"), "source": self._info.get("source"),
                  "delegate": self._info.get("delegate"),
                  "trust_key": self._trust_id(), "events_dropped": self._stats["events_dropped"]}
        if why:
            status["reason"] = why
        return status

    def _status_json(self, online: bool, why: str | None = None) -> str:
        return json.dumps(self._status(online, why), default=str)

    def _version(self) -> str:
        from edge_app import __version__

        return self._info.get("edgecls") or __version__

    def _trust_id(self) -> str | None:
        if self.trust is None:
            return None
        from edge_app.runtime.signing import key_id

        return key_id(self.trust)

    def _set_will(self) -> None:
        # The broker publishes this when the device vanishes (power cut, kill -9): no "t", nobody knows when.
        will = {"device_id": self.device_id, "online": False, "version": self._version(), **self._model,
                "reason": "connection lost (last will)"}
        self._client.will_set(topic(self.device_id, "status"), json.dumps(will, default=str), qos=1, retain=True)

    def _publish_loop(self) -> None:
        next_status, timeout = 0.0, 0.0
        while not self._stop.is_set():
            self._wake.wait(timeout)
            self._wake.clear()
            if self._stop.is_set():
                return
            if not self._connected:
                timeout = 1.0
                continue
            try:
                backlog = self._flush_events()
                now = time.monotonic()
                if self._status_due or now >= next_status:
                    self._status_due = False
                    next_status = now + self.status_every_s
                    # QoS 0: one lost in an outage must not be resent stale after a fresher one (QoS 1 would be).
                    self._client.publish(topic(self.device_id, "status"), self._status_json(online=True), qos=0,
                                         retain=True)
                next_result = self._maybe_publish_result(now)
                if self._ha is not None:
                    next_result = min(next_result, self._ha.pump(self._client, now))
                # A backlog that filled paho's queue goes on as soon as acks make room.
                timeout = 0.2 if backlog else max(0.05, min(next_status, next_result) - time.monotonic())
            except Exception as e:  # a bad value in an event or a paho hiccup must not end telemetry
                log.warning("mqtt: publishing failed: %s", first_line(e))
                timeout = 1.0

    def _maybe_publish_result(self, now: float) -> float:
        """Publish the latest result on a label change or heartbeat, rate-limited; returns when to look again."""
        latest = self._latest
        if latest is None or latest is self._published_result:
            self._change_pending = False
            return now + self.result_heartbeat_s
        changed = latest.label != self._published_label
        allowed_at = self._result_at + self.result_min_interval_s
        if not changed and now < self._result_at + self.result_heartbeat_s:
            self._change_pending = False
            return self._result_at + self.result_heartbeat_s
        if now < allowed_at:
            return allowed_at  # _change_pending stays set: update() will not wake us again meanwhile
        record = {"device_id": self.device_id, **latest.record(with_top_k=True)}
        if latest.invoke_ms is not None:
            record["invoke_ms"] = round(latest.invoke_ms, 2)  # the interpreter's part of latency_ms
        info = self._client.publish(topic(self.device_id, "result"), json.dumps(record), qos=0)
        self._stats["results_sent" if info.rc == 0 else "results_dropped"] += 1
        self._published_result, self._published_label, self._result_at = latest, latest.label, now
        self._change_pending = False
        return now + self.result_heartbeat_s

    def _flush_events(self) -> bool:
        """Hand buffered events to paho (QoS 1) while connected; True when some are left for later."""
        from paho.mqtt.client import MQTT_ERR_QUEUE_SIZE

        while self._connected:
            with self._lock:
                if not self._events:
                    break
                record = self._events.popleft()
            info = self._client.publish(topic(self.device_id, "event"), json.dumps(record, default=str), qos=1)
            if info.rc == MQTT_ERR_QUEUE_SIZE:
                with self._lock:
                    self._events.appendleft(record)
                break
            # Any other code (even "no connection") leaves a QoS 1 message in paho's queue, resent on reconnect.
            with self._lock:
                self._unacked.append(info)
                self._stats["events_sent"] += 1
        self._count_acked()
        return bool(self._events)

    def _count_acked(self) -> None:
        """Move events the broker confirmed (PUBACK) from ``_unacked`` to the ``events_acked`` count."""
        with self._lock:
            waiting = [info for info in self._unacked if not info.is_published()]
            self._stats["events_acked"] += len(self._unacked) - len(waiting)
            self._unacked = waiting

    def _send_ack(self, ack: dict) -> None:
        self._client.publish(topic(self.device_id, "ack"), json.dumps(ack, default=str), qos=1)

    # -- paho callbacks (paho's network thread: quick, never raise) --------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            self._stats["connect_failures"] += 1
            log.warning("mqtt: the broker %s refused the connection: %s; check the user name and password",
                        self.broker, reason_code)
            return
        self._connected, self._outage_logged, self._status_due = True, False, True
        self._stats["connects"] += 1
        client.subscribe([(topic(self.device_id, "cmd/model"), 1), (topic(self.device_id, "cmd/bench"), 1),
                          (topic(self.device_id, "cmd/pull"), 1)])
        if self._ha is not None:
            self._ha.connected(client)
        log.info("mqtt: connected to %s", self.broker)
        self._wake.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was, self._connected = self._connected, False
        if was and not self._stop.is_set():
            self._outage_logged = True  # one warning per outage, not one per failed attempt
            log.warning("mqtt: lost the broker %s (%s); classifying on, reconnecting with back-off",
                        self.broker, reason_code)

    def _on_connect_fail(self, client, userdata) -> None:
        self._stats["connect_failures"] += 1
        if not self._outage_logged:
            self._outage_logged = True
            log.warning("mqtt: cannot reach the broker %s; classifying on, retrying with back-off", self.broker)

    def _resend(self) -> None:
        """Status and the latest result again now (Home Assistant restarted), not at the next heartbeat."""
        self._status_due, self._published_result, self._result_at = True, None, -1e9

    def _on_message(self, client, userdata, message) -> None:
        if self._ha is not None and self._ha.handles(message):
            return  # Home Assistant's birth topic, not a command
        # An oversize message arrives cut to its first kB (the broker client never held it whole): its real size.
        self._desk.submit(message.topic.rsplit("/", 1)[-1], message.payload, getattr(client, "oversize", 0))

    def __repr__(self) -> str:
        return f"MqttLink({self.broker}, {self.device_id!r})"


def model_facts(model: str | os.PathLike) -> dict:
    """``model``, ``model_sha256`` for a status, from a model file (a helper for callers building ``info``)."""
    from edge_app.runtime.signing import sha256_hex

    path = Path(model)
    return {"model": str(path), "model_sha256": sha256_hex(path.read_bytes())}

"""``edgecls run --mqtt URL --ha-discovery [PREFIX]``: the device as one Home Assistant device, by MQTT discovery.

The :class:`~edge_app.link.mqtt.MqttLink` publishes one retained config per entity (Home Assistant's
single-component form) on every connection, and again when Home Assistant's MQTT integration says it is
back (its birth message)::

    <prefix>/<component>/<node_id>/<object_id>/config     node_id: the device id; object_id: the entity

The entities read the topics the fleet already uses (:mod:`edge_app.runtime.broker`): ``edgecls/ID/status``
(retained; its ``online`` flag, set false by the last will, is every entity's availability) and
``edgecls/ID/result``; with ``--collect`` an ``image`` entity shows the newest collected frame, sent as
JPEG bytes to ``edgecls/ID/frame`` at most once per ``image_every_s``. Nothing here removes an entity: a
device that stops leaves its configs retained and Home Assistant marks its entities unavailable.

Why one config per entity rather than the device-level form (``<prefix>/device/<id>/config``, one
message with every component): Home Assistant reads the device-level form only from 2024.11 on, the
per-entity form since discovery began (the ``image`` platform since 2023.7), and each entity can be
removed on its own with an empty retained message.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from edge_app.runtime.errors import FleetError

log = logging.getLogger("edgecls")

DEFAULT_PREFIX = "homeassistant"
# Home Assistant announces itself here ("online") when its MQTT integration starts; its default, whatever
# the discovery prefix is.
BIRTH_TOPIC = "homeassistant/status"
FRAME = "frame"  # edgecls/ID/frame: the newest collected frame as JPEG bytes (not retained: a camera image)
STATUS, RESULT = "status", "result"
# Anyone who may publish on the birth topic could make every device resend its configs in a loop: a restart
# of Home Assistant is answered at most once per this long (later births within it are dropped).
BIRTH_EVERY_S = 10.0
MANUFACTURER, PRODUCT = "edgecls", "edgecls live classifier"
_NODE_ID = re.compile(r"[A-Za-z0-9_-]+")  # what Home Assistant accepts as a discovery topic level
_PREFIX = re.compile(r"[^/+#\x00-\x20]+(?:/[^/+#\x00-\x20]+)*")

_ONLINE = "{{ 'online' if value_json.online else 'offline' }}"
# The last will carries no measurements: `default(none)` renders "None", which Home Assistant reads as "unknown".
_THROTTLED = ("{% set t = value_json.throttled | default(none) %}"
              "{{ none if t is none else ('ON' if (t | int(0, 16)) % 16 else 'OFF') }}")  # bits 0-3: right now
_MODEL = "{% set m = value_json.model | default(none) %}{{ m.split('/') | last if m else none }}"
_MODEL_ATTRIBUTES = ("{{ {'sha256': value_json.model_sha256 | default(none), 'path': value_json.model | default(none),"
                     " 'classes': value_json.labels | default([], true) | length} | tojson }}")


@dataclass(frozen=True)
class Entity:
    """One Home Assistant entity: ``key`` is its object id and the end of its ``unique_id``."""

    key: str
    component: str  # sensor, binary_sensor, image
    name: str
    source: str  # STATUS, RESULT or FRAME: the edgecls topic it reads
    template: str | None = None
    options: dict = field(default_factory=dict)
    attributes: str | None = None  # a json_attributes_template over the same topic


@functools.cache
def entities() -> tuple[Entity, ...]:
    """The table: every entity a device announces, in order (the ``image`` one only with ``--collect``)."""
    from edge_app.frames.sinks.base import (
        UNKNOWN,  # here, not at import: the CLI's parser reads DEFAULT_PREFIX
    )

    return (
        Entity("label", "sensor", "Label", RESULT, "{{ value_json.label }}", {"icon": "mdi:tag-text"}),
        Entity("confidence", "sensor", "Confidence", RESULT, "{{ (value_json.score * 100) | round(1) }}",
               {"unit_of_measurement": "%", "state_class": "measurement", "suggested_display_precision": 0,
                "icon": "mdi:percent"}),
        Entity("unknown", "binary_sensor", "Unknown", RESULT,
               f"{{{{ 'ON' if value_json.label == '{UNKNOWN}' else 'OFF' }}}}", {"icon": "mdi:help-circle-outline"}),
        # From the frame's capture to its label (Result.latency_ms): what the loop hands its outputs.
        Entity("latency", "sensor", "Latency", RESULT, "{{ value_json.latency_ms | round(1) }}",
               {"device_class": "duration", "unit_of_measurement": "ms", "state_class": "measurement",
                "entity_category": "diagnostic"}),
        # The interpreter's own part of it (Result.invoke_ms): what `edgecls bench` measures.
        Entity("inference", "sensor", "Inference time", RESULT, "{{ value_json.invoke_ms | default(none) }}",
               {"device_class": "duration", "unit_of_measurement": "ms", "state_class": "measurement",
                "suggested_display_precision": 1, "entity_category": "diagnostic"}),
        Entity("fps", "sensor", "Frame rate", STATUS, "{{ value_json.fps | default(none) }}",
               {"unit_of_measurement": "fps", "state_class": "measurement", "icon": "mdi:speedometer",
                "entity_category": "diagnostic"}),
        Entity("temperature", "sensor", "CPU temperature", STATUS, "{{ value_json.temperature_c | default(none) }}",
               {"device_class": "temperature", "unit_of_measurement": "°C", "state_class": "measurement",
                "entity_category": "diagnostic"}),
        Entity("throttled", "binary_sensor", "Throttled", STATUS, _THROTTLED,
               {"device_class": "problem", "entity_category": "diagnostic"}),
        Entity("model", "sensor", "Model", STATUS, _MODEL, {"icon": "mdi:brain"}, attributes=_MODEL_ATTRIBUTES),
        Entity("frame", "image", "Collected frame", FRAME, None, {"content_type": "image/jpeg"}),
    )


def check_prefix(prefix: str, flag: str = "--ha-discovery") -> str:
    """A discovery prefix is one or more topic levels without MQTT wildcards, e.g. ``homeassistant``."""
    if not isinstance(prefix, str) or len(prefix) > 100 or not _PREFIX.fullmatch(prefix):
        raise FleetError(f"{flag} {prefix!r}: not a discovery prefix; use Home Assistant's (MQTT integration → "
                         f"Configure → discovery prefix), '{DEFAULT_PREFIX}' unless you changed it: topic levels "
                         "without '+', '#', spaces or empty levels, e.g. --ha-discovery or --ha-discovery=ha")
    return prefix


def node_id(device_id: str) -> str:
    """The device id as a discovery topic level; a ``.`` (allowed in device ids, not there) becomes ``_`` and a
    short hash keeps ``kiosk.3`` and ``kiosk_3`` apart."""
    if _NODE_ID.fullmatch(device_id):
        return device_id
    import hashlib

    digest = hashlib.sha256(device_id.encode()).hexdigest()[:8]
    return f"{re.sub(r'[^A-Za-z0-9_-]', '_', device_id)}_{digest}"


def frame_topic(device_id: str) -> str:
    """``edgecls/<device_id>/frame``: where the newest collected frame goes as JPEG bytes."""
    from edge_app.runtime.broker import ROOT

    return f"{ROOT}/{device_id}/{FRAME}"


def config_topic(prefix: str, entity: Entity, device_id: str) -> str:
    return f"{prefix}/{entity.component}/{node_id(device_id)}/{entity.key}/config"


def unique_id(device_id: str, entity: Entity) -> str:
    return f"edgecls_{device_id}_{entity.key}"


def discovery_configs(device_id: str, prefix: str = DEFAULT_PREFIX, *, version: str, hardware: str | None = None,
                      image: bool = False, status_expire_s: int = 30, result_expire_s: int = 90) -> dict:
    """``{config topic: payload}`` for every entity; the payload is ``None`` (an empty retained message, which
    removes it from Home Assistant) for the image when there is no ``--collect``.

    Example:
        >>> configs = discovery_configs("kiosk-03", version="0.1.0")
        >>> configs["homeassistant/sensor/kiosk-03/label/config"]["unique_id"]
        'edgecls_kiosk-03_label'
    """
    from edge_app.runtime.broker import topic

    device = {"identifiers": [device_id], "name": device_id, "manufacturer": MANUFACTURER, "model": PRODUCT,
              "sw_version": version}
    if hardware:
        device["hw_version"] = hardware
    status = topic(device_id, STATUS)
    sources = {STATUS: status, RESULT: topic(device_id, RESULT), FRAME: frame_topic(device_id)}
    configs: dict[str, dict | None] = {}
    for entity in entities():
        where = config_topic(prefix, entity, device_id)
        if entity.source == FRAME and not image:
            configs[where] = None
            continue
        config = {"name": entity.name, "unique_id": unique_id(device_id, entity), "device": device,
                  "origin": {"name": MANUFACTURER, "sw_version": version},
                  "availability_topic": status, "availability_template": _ONLINE,
                  "payload_available": "online", "payload_not_available": "offline", **entity.options}
        if entity.source == FRAME:
            config["image_topic"] = sources[FRAME]
        else:
            config["state_topic"], config["value_template"] = sources[entity.source], entity.template
            # Results come on a change and at least every heartbeat while frames come in; the status every
            # few seconds: a value older than a few of those is stale (a stalled camera, a wedged device).
            config["expire_after"] = result_expire_s if entity.source == RESULT else status_expire_s
        if entity.attributes:
            config["json_attributes_topic"], config["json_attributes_template"] = sources[entity.source], entity.attributes
        configs[where] = config
    return configs


class HaDiscovery:
    """What an :class:`~edge_app.link.mqtt.MqttLink` runs for ``--ha-discovery``: the retained configs, Home
    Assistant's birth message, the newest collected frame.

    Args:
        prefix: Home Assistant's discovery prefix.
        image: announce the ``image`` entity (``--collect`` is on and frames are offered with :meth:`offer_frame`).
        image_every_s: at most one frame per this many seconds; the newest offered meanwhile goes next.
        image_max_bytes: a larger JPEG is sent decoded at 1/2, 1/4 or 1/8 of its size, whichever fits first.

    Example:
        >>> ha = HaDiscovery("homeassistant", image=True)
        >>> link = MqttLink("mqtt://broker.lan", "kiosk-03", ha_discovery=ha)
        >>> collector = FrameCollector(CollectConfig("field/"), on_saved=ha.offer_frame)
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX, image: bool = False, image_every_s: float = 10.0,
                 image_max_bytes: int = 256 * 1024):
        self.prefix = check_prefix(prefix)
        self.image, self.image_every_s, self.image_max_bytes = image, image_every_s, image_max_bytes
        self.images_sent = 0
        self._configs: dict = {}
        self._configs_due = False
        self._lock = threading.Lock()
        self._jpeg: bytes | None = None
        self._image_at = -math.inf
        self._frame_topic = ""
        self._wake: Callable[[], None] = lambda: None
        self._on_birth: Callable[[], None] = lambda: None
        self._birth_at = -math.inf
        self._too_big_logged = False

    def start(self, device_id: str, version: str, hardware: str | None = None, *, status_every_s: float = 5.0,
              result_heartbeat_s: float = 30.0, wake: Callable[[], None] | None = None,
              on_birth: Callable[[], None] | None = None) -> None:
        """Build the configs for ``device_id``; ``wake`` makes the link's publisher look at :meth:`pump` soon;
        ``on_birth`` hears that Home Assistant (re)started (its entities want a state now)."""
        self._configs = discovery_configs(
            device_id, self.prefix, version=version, hardware=hardware, image=self.image,
            status_expire_s=max(30, math.ceil(6 * status_every_s)), result_expire_s=math.ceil(3 * result_heartbeat_s))
        self._frame_topic = frame_topic(device_id)
        self._wake = wake or self._wake
        self._on_birth = on_birth or self._on_birth
        log.info("mqtt: Home Assistant discovery under %s/ (%d entities)", self.prefix,
                 sum(config is not None for config in self._configs.values()))

    @property
    def configs(self) -> dict:
        return dict(self._configs)

    # -- paho's network thread ----------------------------------------------------------------------------

    def connected(self, client) -> None:
        """A (re)connection: the broker may have lost its retained messages (restarted without persistence)."""
        client.subscribe(BIRTH_TOPIC, 0)
        self._configs_due = True

    def handles(self, message) -> bool:
        """True for Home Assistant's birth/will topic (ours, not a command); ``online`` there resends the configs."""
        if message.topic != BIRTH_TOPIC:
            return False
        now = time.monotonic()
        if message.payload == b"online" and now - self._birth_at >= BIRTH_EVERY_S:
            self._birth_at = now
            self._configs_due = True
            self._on_birth()
            self._wake()
        return True

    # -- the collector's writer thread ---------------------------------------------------------------------

    def offer_frame(self, jpeg: bytes) -> None:
        """The newest collected frame (JPEG bytes); it replaces one still waiting for its turn."""
        if self.image:
            with self._lock:
                self._jpeg = jpeg
            self._wake()

    # -- the link's publisher thread -----------------------------------------------------------------------

    def pump(self, client, now: float) -> float:
        """Publish what is due; returns when there may be something again (``inf``: only after a wake)."""
        from paho.mqtt.client import MQTT_ERR_QUEUE_SIZE

        if self._configs_due:
            self._configs_due = False
            for where, config in self._configs.items():
                payload = json.dumps(config) if config is not None else b""
                if client.publish(where, payload, qos=1, retain=True).rc == MQTT_ERR_QUEUE_SIZE:
                    self._configs_due = True  # paho's queue is full of events: all again at the next look
                    return now + 1.0
        if now < self._image_at + self.image_every_s:
            return self._image_at + self.image_every_s if self._jpeg is not None else math.inf
        with self._lock:
            jpeg, self._jpeg = self._jpeg, None
        if jpeg is None:
            return math.inf
        data = self._fit(jpeg)
        if data is not None and client.publish(self._frame_topic, data, qos=0, retain=False).rc == 0:
            self.images_sent += 1
        self._image_at = now
        return math.inf

    def _fit(self, jpeg: bytes) -> bytes | None:
        """``jpeg`` when under ``image_max_bytes``, else decoded smaller (JPEG's own 1/2, 1/4, 1/8 scales) and re-encoded."""
        if len(jpeg) <= self.image_max_bytes:
            return jpeg
        import cv2
        import numpy as np

        raw = np.frombuffer(jpeg, np.uint8)
        for flag in (cv2.IMREAD_REDUCED_COLOR_2, cv2.IMREAD_REDUCED_COLOR_4, cv2.IMREAD_REDUCED_COLOR_8):
            image = cv2.imdecode(raw, flag)
            if image is None:
                break
            ok, smaller = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
            if ok and smaller.size <= self.image_max_bytes:
                return smaller.tobytes()
        if not self._too_big_logged:
            self._too_big_logged = True
            log.warning("mqtt: a collected frame (%d bytes) does not fit Home Assistant's image cap of %d bytes "
                        "even at 1/8 of its size; frames that large are not sent", len(jpeg), self.image_max_bytes)
        return None

"""``edgecls run --ha-discovery``: the device as Home Assistant sees it, through a real broker.

A raw paho subscriber reads what a real ``edgecls run`` (or a real in-process MqttLink) publishes and
checks it against Home Assistant's documented discovery schema (topics, required keys, value types);
every template is rendered, with Jinja's strict undefined, over the messages that really came on its
topic. With ``EDGECLS_HA_PYTHON`` naming a Python that has ``homeassistant`` installed (not a
dependency: homeassistant 2024.3.3 is the last release for Python 3.11), the configs also go through
Home Assistant's own discovery schemas and template engine.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from broker_support import INFO, wait_until
from support import IMAGENET_MODEL, IMAGES, REPO, free_port, run_cli, write_video

jinja2 = pytest.importorskip("jinja2", reason="rendering the templates needs jinja2 (pip install -e '.[docs]')")
from jinja2.sandbox import ImmutableSandboxedEnvironment  # noqa: E402

from edge_app.frames.sinks.base import Result  # noqa: E402
from edge_app.link.ha_discovery import HaDiscovery  # noqa: E402

JPEG_START, JPEG_END = b"\xff\xd8", b"\xff\xd9"
TOPIC_FORM = re.compile(r"(?P<component>\w+)/(?P<node>[A-Za-z0-9_-]+)/(?P<object>[A-Za-z0-9_-]+)/config")
# What Home Assistant's MQTT docs (discovery; sensor, binary_sensor and image platforms) list: required keys and
# the type of every key we may send. A key outside these is a typo Home Assistant would silently ignore.
COMMON = {"name": str, "unique_id": str, "device": dict, "origin": dict, "availability_topic": str,
          "availability_template": str, "payload_available": str, "payload_not_available": str, "icon": str,
          "entity_category": str, "json_attributes_topic": str, "json_attributes_template": str,
          "enabled_by_default": bool, "qos": int, "encoding": str}
READS = {"state_topic": str, "value_template": str, "device_class": str, "expire_after": int, "force_update": bool}
SCHEMA = {
    "sensor": ({"state_topic"}, {**COMMON, **READS, "unit_of_measurement": str, "state_class": str,
                                 "suggested_display_precision": int}),
    "binary_sensor": ({"state_topic"}, {**COMMON, **READS, "payload_on": str, "payload_off": str, "off_delay": int}),
    "image": ({"image_topic"}, {**COMMON, "image_topic": str, "content_type": str, "image_encoding": str}),
}
DEVICE_KEYS = {"identifiers": list, "name": str, "manufacturer": str, "model": str, "sw_version": str,
               "hw_version": str}
UNITS = {("sensor", "temperature"): {"°C", "°F", "K"}, ("sensor", "duration"): {"d", "h", "min", "s", "ms"},
         ("binary_sensor", "problem"): None}


class Raw:
    """Every message on ``topics`` as ``(topic, payload bytes, retained, received at)``, JSON or not."""

    def __init__(self, url: str, *topics: str):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes, bool, float]] = []
        self._lock, subscribed = threading.Lock(), threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ha-test-{free_port()}")
        self.client.on_message = lambda c, u, m: self._keep(m)
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", int(url.rsplit(":", 1)[1]))
        self.client.loop_start()
        self.client.subscribe([(t, 1) for t in topics])
        assert subscribed.wait(20), f"no SUBACK for {topics}"

    def _keep(self, m) -> None:
        with self._lock:
            self.messages.append((m.topic, bytes(m.payload), bool(m.retain), time.monotonic()))

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [payload for t, payload, _, _ in self.messages if t == topic and payload]

    def state(self, template: str, topic: str) -> str | None:
        """``template`` rendered over the newest message on ``topic``; None before any."""
        payloads = self.on(topic)
        return render(template, payloads[-1]) if payloads else None

    def configs(self) -> dict[str, dict]:
        """The newest non-empty config per discovery topic."""
        with self._lock:
            return {t: json.loads(p) for t, p, _, _ in self.messages if t.endswith("/config") and p}

    def publish(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def raw(broker):
    made = []

    def make(*topics: str) -> Raw:
        made.append(Raw(broker.url, *topics))
        return made[-1]

    yield make
    for r in made:
        r.close()


# A missing key fails here (Home Assistant would log a warning and render "").
_ENV = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)


def render(template: str, payload: bytes) -> str:
    """As Home Assistant renders an MQTT template: ``value`` the text, ``value_json`` its JSON."""
    text = payload.decode()
    try:
        value_json = json.loads(text)
    except ValueError:
        value_json = None
    return _ENV.from_string(template).render(value=text, value_json=value_json)


def check_config(topic: str, config: dict, prefix: str, device_id: str) -> str:
    """Assert one config follows the documented schema; returns its component."""
    assert topic.startswith(prefix + "/"), topic
    form = TOPIC_FORM.fullmatch(topic[len(prefix) + 1:])
    assert form and form["component"] in SCHEMA, f"{topic}: not <prefix>/<component>/<node_id>/<object_id>/config"
    component = form["component"]
    required, known = SCHEMA[component]
    assert required <= config.keys(), f"{topic}: missing {required - config.keys()}"
    assert config.keys() <= known.keys(), f"{topic}: keys Home Assistant does not know {config.keys() - known.keys()}"
    for key, value in config.items():
        assert type(value) is known[key], f"{topic}: {key}={value!r} is not a {known[key].__name__}"
        if key.endswith("_topic"):
            assert value and not set(value) & set("+#\0"), f"{topic}: {key}={value!r}"
    assert config["device"].keys() <= DEVICE_KEYS.keys() and all(
        type(v) is DEVICE_KEYS[k] for k, v in config["device"].items())
    assert config["device"]["identifiers"] == [device_id] and config["device"]["name"] == device_id
    assert {"manufacturer", "model", "sw_version"} <= config["device"].keys()
    assert isinstance(config["origin"].get("name"), str) and config["origin"].keys() <= {"name", "sw_version", "support_url"}
    assert config["unique_id"] == f"edgecls_{device_id}_{form['object']}"
    assert config.get("entity_category") in (None, "diagnostic", "config")
    assert config.get("state_class") in (None, "measurement", "total", "total_increasing")
    assert re.fullmatch(r"mdi:[a-z0-9-]+", config.get("icon", "mdi:x"))
    assert config.get("expire_after", 1) > 0 and config.get("suggested_display_precision", 0) >= 0
    if "device_class" in config:
        units = UNITS[(component, config["device_class"])]
        assert units is None or config["unit_of_measurement"] in units, config
    return component


def check_states(configs: dict[str, dict], sub: Raw, online: str = "online") -> dict[str, str]:
    """Render every template over every message on its topic; returns each entity's newest state."""
    states = {}
    for topic, config in configs.items():
        key = topic.split("/")[-2]
        if "image_topic" in config:
            frames = sub.on(config["image_topic"])
            assert frames, f"{key}: nothing on {config['image_topic']}"
            assert all(f.startswith(JPEG_START) and f.endswith(JPEG_END) for f in frames)
            continue
        payloads = sub.on(config["state_topic"])
        assert payloads, f"{key}: nothing on {config['state_topic']}"
        assert render(config["availability_template"], sub.on(config["availability_topic"])[-1]) == online
        numeric = "unit_of_measurement" in config or "state_class" in config
        for payload in payloads:
            state = render(config["value_template"], payload)
            if topic.split("/")[-4] == "binary_sensor":
                assert state in (config.get("payload_on", "ON"), config.get("payload_off", "OFF"), "None"), state
            elif numeric and state != "None":  # "None": Home Assistant's "unknown" (no thermometer here)
                float(state)
            else:
                assert 0 < len(state) <= 255, state
            if "json_attributes_template" in config:
                assert isinstance(json.loads(render(config["json_attributes_template"], payload)), dict)
        states[key] = state
    return states


@pytest.fixture
def device(tmp_path, broker):
    """``start(device_id, *extra)`` → an ``edgecls run --mqtt`` process on a looping parrot video; killed at the end."""
    model = tmp_path / "model.tflite"
    shutil.copy(IMAGENET_MODEL, model)
    video = write_video(tmp_path / "parrot.avi", [("parrot.jpg", 30)], size=(320, 240))
    procs = []

    def start(device_id: str, *extra: str) -> subprocess.Popen:
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "edgecls", "run", str(model), "--source", str(video), "--loop", "--threads", "1",
             "--mqtt", broker.url, "--device-id", device_id, *extra], cwd=REPO, stderr=subprocess.PIPE, text=True))
        return procs[-1]

    yield start, model
    for proc in procs:
        proc.kill()
        proc.wait()


def test_a_device_appears_in_home_assistant_and_goes_unavailable_when_killed(broker, raw, device, tmp_path):
    start, model = device
    sub = raw("homeassistant/#", "edgecls/#")
    field = tmp_path / "field"
    extra = ("--ha-discovery", "--collect", str(field), "--collect-below", "1.0", "--collect-every", "0.5")
    proc = start("kiosk-1", *extra)
    wait_until(lambda: len(sub.configs()) == 10 and sub.on("edgecls/kiosk-1/frame") and sub.on("edgecls/kiosk-1/result"),
               60, "10 configs, a collected frame and a result")
    configs = sub.configs()
    components = [check_config(t, c, "homeassistant", "kiosk-1") for t, c in configs.items()]
    assert sorted(components) == ["binary_sensor"] * 2 + ["image"] + ["sensor"] * 7
    assert len({c["unique_id"] for c in configs.values()}) == 10
    states = check_states(configs, sub)
    assert states["label"] == "macaw" and states["unknown"] == "OFF" and 0 < float(states["confidence"]) <= 100
    assert states["model"] == "model.tflite" and float(states["latency"]) > 0
    assert 0 < float(states["inference"]) <= float(states["latency"])
    status = sub.on("edgecls/kiosk-1/status")[-1]
    temperature = json.loads(status)["temperature_c"]
    assert render(configs["homeassistant/sensor/kiosk-1/temperature/config"]["value_template"], status) == (
        "None" if temperature is None else str(temperature))
    model_config = configs["homeassistant/sensor/kiosk-1/model/config"]
    attributes = json.loads(render(model_config["json_attributes_template"], status))
    assert Path(attributes.pop("path")).resolve() == model.resolve()
    assert attributes == {"sha256": hashlib.sha256(model.read_bytes()).hexdigest(), "classes": 1001}
    # The frame is one the collector kept, byte for byte (under the size cap it goes as written).
    kept = {p.read_bytes() for p in (field / "inbox").glob("*.jpg")}
    assert sub.on("edgecls/kiosk-1/frame")[0] in kept

    fleet = run_cli("fleet", "status", "--broker", broker.url, "--json", "--wait", "1", timeout=120)
    assert fleet.returncode == 0, fleet.stderr
    assert {s["device_id"]: s["online"] for s in json.loads(fleet.stdout)} == {"kiosk-1": True}

    proc.kill()
    proc.wait()
    available = model_config["availability_template"]
    wait_until(lambda: sub.state(available, "edgecls/kiosk-1/status") == "offline", 30, "the last will")
    will = sub.on("edgecls/kiosk-1/status")[-1]
    assert "last will" in json.loads(will)["reason"]
    for config in configs.values():  # the will has no measurements: every template still renders, to "None"
        if "value_template" in config and config["state_topic"].endswith("/status"):
            assert render(config["value_template"], will) in ("None", "model.tflite")
    later = raw("homeassistant/#")
    wait_until(lambda: len(later.configs()) == 10, 20, "the retained configs")
    assert all(retained for _, _, retained, _ in later.messages) and later.configs() == configs

    start("kiosk-1", *extra)  # the same device again: the same entities, online
    again = raw("homeassistant/#", "edgecls/kiosk-1/status")
    wait_until(lambda: again.state(available, "edgecls/kiosk-1/status") == "online", 60, "online again")
    wait_until(lambda: sum(not retained for t, _, retained, _ in again.messages if t.endswith("/config")) == 10, 20,
               "the configs published again")
    assert again.configs() == configs


def test_a_custom_prefix_and_no_discovery_without_the_flag(broker, raw, device):
    start, _ = device
    sub = raw("homeassistant/#", "ha/edge/#", "edgecls/+/status")
    start("kiosk-1", "--ha-discovery=ha/edge")
    start("kiosk-2")
    wait_until(lambda: len(sub.configs()) == 9 and {json.loads(p)["device_id"] for p in sub.on("edgecls/kiosk-1/status")
                                                    + sub.on("edgecls/kiosk-2/status")} == {"kiosk-1", "kiosk-2"},
               60, "9 configs under ha/edge and both devices online")
    time.sleep(1.0)
    assert not [t for t, _, _, _ in sub.messages if t.startswith("homeassistant/")]
    assert {t.split("/")[3] for t in sub.configs()} == {"kiosk-1"}
    for topic, config in sub.configs().items():
        check_config(topic, config, "ha/edge", "kiosk-1")
    # Without --collect there is no image entity: an empty config removes one an earlier run may have left.
    assert [p for t, p, _, _ in sub.messages if t == "ha/edge/image/kiosk-1/frame/config"] == [b""]


def test_the_link_answers_home_assistant_s_birth_and_rate_limits_frames(broker, raw, make_link, info):
    import cv2
    import numpy as np

    sub = raw("homeassistant/#", "edgecls/dev-1/#")
    ha = HaDiscovery(image=True, image_every_s=1.0, image_max_bytes=40_000)
    link = make_link(broker.url, "dev-1", status_every_s=0.5, result_heartbeat_s=30.0, ha_discovery=ha)
    link.start(info)
    for i, label in enumerate(["healthy", "unknown"]):
        link.update(None, Result(frame=i, t=time.time(), label=label, score=0.8, latency_ms=12.5, fps=20.0,
                                 invoke_ms=7.25))
        wait_until(lambda n=i + 1: len(sub.on("edgecls/dev-1/result")) == n, 10, f"result {i}")
    configs = sub.configs()
    assert len(configs) == 10
    unknown = configs["homeassistant/binary_sensor/dev-1/unknown/config"]["value_template"]
    assert [render(unknown, p) for p in sub.on("edgecls/dev-1/result")] == ["OFF", "ON"]
    throttled = configs["homeassistant/binary_sensor/dev-1/throttled/config"]["value_template"]
    flags = {"0x50005": "ON", "0x50000": "OFF", "0x0": "OFF", "0x4": "ON"}  # bits 0-3 now; 16-19 since boot
    assert {f: render(throttled, json.dumps({"throttled": f}).encode()) for f in flags} == flags

    # Home Assistant restarted: the configs and a result come again at once (not at the 30 s heartbeat),
    # and its birth message never reaches the command desk (no ack).
    sub.publish("homeassistant/status", "online")
    wait_until(lambda: len(sub.on("edgecls/dev-1/result")) == 3 and sum(
        t.endswith("/config") for t, _, _, _ in sub.messages) == 20, 5, "configs and a result after the birth")
    # A storm of births (anyone who may publish there) is answered at most once per BIRTH_EVERY_S.
    for _ in range(50):
        sub.publish("homeassistant/status", "online")
    time.sleep(1.0)
    assert sum(t.endswith("/config") for t, _, _, _ in sub.messages) == 20
    assert len(sub.on("edgecls/dev-1/result")) == 3
    assert not sub.on("edgecls/dev-1/ack")

    # The first frame goes at once; two more within the second after it: only the newer, a second later.
    photo = cv2.imread(str(IMAGES / "parrot.jpg"))
    frames = [cv2.imencode(".jpg", cv2.resize(photo, (320, 240)) // d, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes()
              for d in (1, 2, 3)]
    ha.offer_frame(frames[0])
    wait_until(lambda: sub.on("edgecls/dev-1/frame"), 10, "the first frame")
    ha.offer_frame(frames[1])
    ha.offer_frame(frames[2])
    wait_until(lambda: len(sub.on("edgecls/dev-1/frame")) == 2, 10, "two frames")
    assert sub.on("edgecls/dev-1/frame") == [frames[0], frames[2]]
    sent = [at for t, p, _, at in sub.messages if t == "edgecls/dev-1/frame"]
    assert sent[1] - sent[0] > 0.8
    # A frame over the cap goes smaller (JPEG's own 1/2, 1/4, 1/8 decoding), never whole.
    big = cv2.imencode(".jpg", cv2.resize(photo, (2560, 1920)), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    assert len(big) > 40_000
    ha.offer_frame(big)
    wait_until(lambda: len(sub.on("edgecls/dev-1/frame")) == 3, 10, "the big frame")
    small = sub.on("edgecls/dev-1/frame")[-1]
    image = cv2.imdecode(np.frombuffer(small, np.uint8), cv2.IMREAD_COLOR)
    assert len(small) <= 40_000 and image.shape[1] in (1280, 640, 320)

    # Removing the device, as docs/home-assistant.md says: an empty retained message on each config topic.
    link.close()
    for topic in configs:
        sub.publish(topic, b"", retain=True)
    later = raw("homeassistant/#")
    time.sleep(1.0)
    assert later.configs() == {}


def test_flag_errors_name_the_fix(tmp_path):
    model = tmp_path / "m.tflite"
    shutil.copy(IMAGENET_MODEL, model)
    alone = run_cli("run", model, "--ha-discovery", "--max-frames", "1", timeout=120)
    assert alone.returncode == 2 and "--ha-discovery" in alone.stderr and "--mqtt URL" in alone.stderr, alone.stderr
    wild = run_cli("run", model, "--mqtt", "mqtt://127.0.0.1:1", "--ha-discovery=home/+/x", timeout=120)
    assert wild.returncode == 2 and "not a discovery prefix" in wild.stderr, wild.stderr


HA_CHECK = r"""
import asyncio, json, sys
from homeassistant.components.mqtt import binary_sensor, image, sensor
from homeassistant.components.mqtt.discovery import MQTT_ORIGIN_INFO_SCHEMA, SUPPORTED_COMPONENTS, TOPIC_MATCHER
from homeassistant.components.mqtt.models import MqttValueTemplate
from homeassistant.core import HomeAssistant
from homeassistant.helpers.template import Template

async def main():
    given = json.load(sys.stdin)
    hass, out = HomeAssistant(given["config_dir"]), {}
    for topic, config in given["configs"].items():
        component, node_id, object_id = TOPIC_MATCHER.match(topic.removeprefix(given["prefix"] + "/")).groups()
        assert component in SUPPORTED_COMPONENTS and node_id and object_id, topic
        MQTT_ORIGIN_INFO_SCHEMA(config["origin"])
        {"sensor": sensor, "binary_sensor": binary_sensor, "image": image}[component].DISCOVERY_SCHEMA(dict(config))
        rendered = {}
        for key in ("value_template", "availability_template", "json_attributes_template"):
            if key in config:
                template = MqttValueTemplate(Template(config[key], hass), hass=hass)
                rendered[key] = [template.async_render_with_possible_json_value(p, "<error>") for p in given["payloads"]]
        out[topic] = rendered
    print(json.dumps(out))

asyncio.run(main())
"""


def test_configs_pass_home_assistant_s_own_schema(tmp_path):
    python = os.environ.get("EDGECLS_HA_PYTHON")
    if not python:
        pytest.skip("set EDGECLS_HA_PYTHON to a Python with homeassistant installed (e.g. a venv with "
                    "homeassistant==2024.3.3, the last for Python 3.11) to check with Home Assistant's own schemas")
    configs = HaDiscovery(image=True)
    configs.start("kiosk.3", "0.1.0", "Raspberry Pi 5 Model B Rev 1.0")
    status = {**INFO, "device_id": "kiosk.3", "online": True, "fps": 14.2, "temperature_c": 61.3, "throttled": "0x50005"}
    will = {k: INFO[k] for k in ("model", "model_sha256", "labels")} | {"online": False, "reason": "connection lost"}
    result = {"device_id": "kiosk.3", "frame": 7, "label": "unknown", "score": 0.41, "latency_ms": 31.27, "fps": 14.2,
              "invoke_ms": 18.04}
    payloads = [json.dumps(p) for p in (status, will, result)]
    given = {"prefix": "homeassistant", "configs": {t: c for t, c in configs.configs.items() if c},
             "payloads": payloads, "config_dir": str(tmp_path)}
    done = subprocess.run([python, "-c", HA_CHECK], input=json.dumps(given), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout)
    assert len(out) == 10 and all(t.startswith("homeassistant/") and "/kiosk_3_" in t for t in out)
    by_key = {t.split("/")[-2]: r for t, r in out.items()}
    assert by_key["label"]["availability_template"][:2] == ["online", "offline"]
    assert by_key["fps"]["value_template"][:2] == ["14.2", "None"]
    assert by_key["temperature"]["value_template"][:2] == ["61.3", "None"]
    assert by_key["throttled"]["value_template"][:2] == ["ON", "None"]
    assert by_key["model"]["value_template"][:2] == ["leaf.tflite", "leaf.tflite"]
    assert json.loads(by_key["model"]["json_attributes_template"][0]) == {
        "sha256": "ab" * 32, "path": INFO["model"], "classes": 2}
    assert by_key["unknown"]["value_template"][2] == "ON" and by_key["confidence"]["value_template"][2] == "41.0"
    assert by_key["latency"]["value_template"][2] == "31.3"
    assert by_key["inference"]["value_template"][2] == "18.04"

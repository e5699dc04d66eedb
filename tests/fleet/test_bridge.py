"""Beyond one broker: a site broker per farm, bridged to a central one by Mosquitto's own bridge.

Two real Mosquitto processes: the device (``edgecls run --mqtt``, a real live app on a looping video) connects
to the *site* broker, the host (``edgecls fleet``) to the *central* one, and the site broker's ``connection``
block (:func:`bridge_config`, the one docs/fleet.md shows) carries telemetry up and commands down. Then the
uplink is cut (the central broker stopped) for ``EDGECLS_BRIDGE_CUT_S`` seconds (5 by default; the docs report a
60 s run) while the device and a numbered probe go on publishing to the site broker; once the central broker is
back on its port, every QoS 1 message of the cut must arrive there: the site broker queued them for the bridge.
``fleet pull`` and a staged ``fleet deploy --stages`` go through the same bridge.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
from broker_support import Broker, broker_kind, free_port, wait_until
from support import BIRD_MODEL, IMAGENET_MODEL, REPO, SHARED, run_cli, stop_process, write_video

from edge_app.runtime.broker import KINDS

CUT_S = float(os.environ.get("EDGECLS_BRIDGE_CUT_S", "5"))
DEVICE = "kiosk-01"
BRIDGE = "bridge-farm-a"  # the bridge's client id on the central broker; its state is $SYS/broker/connection/ID/state


def bridge_config(central_port: int) -> list[str]:
    """The site broker's bridge to the central one: telemetry out, commands in, QoS 1 queued while the uplink is down.

    docs/fleet.md ("Beyond one broker: a site broker per farm") shows the same block with TLS and a password for the uplink.
    """
    return [
        # Per client (the bridge is one): QoS 1 messages held while it is away. 1000 by default: past it, a long cut
        # of a busy farm would drop the newest; QoS 0 (status, results) is not queued (queue_qos0_messages false).
        "max_queued_messages 100000",
        f"connection {BRIDGE.removeprefix('bridge-')}",
        f"address 127.0.0.1:{central_port}",
        f"remote_clientid {BRIDGE}",
        f"local_clientid {BRIDGE}-local",
        # false: the central broker keeps the bridge's session, and the site broker queues for it while it is away
        "cleansession false",
        "restart_timeout 1",  # reconnect every second (the test); real uplinks: a back-off such as 5 60
        "keepalive_interval 5",
        "topic edgecls/+/status out 0",
        "topic edgecls/+/result out 0",
        "topic edgecls/+/event out 1",
        "topic edgecls/+/ack out 1",
        "topic edgecls/+/pull out 1",  # fleet pull's photos
        "topic edgecls/+/cmd/# in 1",
    ]


class Tap:
    """A paho client of the test's own that keeps every message (topic, raw payload); ``persistent`` = a durable
    session (clean session false) that the broker keeps, with what it queues, while the client is away."""

    def __init__(self, port: int, client_id: str, *topics: str, persistent: bool = False):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()

        def on_message(client, userdata, message):
            with self._lock:
                self.messages.append((message.topic, bytes(message.payload)))

        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=not persistent,
                                  protocol=mqtt.MQTTv311)
        self.client.on_message = on_message
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.reconnect_delay_set(0.2, 1.0)  # back within a second of its broker
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not topics:
            return
        self.client.subscribe([(t, 1) for t in topics])
        if not subscribed.wait(20):
            pytest.fail(f"no SUBACK for {topics}")

    def bodies(self, suffix: str) -> list[dict]:
        with self._lock:
            return [json.loads(payload) for t, payload in self.messages if t.endswith(suffix)]

    def payloads(self, name: str) -> list[bytes]:
        with self._lock:
            return [payload for t, payload in self.messages if t == name]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def brokers(tmp_path_factory):
    """``(site, central)``: the central broker persistent (sessions survive its restart), the site one bridged to it."""
    kind = broker_kind()
    central = Broker(tmp_path_factory.mktemp("central"), kind, persistent=True)
    site = Broker(tmp_path_factory.mktemp("site"), kind, config=bridge_config(central.port))
    central.start()
    site.start()
    yield site, central
    site.stop()
    central.stop()


@pytest.fixture
def taps():
    made = []

    def make(*args, **kwargs) -> Tap:
        made.append(Tap(*args, **kwargs))
        return made[-1]

    yield make
    for tap in made:
        tap.close()


@pytest.fixture
def kiosk(brokers, tmp_path):
    """``start(*extra)`` → the ``edgecls run --mqtt`` process (``DEVICE``) on the site broker, on Coral's ImageNet
    model (``tmp_path/model.tflite``) and a looping parrot video, trusting ``tmp_path/fleet.key.pub`` (made here
    with ``edgecls fleet keygen``); returned once the central broker shows it online and classifying."""
    site, central = brokers
    made = fleet("keygen", tmp_path / "fleet.key")
    assert made.returncode == 0, made.stderr
    shutil.copy(IMAGENET_MODEL, tmp_path / "model.tflite")
    video = write_video(tmp_path / "parrot.avi", [("parrot.jpg", 30)], size=(320, 240))
    procs = []

    def start(*extra: str) -> subprocess.Popen:
        with open(tmp_path / "device.log", "w") as stderr:
            procs.append(subprocess.Popen(
                [sys.executable, "-m", "edgecls", "run", str(tmp_path / "model.tflite"), "--source", str(video),
                 "--loop", "--threads", "1", "--log", str(tmp_path / "run.jsonl"), "--mqtt", site.url, "--device-id",
                 DEVICE, "--trust", str(tmp_path / "fleet.key.pub"), *extra],
                cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr))
        # Seen from the host's side, through the bridge.
        wait_until(lambda: (s := central_status(central)).get("online") and s["frames"] > 0, 90,
                   f"{DEVICE} online with frames in fleet status on the central broker")
        return procs[-1]

    yield start
    for proc in procs:
        stop_process(proc)


def fleet(*args, timeout: float = 120):
    return run_cli("fleet", *map(str, args), timeout=timeout)


def central_status(central: Broker) -> dict:
    done = fleet("status", "--broker", central.url, "--json", "--wait", 1)
    assert done.returncode == 0, done.stderr
    return {s["device_id"]: s for s in json.loads(done.stdout)}.get(DEVICE, {})


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_device_behind_a_site_broker_is_seen_deployed_to_and_loses_nothing_in_an_uplink_cut(brokers, taps, kiosk,
                                                                                              tmp_path):
    site, central = brokers
    # The host's side, before anything happens: a durable session on the central broker.
    up = taps(central.port, "central-tap", "edgecls/+/event", "edgecls/+/ack", f"$SYS/broker/connection/{BRIDGE}/state",
              persistent=True)
    wait_until(lambda: b"1" in up.payloads(f"$SYS/broker/connection/{BRIDGE}/state"), 30, "the bridge to connect")
    down = taps(site.port, "site-tap", "edgecls/+/event")
    device = kiosk()
    key, model = tmp_path / "fleet.key", tmp_path / "model.tflite"
    assert central_status(central)["model_sha256"] == sha256(IMAGENET_MODEL)

    # A signed deploy from the central side: down the bridge to the device, its ack back up.
    done = fleet("deploy", BIRD_MODEL, "--to", DEVICE, "--key", key, "--broker", central.url, "--wait", 1,
                 "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    (ack,) = json.loads(done.stdout)
    assert ack["accepted"] and ack["sha256"] == sha256(BIRD_MODEL)
    assert model.read_bytes() == BIRD_MODEL.read_bytes()
    wait_until(lambda: any(e.get("event") == "model_swapped" for e in up.bodies(f"{DEVICE}/event")), 30,
               "the deploy's model_swapped event on the central broker")

    # The uplink cut: the central broker goes away; the device classifies and publishes on, to the site.
    central.stop()
    cut_at = time.time()
    staged = tmp_path / "model.tflite.new"
    shutil.copy(IMAGENET_MODEL, staged)
    os.replace(staged, model)  # a local swap during the cut: a real model_swapped event, QoS 1
    probe = taps(site.port, f"probe-{free_port()}")
    sent = 0
    while time.time() - cut_at < CUT_S:
        probe.client.publish("edgecls/probe-01/event", json.dumps({"event": "probe", "n": sent}),
                             qos=1).wait_for_publish(10)
        sent += 1
        time.sleep(0.1)
    swapped_back = [e for e in down.bodies(f"{DEVICE}/event")
                    if e.get("event") == "model_swapped" and e.get("new_sha256") == sha256(IMAGENET_MODEL)]
    assert swapped_back and swapped_back[0]["t"] >= cut_at, "the device published no event during the cut"
    assert device.poll() is None
    assert not any(e.get("new_sha256") == sha256(IMAGENET_MODEL) for e in up.bodies(f"{DEVICE}/event"))

    # The central broker back on its port: what the site broker queued arrives, none of it lost.
    central.start()
    back_at = time.time()
    wait_until(lambda: len({b["n"] for b in up.bodies("probe-01/event")}) == sent, 30 + CUT_S,
               f"all {sent} probe messages of the cut on the central broker")
    arrived_s = time.time() - back_at
    numbers = [b["n"] for b in up.bodies("probe-01/event")]
    assert list(dict.fromkeys(numbers)) == list(range(sent))  # every one, in order (QoS 1 may repeat one)
    wait_until(lambda: any(e.get("new_sha256") == sha256(IMAGENET_MODEL) for e in up.bodies(f"{DEVICE}/event")),
               30, "the device's event of the cut on the central broker")
    current = wait_until(lambda: (s := central_status(central)).get("t", 0) > back_at and s, 30,
                         "a fresh status through the bridge")
    assert current["online"] and current["model_sha256"] == sha256(IMAGENET_MODEL)
    print(f"cut {CUT_S:.0f} s: {sent} probe messages queued by the site broker, all {sent} on the central "
          f"broker {arrived_s:.1f} s after it was back ({len(numbers) - sent} repeated)")


def test_fleet_pull_and_a_staged_rollout_go_through_the_bridge(brokers, kiosk, tmp_path):
    site, central = brokers
    labelled = tmp_path / "field" / "labelled" / "macaw"
    labelled.mkdir(parents=True)
    sent = sorted((SHARED / "datasets" / "plantdoc-field" / "tomato_healthy").glob("*.jpg"))[:2]
    for photo in sent:
        shutil.copy(photo, labelled / photo.name)
    kiosk("--collect", str(tmp_path / "field"), "--status-every", "0.5")
    key = tmp_path / "fleet.key"

    pulled = fleet("pull", "--to", DEVICE, "--key", key, "--out", tmp_path / "pulled", "--broker", central.url,
                   "--wait", 1, "--json")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    got = {hashlib.sha256(f.read_bytes()).hexdigest() for f in (tmp_path / "pulled" / "macaw").glob("*.jpg")}
    assert got == {sha256(photo) for photo in sent}

    rollout = fleet("deploy", BIRD_MODEL, "--to", DEVICE, "--key", key, "--broker", central.url, "--wait", 1,
                    "--stages", "100%", "--soak", "3s", "--state", tmp_path / "rollout.json", "--json", timeout=180)
    assert rollout.returncode == 0, rollout.stdout + rollout.stderr
    report = json.loads(rollout.stdout)
    assert report["result"] == "passed"
    (stage,) = report["plan"]
    assert stage["after"][DEVICE]["model_sha256"] == sha256(BIRD_MODEL) and stage["after"][DEVICE]["frames"] > 0


def test_the_bridge_carries_every_topic_kind_the_right_way():
    """A topic kind added to the contract (edge_app/runtime/broker.py) and not to the bridge would stop at the site."""
    lines = [line.split() for line in bridge_config(1883) if line.startswith("topic ")]
    routes = {pattern.removeprefix("edgecls/+/"): direction for _, pattern, direction, _ in lines}
    for kind in KINDS:
        if kind.startswith("cmd/"):
            assert routes.get("cmd/#") == "in", kind
        else:
            assert routes.get(kind) == "out", f"edgecls/+/{kind} is not bridged out: add it to bridge_config and docs/fleet.md"

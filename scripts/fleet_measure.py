"""Measure the fleet on this machine (issue 15): what --mqtt costs the live loop, and a simulated fleet of 100.

1. FPS of ``edgecls run`` on the same 600-frame video with and without ``--mqtt`` (a local broker),
   interleaved rounds; the ratio of medians (goal: at least 0.98).
2. 100 simulated devices — real ``MqttLink`` clients, each fed results at 15 FPS with a label change every
   2 s, a QoS 1 event every 10 s and a status every 5 s (the device's defaults) — in one child process,
   for ``--seconds``; then ``edgecls fleet status --json`` must list all 100, and a subscriber must have
   every event (no QoS 1 loss). CPU seconds of the broker, of the device process, and of ``fleet status``.

    .venv/bin/python scripts/fleet_measure.py --out /tmp/fleet_measure     # about 3 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
SHARED = Path(os.environ.get("EDGECLS_SHARED", REPO.parent / "shared"))

DEVICE = r'''
import json, random, sys, time
from edge_app.link.mqtt import MqttLink
from edge_app.frames.sinks.base import Result
url, n, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
links = [MqttLink(url, f"sim-{i:03d}") for i in range(n)]
for i, link in enumerate(links):
    link.start({"model": "/opt/edgecls/leaf.tflite", "model_sha256": "ab" * 32, "labels": ["healthy", "sick"],
                "edgecls": "sim", "source": "fake", "hostname": f"sim-{i:03d}"})
print("started", flush=True)
start, frame, sent = time.monotonic(), 0, 0
next_event = {i: start + random.uniform(0, 10) for i in range(n)}
while (now := time.monotonic()) - start < seconds:
    frame += 1
    label = "healthy" if int((now - start) / 2) % 2 == 0 else "sick"
    for i, link in enumerate(links):
        link.update(None, Result(frame=frame, t=time.time(), label=label, score=0.9, fps=15.0, top_k=[(label, 0.9)]))
        if now >= next_event[i]:
            link.event("frames_collected", f"event {sent}", seq=sent)
            sent += 1
            next_event[i] += 10
    time.sleep(max(0.0, start + frame / 15 - time.monotonic()))
time.sleep(3)  # let the last events reach the broker
for link in links:
    link.close()
print(json.dumps({"events_sent": sent}), flush=True)
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(folder: Path) -> tuple[subprocess.Popen, str, str]:
    port = free_port()
    if shutil.which("mosquitto"):
        conf = folder / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                        + ("user root\n" if os.geteuid() == 0 else ""))
        argv, kind = ["mosquitto", "-c", str(conf)], "mosquitto"
    else:
        conf = folder / "amqtt.yaml"
        conf.write_text(f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\nplugins:\n"
                        "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n")
        argv, kind = [sys.executable, "-m", "amqtt.scripts.broker_script", "-c", str(conf)], "amqtt"
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, f"mqtt://127.0.0.1:{port}", kind
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the broker did not start")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fps_with_and_without(url: str, out: Path, rounds: int) -> dict:
    import cv2

    from edge_app.live.app import AppConfig, run
    from edge_app.runtime import read_image

    clip = out / "parrot.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    frame = cv2.resize(cv2.cvtColor(read_image(SHARED / "images" / "parrot.jpg"), cv2.COLOR_RGB2BGR), (320, 240))
    for _ in range(600):
        writer.write(frame)
    writer.release()
    model = SHARED / "models" / "mobilenet_v2_1.0_224_quant.tflite"
    got: dict[str, list[float]] = {"without": [], "with": []}
    for _ in range(rounds):
        for kind in ("without", "with"):
            stats = run(AppConfig(str(model), source=str(clip), num_threads=2,
                                  **({"mqtt": url, "device_id": "fps-check"} if kind == "with" else {})))
            got[kind].append(round(stats.fps, 1))
    median = {k: sorted(v)[len(v) // 2] for k, v in got.items()}
    return {"fps": got, "median": median, "ratio": round(median["with"] / median["without"], 3)}


def simulated_fleet(url: str, n: int, seconds: float, broker_pid: int) -> dict:
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    events, lock = set(), threading.Lock()

    def on_message(client, userdata, message):
        body = json.loads(message.payload)
        if message.topic.endswith("/event") and "seq" in body:
            with lock:
                events.add(body["seq"])

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="fleet-measure")
    sub.on_message = on_message
    sub.connect("127.0.0.1", int(url.rsplit(":", 1)[1]))
    sub.subscribe("edgecls/+/event", qos=1)
    sub.loop_start()
    broker_cpu = cpu_seconds(broker_pid)
    first = resource.getrusage(resource.RUSAGE_CHILDREN)
    device = subprocess.Popen([sys.executable, "-c", DEVICE, url, str(n), str(seconds)], cwd=REPO,
                              stdout=subprocess.PIPE, text=True)
    assert device.stdout.readline().strip() == "started"
    time.sleep(seconds / 2)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    status = subprocess.run([sys.executable, "-m", "edgecls", "fleet", "status", "--broker", url, "--json",
                             "--wait", "2"], cwd=REPO, capture_output=True, text=True)
    status_wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    listed = json.loads(status.stdout)
    summary = json.loads(device.stdout.readlines()[-1])
    device.wait()
    last = resource.getrusage(resource.RUSAGE_CHILDREN)

    def cpu(a, b):
        return (b.ru_utime + b.ru_stime) - (a.ru_utime + a.ru_stime)

    device_cpu = cpu(first, last) - cpu(before, after)  # children reaped in between: the device and fleet status
    time.sleep(2)
    sub.loop_stop()
    return {"devices": n, "seconds": seconds, "listed_by_fleet_status": len(listed),
            "online": sum(1 for s in listed if s.get("online")),
            "events_sent": summary["events_sent"], "events_received": len(events),
            "fleet_status_cpu_s": round(cpu(before, after), 2),
            "fleet_status_wall_s": round(status_wall, 2),
            "broker_cpu_s": round(cpu_seconds(broker_pid) - broker_cpu, 2),
            "devices_cpu_s": round(device_cpu, 2),
            "devices_cpu_share": round(device_cpu / (seconds + 3), 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/fleet_measure"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    broker, url, kind = start_broker(args.out)
    try:
        result = {"broker": kind, "mqtt_cost": fps_with_and_without(url, args.out, args.rounds),
                  "fleet": simulated_fleet(url, args.devices, args.seconds, broker.pid)}
    finally:
        os.killpg(broker.pid, signal.SIGTERM)
    (args.out / "fleet_measure.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

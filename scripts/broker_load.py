"""Load on one Mosquitto (issue 33): N simulated devices, one real connection each, and the host watching.

Each device is its own paho client (client id ``edgecls-ID``, keepalive 30 s, the same last will as
``edgecls run --mqtt``) publishing what ``edge_app/link/mqtt.py`` publishes: the retained status (QoS 0)
every 5 s, a result (QoS 0, the ``--log`` line with ``top_k``) every 1-2 s, and an event (QoS 1) every 60 s.
The clients are spread over a few worker processes, each driving its sockets from one epoll loop (a thread
per client would measure Python, not the broker). Meanwhile ``edgecls fleet watch`` runs on the host side
(its table of every device, redrawn every 5 s) and a counter subscribes to the events (QoS 1: none may be
lost). Measured over ``--seconds`` once every device is connected: PUBLISH messages/s into and out of the
broker (its ``$SYS`` counters), the broker's CPU % (``/proc/PID/stat``) and memory (VmRSS, VmHWM), the
watcher's CPU % and memory, the simulators' CPU; then ``edgecls fleet status --json`` must list every device.

A device is one socket in the broker and three file descriptors here (paho's socket pair): 1000 devices need
``ulimit -n`` of about 4000 (the script raises its soft limit up to the hard one and says so when that is short).

    ulimit -n 8192        # if `ulimit -Hn` is below 4 x devices + 256 (root, or /etc/security/limits.conf)
    .venv/bin/python scripts/broker_load.py --devices 250,500,1000 --seconds 60 --out /tmp/broker_load
"""

from __future__ import annotations

import argparse
import heapq
import json
import multiprocessing
import os
import platform
import random
import resource
import selectors
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

LABELS = ["early_blight", "late_blight", "healthy"]
# Mosquitto 2.0.11's publish/messages/received leaves retained messages out (every status): the PUBLISH
# messages in are counted by the simulators; messages/received|sent count every MQTT packet (PUBACKs too).
SYS_TOPICS = ("$SYS/broker/publish/messages/sent", "$SYS/broker/messages/received", "$SYS/broker/messages/sent",
              "$SYS/broker/clients/connected", "$SYS/broker/heap/current")
PER_WORKER = 250  # clients one worker process drives


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mem_mb(pid: int) -> dict:
    got = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            got[name] = round(int(value.split()[0]) / 1024, 1)
    return got


def raise_fd_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"{needed} file descriptors are needed (the broker's sockets and the simulators'), but the "
                         f"hard limit is {hard}: raise it (ulimit -Hn {needed}, as root or in "
                         "/etc/security/limits.conf) or simulate fewer devices")
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def start_mosquitto(folder: Path) -> tuple[subprocess.Popen, int]:
    if not shutil.which("mosquitto"):
        raise SystemExit("mosquitto is not installed: apt-get install mosquitto")
    port = free_port()
    conf = folder / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", "sys_interval 1",
             "log_dest stderr", "log_type error", "log_type warning"] + (["user root"] if os.geteuid() == 0 else [])
    conf.write_text("\n".join(lines) + "\n")
    proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=open(folder / "mosquitto.log", "ab"), start_new_session=True)
    for _ in range(300):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    raise SystemExit("mosquitto did not start; see mosquitto.log")


# -- the simulated devices (worker processes) -------------------------------------------------------------

def _status(device_id: str, started: float, frames: int, online: bool = True) -> str:
    return json.dumps({"device_id": device_id, "online": online, "version": "load", "model": "/opt/edgecls/leaf.tflite",
                       "model_sha256": "ab" * 32, "labels": LABELS, "fps": 14.8, "frames": frames,
                       "unknown_frames": 0, "uptime_s": round(time.monotonic() - started, 1), "reopens": 0,
                       "temperature_c": 55.0, "throttled": None, "t": round(time.time(), 3), "hostname": device_id,
                       "source": "picamera", "delegate": None, "trust_key": "0123456789abcdef", "events_dropped": 0})


def _result(device_id: str, frame: int) -> str:
    scores = sorted((random.random() for _ in LABELS), reverse=True)
    total = sum(scores)
    shuffled = random.sample(LABELS, len(LABELS))
    top = [{"label": label, "score": round(s / total, 4)} for label, s in zip(shuffled, scores, strict=True)]
    return json.dumps({"device_id": device_id, "frame": frame, "t": round(time.time(), 3), "label": top[0]["label"],
                       "score": top[0]["score"], "latency_ms": round(random.uniform(40, 70), 2), "fps": 14.8,
                       "top_k": top, "invoke_ms": round(random.uniform(30, 50), 2)})


def worker(ids: list[str], port: int, args: dict, ready, stop, out, published) -> None:
    """Drive ``ids``' clients until ``stop``; ``published`` (shared) counts the PUBLISH messages sent."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    random.seed(ids[0])
    sel = selectors.DefaultSelector()
    clients, connected = [], set()
    counts = {"status": 0, "result": 0, "event": 0, "failed": 0, "disconnects": 0}
    started = time.monotonic()
    for device_id in ids:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"edgecls-{device_id}", protocol=mqtt.MQTTv311)
        client.on_connect = lambda c, u, f, rc, p, d=device_id: rc.is_failure or connected.add(d)
        client.on_disconnect = lambda *a, d=device_id: stop.is_set() or (connected.discard(d), counts.__setitem__(
            "disconnects", counts["disconnects"] + 1))
        client.will_set(f"edgecls/{device_id}/status", json.dumps({"device_id": device_id, "online": False,
                        "reason": "connection lost (last will)"}), qos=1, retain=True)
        client.connect("127.0.0.1", port, keepalive=30)
        sel.register(client.socket(), selectors.EVENT_READ, client)
        clients.append((device_id, client))
        time.sleep(1 / args["connect_rate"])
        for key, _ in sel.select(0):
            key.data.loop_read()
    # Every device's first status and result at a random moment of its period, as devices started at random.
    now = time.monotonic()
    due = [(now + random.uniform(0, args["status_every"]), "status", i) for i in range(len(clients))]
    due += [(now + random.uniform(*args["result_every"]), "result", i) for i in range(len(clients))]
    if args["event_every"] > 0:
        due += [(now + random.uniform(0, args["event_every"]), "event", i) for i in range(len(clients))]
    heapq.heapify(due)
    frames, last_misc, signalled = [0] * len(clients), 0.0, False
    while not stop.is_set():
        now = time.monotonic()
        timeout = min(0.05, max(0.0, due[0][0] - now))
        for key, _ in sel.select(timeout):
            key.data.loop_read()
        now = time.monotonic()
        while due and due[0][0] <= now:
            at, kind, i = heapq.heappop(due)
            device_id, client = clients[i]
            frames[i] += 15
            if kind == "status":
                info = client.publish(f"edgecls/{device_id}/status", _status(device_id, started, frames[i]), qos=0,
                                      retain=True)
                heapq.heappush(due, (at + args["status_every"], kind, i))
            elif kind == "result":
                info = client.publish(f"edgecls/{device_id}/result", _result(device_id, frames[i]), qos=0)
                heapq.heappush(due, (at + random.uniform(*args["result_every"]), kind, i))
            else:
                info = client.publish(f"edgecls/{device_id}/event", json.dumps(
                    {"device_id": device_id, "event": "frames_collected", "t": round(time.time(), 3),
                     "detail": "load", "seq": counts["event"]}), qos=1)
                heapq.heappush(due, (at + args["event_every"], kind, i))
            counts[kind if info.rc == 0 else "failed"] += 1
            published.value += info.rc == 0
        for _, client in clients:
            if client.want_write():
                client.loop_write()
        if now - last_misc >= 1.0:
            last_misc = now
            for _, client in clients:
                client.loop_misc()  # keepalive pings, QoS 1 retries
            if not signalled and len(connected) == len(clients):
                signalled = True
                ready.put(len(clients))
    for _, client in clients:
        client.disconnect()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out.put({"pid": os.getpid(), "devices": len(clients), "connected": len(connected), **counts,
             "cpu_s": round(usage.ru_utime + usage.ru_stime, 2)})


# -- the host side, and the measurement -------------------------------------------------------------------

class SysTap:
    """The broker's own counters ($SYS, every second) and a count of the QoS 1 events that reached a subscriber."""

    def __init__(self, port: int):
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.values: dict[str, float] = {}
        self.events: set[tuple[str, int]] = set()
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"load-tap-{os.getpid()}")
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([(t, 0) for t in SYS_TOPICS] + [("edgecls/+/event", 1)])
        self.client.loop_start()

    def _on_message(self, client, userdata, message) -> None:
        with self.lock:
            if message.topic.startswith("$SYS/"):
                self.values[message.topic.rsplit("/broker/", 1)[1]] = float(message.payload)
            else:
                body = json.loads(message.payload)
                self.events.add((body["device_id"], body["seq"]))

    def snapshot(self) -> dict:
        with self.lock:
            return dict(self.values)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def measure(n: int, args, out_dir: Path, broker_pid: int, port: int) -> dict:
    url = f"mqtt://127.0.0.1:{port}"
    tap = SysTap(port)
    watch_log = out_dir / f"watch_{n}.log"
    watcher = subprocess.Popen([sys.executable, "-m", "edgecls", "fleet", "watch", "--broker", url, "--interval", "5"],
                               cwd=REPO, stdout=open(watch_log, "w"), stderr=subprocess.STDOUT)
    settings = {"connect_rate": args.connect_rate, "status_every": 5.0, "result_every": args.result_every,
                "event_every": args.event_every}
    ids = [f"load-{i:04d}" for i in range(n)]
    groups = [ids[i:i + PER_WORKER] for i in range(0, n, PER_WORKER)]
    ctx = multiprocessing.get_context("spawn")  # this process already runs paho's and the tap's threads
    ready, results, stop = ctx.Queue(), ctx.Queue(), ctx.Event()
    published = [ctx.RawValue("q", 0) for _ in groups]  # each written by one worker only
    workers = [ctx.Process(target=worker, args=(g, port, settings, ready, stop, results, c), daemon=True)
               for g, c in zip(groups, published, strict=True)]
    connect_started = time.monotonic()
    for w in workers:
        w.start()
    for _ in workers:
        ready.get(timeout=60 + n / args.connect_rate)
    connect_s = time.monotonic() - connect_started
    time.sleep(args.warmup)

    def cpu() -> dict:
        return {"broker": proc_cpu_s(broker_pid), "watcher": proc_cpu_s(watcher.pid),
                "workers": sum(proc_cpu_s(w.pid) for w in workers), "published": sum(c.value for c in published),
                "t": time.monotonic()}

    def machine_busy() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return sum(fields) - fields[3] - fields[4], sum(fields)

    time.sleep(1.5)  # a fresh $SYS second
    first, sys_first, busy_first = cpu(), tap.snapshot(), machine_busy()
    peaks, last = {"broker": 0.0, "watcher": 0.0}, first
    while time.monotonic() - first["t"] < args.seconds:
        time.sleep(max(0.1, min(5.0, args.seconds - (time.monotonic() - first["t"]))))
        now = cpu()
        for name in peaks:
            peaks[name] = max(peaks[name], 100 * (now[name] - last[name]) / (now["t"] - last["t"]))
        last = now
    end, sys_end, busy_end = cpu(), tap.snapshot(), machine_busy()
    window = end["t"] - first["t"]
    broker_mem, watcher_mem = proc_mem_mb(broker_pid), proc_mem_mb(watcher.pid)

    status_started = time.monotonic()
    status = subprocess.run([sys.executable, "-m", "edgecls", "fleet", "status", "--broker", url, "--json",
                             "--wait", "2"], cwd=REPO, capture_output=True, text=True)
    status_wall = time.monotonic() - status_started
    listed = json.loads(status.stdout) if status.returncode == 0 else []

    stop.set()
    per_worker = [results.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(30)
    time.sleep(2)  # the last QoS 1 events reach the tap
    watcher.send_signal(signal.SIGINT)
    watcher.wait(30)
    heads = [line for line in watch_log.read_text().splitlines() if "device(s) on" in line]
    watched = max((int(line.split()[1]) for line in heads), default=0)
    events_sent = sum(w["event"] for w in per_worker)
    with tap.lock:
        events_received = len(tap.events)
    tap.close()

    def rate(name: str) -> float:
        return round((sys_end.get(name, 0) - sys_first.get(name, 0)) / window, 1)

    return {
        "devices": n, "connected": sum(w["connected"] for w in per_worker), "connect_s": round(connect_s, 1),
        "window_s": round(window, 1), "workers": len(workers),
        "msgs_in_per_s": round((end["published"] - first["published"]) / window, 1),
        "msgs_out_per_s": rate("publish/messages/sent"),
        "packets_in_per_s": rate("messages/received"), "packets_out_per_s": rate("messages/sent"),
        "clients_connected": sys_end.get("clients/connected"),
        "broker_cpu_pct": round(100 * (end["broker"] - first["broker"]) / window, 1),
        "broker_cpu_peak_5s_pct": round(peaks["broker"], 1),
        "broker_rss_mb": broker_mem.get("VmRSS"), "broker_peak_rss_mb": broker_mem.get("VmHWM"),
        "broker_heap_mb": round(sys_end["heap/current"] / 2**20, 1) if "heap/current" in sys_end else None,
        "watcher_cpu_pct": round(100 * (end["watcher"] - first["watcher"]) / window, 1),
        "watcher_cpu_peak_5s_pct": round(peaks["watcher"], 1), "watcher_rss_mb": watcher_mem.get("VmRSS"),
        "watcher_devices_shown": watched,
        "simulators_cpu_pct": round(100 * (end["workers"] - first["workers"]) / window, 1),
        "machine_busy_pct": round(100 * (busy_end[0] - busy_first[0]) / max(1, busy_end[1] - busy_first[1]), 1),
        "fleet_status_listed": len(listed), "fleet_status_online": sum(1 for s in listed if s.get("online")),
        "fleet_status_wall_s": round(status_wall, 2),
        "published": {k: sum(w[k] for w in per_worker) for k in ("status", "result", "event")},
        "events_sent": events_sent, "events_received": events_received,
        "publish_failures": sum(w["failed"] for w in per_worker),
        "disconnects": sum(w["disconnects"] for w in per_worker),
    }


COLUMNS = [("devices", "devices"), ("msgs_in_per_s", "in msg/s"), ("msgs_out_per_s", "out msg/s"),
           ("broker_cpu_pct", "broker CPU %"), ("broker_cpu_peak_5s_pct", "peak 5 s"),
           ("broker_rss_mb", "broker RSS MB"), ("watcher_cpu_pct", "watch CPU %"), ("watcher_rss_mb", "watch RSS MB"),
           ("simulators_cpu_pct", "sims CPU %"), ("machine_busy_pct", "machine %"),
           ("watcher_devices_shown", "watch saw"), ("fleet_status_online", "status online"),
           ("events_received", "events rcvd")]


def table(rows: list[dict]) -> str:
    cells = [[h for _, h in COLUMNS]] + [[str(r.get(k, "-")) + (f"/{r['events_sent']}" if k == "events_received"
                                                                  else "") for k, _ in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in cells)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="1000", help="simulated devices; comma-separated for several runs")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured window, once every device is connected")
    parser.add_argument("--warmup", type=float, default=10.0,
                        help="seconds after the last connection, before measuring")
    parser.add_argument("--result-every", type=lambda v: tuple(float(x) for x in v.split(",")), default=(1.0, 2.0),
                        metavar="LO,HI", help="a result per device every LO-HI s (uniform); shorter for a "
                        "stress run")
    parser.add_argument("--event-every", type=float, default=60.0, help="a QoS 1 event per device this often (0: none)")
    parser.add_argument("--connect-rate", type=float, default=200.0, help="new connections a second, per worker")
    parser.add_argument("--out", type=Path, default=Path("/tmp/broker_load"))
    args = parser.parse_args()
    counts = [int(n) for n in args.devices.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    limit = raise_fd_limit(4 * max(counts) + 256)
    machine = {"cpu": platform.processor() or next((line.split(":", 1)[1].strip() for line in
               Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), "?"),
               "cores": os.cpu_count(), "python": platform.python_version(), "fd_limit": limit,
               "mosquitto": subprocess.run(["mosquitto", "-h"], capture_output=True, text=True).stdout.split("\n")[0]}
    print(f"{machine['cpu']}, {machine['cores']} cores; {machine['mosquitto']}", file=sys.stderr)
    rows = []
    for n in counts:
        broker, port = start_mosquitto(args.out)  # a fresh broker for each size: no retained state carried over
        try:
            print(f"{n} devices: connecting, then {args.seconds:.0f} s measured ...", file=sys.stderr)
            rows.append(measure(n, args, args.out, broker.pid, port))
        finally:
            os.killpg(broker.pid, signal.SIGTERM)
            broker.wait(10)
        (args.out / f"broker_load_{n}.json").write_text(json.dumps({"machine": machine, **rows[-1]}, indent=2))
    report = {"machine": machine, "seconds": args.seconds, "result_every_s": args.result_every, "runs": rows}
    (args.out / "broker_load.json").write_text(json.dumps(report, indent=2))
    print(table(rows))
    print(f"wrote {args.out / 'broker_load.json'}", file=sys.stderr)
    return 0 if all(r["fleet_status_listed"] == r["devices"] and r["events_received"] == r["events_sent"]
                    for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

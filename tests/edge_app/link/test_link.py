"""The device's MQTT link against a real broker process: status, last will, results, events, reconnection."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
from broker_support import free_port, wait_until
from support import REPO, run_cli

from edge_app.frames.sinks.base import Result

REQUIRED = {"device_id", "online", "version", "model", "model_sha256", "labels", "fps", "frames", "uptime_s",
            "reopens", "temperature_c", "throttled", "t"}


def feed(link, label: str = "healthy", frames: int = 5, fps: float = 25.0) -> None:
    for i in range(frames):
        link.update(None, Result(frame=i, t=time.time(), label=label, score=0.9, fps=fps, top_k=[(label, 0.9)]))


def fleet_status(broker) -> list[dict]:
    done = run_cli("fleet", "status", "--broker", broker.url, "--json", "--wait", "1", timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_status_is_retained_for_fleet_status_and_goes_offline_on_close(broker, make_link, subscribe, info):
    link = make_link(broker.url, "kiosk-1", status_every_s=0.3)
    link.start(info)
    feed(link)
    wait_until(lambda: link.connected, what="the link to connect")
    subscribe("edgecls/+/status").wait_for("status", lambda s: s["frames"] == 5)
    # A separate process that connects afterwards still gets it: the status is retained.
    (status,) = fleet_status(broker)
    assert REQUIRED <= set(status)
    assert status["device_id"] == "kiosk-1" and status["online"] is True and status["labels"] == ["healthy", "sick"]
    assert status["model_sha256"] == "ab" * 32 and status["fps"] == 25.0 and status["version"] == "test"
    table = run_cli("fleet", "status", "--broker", broker.url, "--wait", "1", timeout=60)
    assert table.returncode == 0 and "kiosk-1" in table.stdout and "leaf.tflite" in table.stdout
    assert "abababababab" in table.stdout and "yes" in table.stdout

    link.close()
    offline = subscribe("edgecls/kiosk-1/status").wait_for("status")
    assert offline["online"] is False and offline["reason"] == "stopped" and offline["frames"] == 5


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_device_that_vanishes_goes_offline(broker, subscribe, tmp_path, how):
    config = tmp_path / "device.json"
    config.write_text(json.dumps({"url": broker.url, "device_id": "pi-7", "folder": str(tmp_path)}))
    watcher = subscribe("edgecls/pi-7/status")
    device = subprocess.Popen([sys.executable, str(REPO / "tests" / "edge_app" / "link" / "device.py"), str(config)],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert device.stdout.readline().strip() == "started"
        watcher.wait_for("status", lambda s: s["online"] and s["frames"] > 0)
        device.send_signal(how)
        device.wait(timeout=30)
    finally:
        if device.poll() is None:
            device.kill()
            device.wait()
    offline = watcher.wait_for("status", lambda s: not s["online"])
    if how == signal.SIGKILL:
        # The broker's last will: the device had no chance to say anything.
        assert offline["reason"] == "connection lost (last will)" and "t" not in offline
        assert offline["model_sha256"] == "ab" * 32
    else:
        assert offline["reason"] == "stopped" and device.returncode == 0


def test_results_go_out_on_label_changes_and_heartbeats_never_per_frame(broker, make_link, subscribe, info):
    results = subscribe("edgecls/kiosk-2/result")
    link = make_link(broker.url, "kiosk-2", result_heartbeat_s=1.0, result_min_interval_s=0.5)
    link.start(info)
    wait_until(lambda: link.connected, what="the link to connect")
    started = time.monotonic()
    frames = 0
    while time.monotonic() - started < 1.5:  # 1.5 s of a label flipping on every frame, at ~200 FPS
        frames += 1
        link.update(None, Result(frame=frames, t=time.time(), label="ab"[frames % 2], score=0.8, fps=200.0))
        time.sleep(0.005)
    wait_until(lambda: results.bodies("result"), what="a result")
    time.sleep(0.6)
    sent = results.bodies("result")
    assert 2 <= len(sent) <= 1.5 / 0.5 + 2, f"{len(sent)} results for {frames} frames"
    assert {"device_id", "frame", "t", "label", "score", "fps", "top_k", "latency_ms"} <= set(sent[0])
    before = len(sent)
    # The same label on every frame: only the heartbeat, once a second.
    started = time.monotonic()
    while time.monotonic() - started < 2.2:
        frames += 1
        link.update(None, Result(frame=frames, t=time.time(), label="b", score=0.8, fps=200.0))
        time.sleep(0.01)
    wait_until(lambda: len(results.bodies("result")) >= before + 2, what="heartbeat results")
    assert len(results.bodies("result")) <= before + 4


def test_a_model_swapped_event_updates_the_status(broker, make_link, subscribe, info):
    watcher = subscribe("edgecls/kiosk-3/status", "edgecls/kiosk-3/event")
    link = make_link(broker.url, "kiosk-3", status_every_s=30)
    link.start(info)
    watcher.wait_for("status", lambda s: s["online"])
    link.event("model_swapped", "leaf_v2.tflite", old_sha256="ab" * 32, new_sha256="cd" * 32,
               model="/opt/edgecls/leaf_v2.tflite", labels=["a", "b", "c"])
    event = watcher.wait_for("event")
    assert event["event"] == "model_swapped" and event["new_sha256"] == "cd" * 32 and event["device_id"] == "kiosk-3"
    status = watcher.wait_for("status", lambda s: s["model_sha256"] == "cd" * 32)  # at once, not in 30 s
    assert status["labels"] == ["a", "b", "c"] and status["model"].endswith("leaf_v2.tflite")


@pytest.mark.slow  # about 9 s: two 4 s reconnection waits
def test_broker_down_and_back_events_wait_and_arrive_status_returns(broker, make_link, subscribe, info):
    # A fixed 4 s between reconnection attempts, so the test's own subscriber is back before the device is.
    link = make_link(broker.url, "kiosk-4", status_every_s=0.5, reconnect_delay_s=(4, 4))
    link.start(info)
    wait_until(lambda: link.connected, what="the link to connect")
    broker.stop(kill=True)
    wait_until(lambda: not link.connected, what="the link to notice the broker is gone")
    link.event("source_lost", "camera unplugged")
    link.event("source_reopened", "after 1.2 s")
    link.event("model_rejected", "bad.tflite", reason="signature does not verify")
    started = time.perf_counter()
    feed(link, frames=10_000)
    assert time.perf_counter() - started < 2.0  # classification never waits for the broker
    assert link.pending_events == 3
    failures = link.stats["connect_failures"]
    wait_until(lambda: link.stats["connect_failures"] > failures, what="a failed reconnection attempt")
    broker.start()
    watcher = subscribe("edgecls/kiosk-4/event", "edgecls/kiosk-4/status")
    assert link.stats["connects"] == 1, "the broker restarted too slowly: the device reconnected first"
    events = wait_until(lambda: len(watcher.bodies("event")) >= 3 and watcher.bodies("event"), 30,
                        "the buffered events")
    assert [e["event"] for e in events] == ["source_lost", "source_reopened", "model_rejected"]
    assert events[2]["reason"] == "signature does not verify"
    status = watcher.wait_for("status", lambda s: s["online"])
    assert status["reopens"] == 1 and status["frames"] == 10_000  # this run's, not one from before the outage
    wait_until(lambda: link.stats["events_acked"] == 3, what="PUBACKs for the events")
    assert link.stats["events_dropped"] == 0 and link.pending_events == 0


def test_the_event_buffer_is_bounded_and_drains_past_paho_queue(broker, make_link, subscribe, info):
    broker.stop()
    link = make_link(broker.url, "kiosk-6", event_buffer=300, reconnect_delay_s=(0.2, 0.5))
    link.start(info)
    for i in range(500):
        link.event("frame_collected", f"frame {i}", n=i)
    assert link.pending_events == 300 and link.stats["events_dropped"] == 200  # the oldest went
    broker.start()
    # 300 is more than paho's own queue (200): the rest waits in the buffer, then follows.
    wait_until(lambda: link.stats["events_acked"] == 300, 30, "the broker to confirm all 300 events")
    status = subscribe("edgecls/kiosk-6/status").wait_for("status", lambda s: s["online"])
    assert status["events_dropped"] == 200 and link.pending_events == 0


def test_an_unreachable_broker_never_blocks_and_close_is_quick(make_link, info):

    link = make_link(f"mqtt://127.0.0.1:{free_port()}", "kiosk-5", reconnect_delay_s=(0.2, 1))
    started = time.perf_counter()
    link.start(info)
    feed(link, frames=1000)
    link.event("source_lost", "no camera")
    assert time.perf_counter() - started < 1.0
    wait_until(lambda: link.stats["connect_failures"] >= 2, what="reconnection attempts")
    started = time.perf_counter()
    link.close()
    assert time.perf_counter() - started < 6.0


def test_tls_and_a_password_on_both_sides(secure_broker, make_link, info):
    link = make_link(secure_broker.url, "kiosk-tls", ca_file=secure_broker.ca)
    link.start(info)
    wait_until(lambda: link.connected, what="the link to connect over TLS with a password")
    done = run_cli("fleet", "status", "--broker", secure_broker.url, "--ca", secure_broker.ca, "--json",
                   "--wait", "1", timeout=60)
    assert done.returncode == 0, done.stderr
    assert [s["device_id"] for s in json.loads(done.stdout)] == ["kiosk-tls"]
    wrong = run_cli("fleet", "status", "--broker", secure_broker.url.replace("s3cret", "guess"), "--ca",
                    secure_broker.ca, timeout=60)
    assert wrong.returncode == 2 and "refused the connection" in wrong.stderr and "guess" not in wrong.stderr
    untrusted = run_cli("fleet", "status", "--broker", secure_broker.url, timeout=60)  # the system CAs: no
    assert untrusted.returncode == 2 and "TLS with the broker" in untrusted.stderr and "--ca" in untrusted.stderr


def test_fleet_watch_shows_devices_and_events_until_ctrl_c(broker, make_link, info):
    link = make_link(broker.url, "kiosk-w", status_every_s=0.5)
    link.start(info)
    wait_until(lambda: link.connected, what="the link to connect")
    watch = subprocess.Popen([sys.executable, "-m", "edgecls", "fleet", "watch", "--broker", broker.url,
                              "--interval", "0.3"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             cwd=REPO)
    try:
        time.sleep(1.5)
        link.event("source_lost", "camera unplugged")
        time.sleep(1.5)
    finally:
        watch.send_signal(signal.SIGINT)
        out, err = watch.communicate(timeout=30)
    assert watch.returncode == 0, err
    assert "kiosk-w" in out and "leaf.tflite" in out and "source_lost: camera unplugged" in out

"""``GET /metrics``: a real ``edgecls run --web`` subprocess, its answers parsed with prometheus_client's own
parser, and (slow) a real Prometheus server scraping it."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from support import (
    BIRD_MODEL,
    IMAGENET_MODEL,
    REPO,
    TOKEN,
    Kiosk,
    free_port,
    missing,
    stop_process,
    write_video,
)

from edge_app import __version__
from edge_app.frames.sinks import Result
from edge_app.frames.sources import Frame
from edge_app.kiosk.metrics import Metrics

BIRD_PARROT = "Ara macao (Scarlet Macaw)"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def video(tmp_path_factory, shared) -> Path:
    return write_video(tmp_path_factory.mktemp("metrics") / "two.avi", [("parrot.jpg", 10), ("grace_hopper.bmp", 10)],
                       size=(320, 240))


@contextlib.contextmanager
def edgecls_run(tmp_path: Path, video: Path, *args: str, model: Path | None = None):
    """``edgecls run MODEL --source VIDEO --loop --web 127.0.0.1:PORT ARGS`` in a subprocess; yields its base URL;
    SIGTERM at the end must stop it cleanly."""
    if model is None:
        model = tmp_path / "model.tflite"
        shutil.copy(IMAGENET_MODEL, model)
    port, errors = free_port(), tmp_path / "stderr.txt"
    with open(errors, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "edgecls", "run", str(model), "--source", str(video), "--loop",
                                 "--threads", "1", "--headless", "--web", f"127.0.0.1:{port}", *args], cwd=REPO,
                                stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            stop_process(proc)
    assert proc.returncode == 0, errors.read_text()[-3000:]


def scrape(base: str, headers: dict | None = None) -> tuple[str, dict]:
    """``(Content-Type, {family name: family})`` of one GET /metrics."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics
    from prometheus_client.parser import text_string_to_metric_families as prometheus_text

    request = urllib.request.Request(base + "/metrics", headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        kind, text = response.headers.get("Content-Type"), response.read().decode()
    parse = openmetrics if kind.startswith("application/openmetrics-text") else prometheus_text
    return kind, {family.name: family for family in parse(text)}


def samples(families: dict, family: str, name: str | None = None) -> list:
    return [s for s in families[family].samples if s.name == (name or family)]


def value(families: dict, family: str, name: str | None = None, **labels) -> float:
    found = [s.value for s in samples(families, family, name) if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (family, name, labels, found)
    return found[0]


def until(base: str, predicate, what: str, timeout: float = 60.0) -> dict:
    """Scrape until ``predicate(families)`` holds; the server may not be listening yet."""
    deadline, last = time.monotonic() + timeout, None
    while time.monotonic() < deadline:
        try:
            last = scrape(base)[1]
            if predicate(last):
                return last
        except urllib.error.URLError as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"waited {timeout} s for {what}; last {last}")


def frames(families: dict) -> float:
    return value(families, "edgecls_frames", "edgecls_frames_total")


def check_whole(families: dict) -> None:
    """One scrape is consistent: every frame is counted once per label and once in each histogram."""
    total = frames(families)
    by_label = {s.labels["label"]: s.value for s in samples(families, "edgecls_label_frames", "edgecls_label_frames_total")}
    assert sum(by_label.values()) == total and {"unknown", "uncertain"} <= by_label.keys(), by_label
    for histogram in ("edgecls_inference_seconds", "edgecls_frame_latency_seconds"):
        assert value(families, histogram, histogram + "_count") == total
        buckets = [s.value for s in samples(families, histogram, histogram + "_bucket")]
        assert buckets == sorted(buckets) and buckets[-1] == total
        assert value(families, histogram, histogram + "_sum") > 0


def model_info(families: dict) -> dict:
    (info,) = samples(families, "edgecls_model_info")
    return info.labels


def test_metrics_count_every_frame_and_name_the_model_and_build(tmp_path, video):
    with edgecls_run(tmp_path, video, "--threshold", "0.5") as base:
        first = until(base, lambda f: frames(f) >= 5, "5 frames")
        kind, second = scrape(base)
        second = second if frames(second) > frames(first) else until(base, lambda f: frames(f) > frames(first), "more")
        assert kind.startswith("text/plain; version=0.0.4")
        for families in (first, second):
            check_whole(families)
        labelled = {s.labels["label"] for s in samples(second, "edgecls_label_frames", "edgecls_label_frames_total")
                    if s.value > 0}
        assert labelled <= {"macaw", "military uniform", "uncertain"} and "macaw" in labelled, labelled
        # The interpreter's time is a part of the frame's: their sums say which histogram is which.
        assert (value(second, "edgecls_inference_seconds", "edgecls_inference_seconds_sum")
                < value(second, "edgecls_frame_latency_seconds", "edgecls_frame_latency_seconds_sum"))
        assert value(second, "edgecls_fps") > 0
        assert value(second, "edgecls_last_frame_timestamp_seconds") > time.time() - 60
        assert value(second, "edgecls_model_swaps", "edgecls_model_swaps_total") == 0
        assert model_info(second) == {"sha256": sha256(IMAGENET_MODEL), "model": "model.tflite", "num_classes": "1001",
                                      "input_size": "224x224", "input_dtype": "uint8", "quant": "", "device": "cpu",
                                      "unknown": "false"}
        (build,) = samples(second, "edgecls_build_info")
        assert build.labels["version"] == __version__ and build.labels["python"] == platform.python_version()
        assert build.labels["runtime"] and build.labels["runtime_version"]
        if sys.platform == "linux":
            assert value(second, "process_resident_memory_bytes") > 10_000_000
        # Prometheus asks for OpenMetrics, and gets it; a header that is not one gets the plain format.
        kind, families = scrape(base, {"Accept": "application/openmetrics-text;version=1.0.0,text/plain;q=0.5"})
        assert kind.startswith("application/openmetrics-text") and frames(families) >= frames(second)
        assert scrape(base, {"Accept": "application/openmetrics-text; version=junk"})[0].startswith("text/plain")
        # The server's limits hold for /metrics too: a page on another site cannot read it through DNS rebinding.
        with pytest.raises(urllib.error.HTTPError) as foreign:
            scrape(base, {"Host": "metrics.attacker.example"})
        assert foreign.value.code == 403


def test_a_live_swap_and_a_rejected_model_show_in_the_metrics(tmp_path, video):
    model = tmp_path / "model.tflite"
    shutil.copy(IMAGENET_MODEL, model)
    with edgecls_run(tmp_path, video, model=model) as base:
        until(base, lambda f: frames(f) >= 3, "3 frames")
        (tmp_path / ".incoming").write_bytes(b"<html>404 not found</html>")
        os.replace(tmp_path / ".incoming", model)
        rejected = until(base, lambda f: value(f, "edgecls_model_rejected", "edgecls_model_rejected_total") == 1,
                         "the rejection")
        assert model_info(rejected)["sha256"] == sha256(IMAGENET_MODEL)
        assert value(rejected, "edgecls_model_swaps", "edgecls_model_swaps_total") == 0
        shutil.copy(BIRD_MODEL, tmp_path / ".incoming")
        os.replace(tmp_path / ".incoming", model)
        swapped = until(base, lambda f: value(f, "edgecls_model_swaps", "edgecls_model_swaps_total") == 1, "the swap")
        assert model_info(swapped)["sha256"] == sha256(BIRD_MODEL) != sha256(IMAGENET_MODEL)
        assert model_info(swapped)["num_classes"] == "965"
        after = until(base, lambda f: value(f, "edgecls_label_frames", "edgecls_label_frames_total",
                                            label=BIRD_PARROT) > 0, "a frame labelled by the new model")
        check_whole(after)
        assert value(after, "edgecls_label_frames", "edgecls_label_frames_total", label="macaw") > 0  # counted before
        assert value(after, "edgecls_model_rejected", "edgecls_model_rejected_total") == 1


def test_metrics_need_no_token_but_actions_still_do(tmp_path, video):
    """--allow-remote with --learn: the Host checks are off and only the token guards the kiosk."""
    (tmp_path / "token").write_text(TOKEN + "\n")
    with edgecls_run(tmp_path, video, "--allow-remote", "--collect", str(tmp_path / "field"), "--collect-below", "1",
                     "--collect-every", "0.1", "--collect-max", "3", "--learn",
                     "--token-file", str(tmp_path / "token")) as base:
        # Collection pauses at --collect-max: the queue reads what the inbox holds (a frame still being
        # written when it paused may make it 4).
        inbox = tmp_path / "field" / "inbox"
        families = until(base, lambda f: value(f, "edgecls_collect_paused") == 1 and value(
            f, "edgecls_collect_waiting_frames") == len(list(inbox.glob("*.json"))), "collection to pause")
        waiting = value(families, "edgecls_collect_waiting_frames")
        assert waiting >= 3 and value(families, "edgecls_collected_frames", "edgecls_collected_frames_total") == waiting
        assert frames(scrape(base, {"Host": "device.lan:9100"})[1]) > 0  # any name, no token
        kiosk = Kiosk(int(base.rsplit(":", 1)[1]))
        assert kiosk.call("/api/collected", token=None)[0] == 401
        assert kiosk.call("/api/discard", {"id": "x"}, token=None)[0] == 401
        code, collected = kiosk.call("/api/collected")
        assert code == 200 and len(collected["items"]) == waiting
        assert kiosk.call("/api/discard", {"id": collected["items"][0]["id"]})[0] == 200
        assert value(scrape(base)[1], "edgecls_collect_waiting_frames") <= waiting


def _frame_and_results(n: int):
    frame = Frame(np.zeros((2, 2, 3), np.uint8), "RGB", 0, time.time())
    labels = ("macaw", "military uniform", "unknown", "uncertain")
    return frame, [Result(i, time.time(), labels[i % 4], 0.9, latency_ms=5.0 + i % 40, fps=30.0,
                          invoke_ms=4.0 + i % 7) for i in range(n)]


def test_every_frame_counts_whole():
    # The per-frame cost (a few microseconds) is measured in docs/prometheus.md, not asserted here.
    metrics = Metrics(lambda: None)
    metrics.start({"labels": ["macaw", "military uniform"]})
    frame, results = _frame_and_results(1000)
    n = 20_000
    for i in range(n):
        metrics.update(frame, results[i % 1000])
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(generate_latest(metrics.registry).decode())}
    assert frames(families) == n
    check_whole(families)
    assert value(families, "edgecls_label_frames", "edgecls_label_frames_total", label="unknown") == n / 4


def test_scrapes_within_a_second_share_one_body():
    # /metrics needs no token: a client hammering it gets the same body and cannot hold the frames' lock.
    from edge_app.kiosk.metrics import SCRAPE_REUSE_S

    metrics = Metrics(lambda: None)
    metrics.start({"labels": ["macaw"]})
    frame, results = _frame_and_results(10)
    metrics.update(frame, results[0])
    first, kind = metrics.exposition()
    metrics.update(frame, results[1])
    assert metrics.exposition() == (first, kind)
    time.sleep(SCRAPE_REUSE_S + 0.05)
    from prometheus_client.parser import text_string_to_metric_families

    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition()[0].decode())}
    assert frames(families) == 2


def test_without_prometheus_client_the_kiosk_runs_on_without_metrics():
    code = ("import sys, logging; sys.modules['prometheus_client'] = None; logging.basicConfig()\n"
            "from edge_app.kiosk.metrics import make_metrics\n"
            "assert make_metrics(lambda: None) is None\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pip install" in done.stderr and "prometheus_client" in done.stderr


def _query(api: str, promql: str) -> dict:
    url = f"{api}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def doc_blocks(kind: str) -> list[str]:
    """The fenced ``kind`` blocks of docs/prometheus.md: what users copy must work."""
    return re.findall(rf"```{kind}\n(.*?)```", (REPO / "docs" / "prometheus.md").read_text(), re.S)


@pytest.mark.slow
def test_a_real_prometheus_scrapes_the_device(tmp_path, video):
    if shutil.which("prometheus") is None:
        missing("no Prometheus server here (apt install prometheus)")
    with edgecls_run(tmp_path, video) as base:
        target = base.removeprefix("http://")
        (rules,) = [block for block in doc_blocks("yaml") if block.startswith("groups:")]
        (tmp_path / "rules.yml").write_text(rules)
        config = tmp_path / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nrule_files: ['rules.yml']\n"
                          "scrape_configs:\n"
                          f"  - job_name: edgecls\n    static_configs:\n      - targets: ['{target}']\n")
        api = f"http://127.0.0.1:{free_port()}"
        with open(tmp_path / "prometheus.log", "w") as out:
            server = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                       f"--web.listen-address={api.removeprefix('http://')}"],
                                      stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline, got = time.monotonic() + 60, None
            while time.monotonic() < deadline:
                try:
                    up = _query(api, 'up{job="edgecls"}')["data"]["result"]
                    got = _query(api, "edgecls_frames_total")["data"]["result"]
                    if up and up[0]["value"][1] == "1" and got and float(got[0]["value"][1]) > 0:
                        break
                except (OSError, ValueError):  # not listening yet
                    pass
                time.sleep(0.3)
            else:
                raise AssertionError(f"Prometheus never saw a frame: {got}\n{(tmp_path / 'prometheus.log').read_text()[-2000:]}")
            info = _query(api, "edgecls_model_info")["data"]["result"]
            assert info and info[0]["metric"]["sha256"] == sha256(IMAGENET_MODEL)
            # The queries and alerting rules docs/prometheus.md shows are valid: Prometheus runs them.
            queries = [line for block in doc_blocks("promql") for line in block.splitlines()
                       if line.strip() and not line.startswith("#")]
            assert len(queries) >= 10
            for promql in queries:
                assert _query(api, promql)["status"] == "success", promql
            with urllib.request.urlopen(f"{api}/api/v1/rules", timeout=5) as response:
                (group,) = json.loads(response.read())["data"]["groups"]
            assert group["name"] == "edgecls" and len(group["rules"]) == 5
            assert all(rule["health"] != "err" for rule in group["rules"]), group["rules"]
        finally:
            server.terminate()
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()

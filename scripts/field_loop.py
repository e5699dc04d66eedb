"""Measure the field loop on this machine (issue 14): the live swap's cost, apply's time, the live rate while learning.

1. Swap cost: a 320x240 video of the parrot, every frame classified; the model file is replaced (atomic
   rename) with the bird model after 150 frames. The longest frame interval within 30 frames of the swap
   against the median interval (goal: at most 2x).
2. Apply: a kiosk (``--web --collect --learn``) with 3 classes x 20 labelled frames; the time from
   ``POST /api/apply`` to the ``model_swapped`` line in the log.
3. The live rate while that learn runs in the background, against the rate before it.

    .venv/bin/python scripts/field_loop.py --out /tmp/field_loop      # about a minute
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO)]
SHARED = Path(os.environ.get("EDGECLS_SHARED", REPO.parent / "shared"))
MODELS, IMAGES = SHARED / "models", SHARED / "images"

from edge_app.live.app import AppConfig, run  # noqa: E402
from edge_app.runtime import read_image  # noqa: E402


def video(path: Path, names: list[str], frames_each: int, size=(320, 240)) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, size)
    for name in names:
        frame = cv2.resize(cv2.cvtColor(read_image(IMAGES / name), cv2.COLOR_RGB2BGR), size)
        for _ in range(frames_each):
            writer.write(frame)
    writer.release()
    return path


def records(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.endswith("}")] if log.exists() else []


def wait(predicate, timeout=300.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise SystemExit("timed out")


def in_thread(config: AppConfig):
    stop = threading.Event()
    thread = threading.Thread(target=run, args=(config,), kwargs={"stop": stop}, daemon=True)
    thread.start()
    return stop, thread


def swap_cost(out: Path, threads: int) -> dict:
    folder = out / f"swap{threads}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    model, log = folder / "model.tflite", folder / "run.jsonl"
    shutil.copy(MODELS / "mobilenet_v2_1.0_224_quant.tflite", model)
    clip = video(folder / "parrot.avi", ["parrot.jpg"], 600)
    stop, thread = in_thread(AppConfig(str(model), source=str(clip), log=str(log), num_threads=threads))
    wait(lambda: sum("frame" in r for r in records(log)) >= 150)
    tmp = folder / ".incoming"
    shutil.copy(MODELS / "mobilenet_v2_1.0_224_inat_bird_quant.tflite", tmp)
    os.replace(tmp, model)
    thread.join()
    rows = records(log)
    frames = [r for r in rows if "frame" in r]
    swap = next(r for r in rows if r.get("event") == "model_swapped")
    t = np.array([f["t"] for f in frames])
    gaps = np.diff(t) * 1000
    at = int(np.searchsorted(t, swap["t"]))
    near = gaps[max(0, at - 30):at + 30]
    return {"threads": threads, "frames": len(frames), "median_ms": round(float(np.median(gaps)), 2),
            "max_near_swap_ms": round(float(near.max()), 2), "ratio": round(float(near.max() / np.median(gaps)), 2),
            "frames_lost_or_repeated": len(frames) != 600 or [f["frame"] for f in frames] != list(range(600))}


def apply_time(out: Path, threads: int) -> dict:
    folder = out / "apply"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    model, log = folder / "model.tflite", folder / "run.jsonl"
    shutil.copy(MODELS / "mobilenet_v2_1.0_224_quant.tflite", model)
    names = {"red bird": "parrot.jpg", "officer": "grace_hopper.bmp", "cat": "cat_720p.jpg"}
    for label, name in names.items():  # 20 frames per class, as a kiosk keeps them (JPEG of the frame)
        target = folder / "field" / "labelled" / label
        target.mkdir(parents=True)
        image = cv2.resize(cv2.cvtColor(read_image(IMAGES / name), cv2.COLOR_RGB2BGR), (320, 240))
        for i in range(20):
            shifted = np.roll(image, 3 * i, axis=1)  # a little motion, as a hand-held object has
            cv2.imwrite(str(target / f"teach-{i:03d}.jpg"), shifted, [cv2.IMWRITE_JPEG_QUALITY, 95])
    clip = video(folder / "scene.avi", list(names.values()), 60)
    (folder / "token").write_text("measure-the-field-loop-token\n")
    port = 18000 + os.getpid() % 1000
    stop, thread = in_thread(AppConfig(str(model), source=str(clip), loop=True, log=str(log), num_threads=threads,
                                       web=f"127.0.0.1:{port}", collect=str(folder / "field"), learn=True,
                                       token_file=str(folder / "token")))
    time.sleep(5)  # settle, then measure the rate before
    before = [r for r in records(log) if "frame" in r]
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/apply", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json",
                                              "X-Edgecls-Token": "measure-the-field-loop-token"})
    started = time.time()
    urllib.request.urlopen(request, timeout=30).read()
    wait(lambda: any(r.get("event") == "model_swapped" for r in records(log)))
    rows = records(log)
    swapped = next(r for r in rows if r.get("event") == "model_swapped")
    stop.set()
    thread.join()
    job = json.loads((folder / "field" / "models" / "v0001.json").read_text())

    def rate(frames):
        return (len(frames) - 1) / (frames[-1]["t"] - frames[0]["t"]) if len(frames) > 1 else 0.0

    during = [r for r in rows if "frame" in r and started <= r["t"] <= swapped["t"]]
    return {"threads": threads, "apply_to_running_s": round(swapped["t"] - started, 2),
            "fps_before": round(rate(before[len(before) // 3:]), 1), "fps_while_learning": round(rate(during), 1),
            "val": job["val"], "val_before": job["val_before"], "classes": len(job["labels"])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/field_loop"))
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    result = {"swap": [swap_cost(args.out, threads) for threads in (1, 2) for _ in range(args.rounds)],
              "apply": apply_time(args.out, 1)}
    (args.out / "field_loop.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How much of the bare interpreter's speed ``edgecls run`` keeps on a video file, and its peak memory.

Three rates on the same model, thread count and video, measured in interleaved rounds (a shared
machine drifts; ratios taken within one round are what compare):

- ``bare``: ``set_tensor`` + ``invoke`` on frames decoded and pre-processed beforehand;
- ``sequential``: the plain loop: ``VideoCapture.read`` → ``set_input`` → ``invoke`` → top-1;
- ``app``: :func:`edge_app.live.app.run`, headless, logging every frame to a JSONL file.

Two videos by default: 640x480 (a USB camera's frames: decoding and resizing share the cores
with the interpreter) and one at the model's own input size (what the Pi camera's ISP hands over
on its low-resolution stream: the loop's own overhead). Then the peak RSS of a real
``python -m edgecls run`` subprocess on the first video.

Usage:
    python scripts/pipeline_speed.py --threads 2 --rounds 5
    python scripts/pipeline_speed.py --model run/model_int8.tflite --video field.avi --json speed.json
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


def make_video(path: Path, frames: int, size=(640, 480)) -> Path:
    """An MJPG .avi (what USB cameras and OpenCV record) cycling through the real photos in ../shared/images."""
    import cv2

    from edge_app.runtime import list_images, read_image

    photos = [cv2.resize(cv2.cvtColor(read_image(p), cv2.COLOR_RGB2BGR), size, interpolation=cv2.INTER_AREA)
              for p in list_images(SHARED / "images")]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30, size)
    for i in range(frames):
        writer.write(photos[(i // 15) % len(photos)])
    writer.release()
    return path


def bare_fps(clf, tensors, seconds: float = 2.0) -> tuple[float, float]:
    """``(frames per second, CPU ms per frame)`` of set_tensor + invoke alone."""
    interpreter, index = clf.interpreter, clf.input_detail["index"]
    for tensor in tensors[:10]:
        interpreter.set_tensor(index, tensor)
        interpreter.invoke()
    n, started, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - started < seconds:
        interpreter.set_tensor(index, tensors[n % len(tensors)])
        interpreter.invoke()
        n += 1
    return n / (time.perf_counter() - started), (time.process_time() - cpu) * 1000 / n


def sequential_fps(clf, video: Path) -> tuple[float, float]:
    import cv2

    cap = cv2.VideoCapture(str(video))
    n, started, cpu = 0, time.perf_counter(), time.process_time()
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        clf.set_input(frame, image_order="BGR")
        clf.invoke()
        clf.top(clf.scores(), 1)
        n += 1
    cap.release()
    return n / (time.perf_counter() - started), (time.process_time() - cpu) * 1000 / n


def app_fps(model: str, video: Path, threads: int, log: Path) -> tuple[float, float, dict]:
    """``(frames per second, CPU ms per frame, median stage times)`` of the real live app."""
    from edge_app.live.app import AppConfig, run

    log.unlink(missing_ok=True)
    cpu = time.process_time()
    run(AppConfig(model, source=str(video), num_threads=threads, log=str(log), max_frames=1))
    start_cpu = time.process_time() - cpu  # loading the model, opening the video: not per-frame work
    cpu = time.process_time()
    stats = run(AppConfig(model, source=str(video), num_threads=threads, log=str(log)))
    cpu_ms = (time.process_time() - cpu - start_cpu) * 1000 / (stats.frames - 1)
    stages = {k: round(statistics.median(v), 3) for k, v in stats.stage_ms.items()}
    return stats.fps, cpu_ms, stages


def peak_rss_mb(model: str, video: Path, threads: int, log: Path) -> float:
    """Peak RSS (``VmHWM``) of a real ``edgecls run`` subprocess, read from /proc while it runs.

    Not ``ru_maxrss`` of children: Linux carries the parent's high-water mark across fork+exec,
    so a child of this (large) process would report this process's size.
    """
    process = subprocess.Popen([sys.executable, "-m", "edgecls", "run", "-q", model, "--source", str(video),
                                "--threads", str(threads), "--log", str(log)], cwd=REPO)
    peak_kb = 0
    status = Path(f"/proc/{process.pid}/status")
    while process.poll() is None:
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peak_kb = max(peak_kb, int(line.split()[1]))
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    if process.returncode != 0:
        raise RuntimeError(f"edgecls run exited {process.returncode}")
    return peak_kb / 1024


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(SHARED / "models" / "mobilenet_v2_1.0_224_quant.tflite"))
    parser.add_argument("--video", action="append", help="an existing video; repeatable (default: 640x480 and "
                        "model-sized MJPGs made from ../shared/images)")
    parser.add_argument("--frames", type=int, default=600, help="frames in the generated video")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    import cv2

    from edge_app.runtime import ImageClassifier

    work = Path(tempfile.mkdtemp(prefix="edgecls-speed-"))
    clf = ImageClassifier(args.model, num_threads=args.threads)
    height, width = clf.input_size
    videos = [Path(v) for v in args.video] if args.video else [
        make_video(work / "camera_640x480.avi", args.frames),
        make_video(work / f"isp_{width}x{height}.avi", args.frames, (width, height))]
    cap, tensors = cv2.VideoCapture(str(videos[0])), []
    while len(tensors) < 64:  # real frames, pre-processed once: what "bare" invokes on
        ok, frame = cap.read()
        if not ok:
            break
        clf.set_input(frame, image_order="BGR")
        tensors.append(clf._input.copy())
    cap.release()

    rounds: dict[str, list[dict]] = {v.name: [] for v in videos}
    for r in range(args.rounds):
        for video in videos:
            before, bare_cpu = bare_fps(clf, tensors, 1.0)
            seq, seq_cpu = sequential_fps(clf, video)
            app, app_cpu, stages = app_fps(args.model, video, args.threads, work / "app.jsonl")
            after, _ = bare_fps(clf, tensors, 1.0)
            bare = (before + after) / 2
            rounds[video.name].append({
                "bare_fps": bare, "bare_drift": abs(before - after) / bare, "sequential_fps": seq, "app_fps": app,
                "app_vs_bare": app / bare, "sequential_vs_bare": seq / bare, "app_vs_sequential": app / seq,
                "cpu_ms_per_frame": {"bare": bare_cpu, "sequential": seq_cpu, "app": app_cpu},
                "cpu_ratio_app": bare_cpu / app_cpu, "cpu_ratio_sequential": bare_cpu / seq_cpu,
                "app_stage_ms_p50": stages})
            print(f"round {r + 1} {video.name}: bare {before:.1f}/{after:.1f} FPS, sequential {seq:.1f} "
                  f"({seq / bare:.2f}), app {app:.1f} ({app / bare:.2f} of bare, {app / seq:.2f}x sequential); "
                  f"CPU ms/frame bare {bare_cpu:.2f} sequential {seq_cpu:.2f} app {app_cpu:.2f}; stages {stages}",
                  flush=True)
    rss = peak_rss_mb(args.model, videos[0], args.threads, work / "rss.jsonl")
    keys = ("bare_fps", "sequential_fps", "app_fps", "app_vs_bare", "sequential_vs_bare", "app_vs_sequential")
    # Other work on a shared machine takes cores away at random: a round counts as quiet when its two
    # bare measurements agree within 5% and reach 90% of the best bare rate seen. Under contention
    # a three-thread pipeline gets a bigger share of the CPU than the two-thread bare loop, which
    # inflates its ratio, so only quiet rounds say anything about wall-clock rates. The CPU ratios
    # (bare CPU per frame / pipeline CPU per frame) predict the ratio on a dedicated machine where
    # both keep every core busy, and hold up better under contention: they use every round.
    best = max(r["bare_fps"] for rs in rounds.values() for r in rs)
    summary = {}
    for name, rs in rounds.items():
        quiet = [r for r in rs if r["bare_drift"] <= 0.05 and r["bare_fps"] >= 0.9 * best]
        summary[name] = {"quiet_rounds": len(quiet), "rounds": len(rs),
                         **{key: round(statistics.median(r[key] for r in quiet), 3) if quiet else None
                            for key in keys},
                         "cpu_ratio_app": round(statistics.median(r["cpu_ratio_app"] for r in rs), 3),
                         "cpu_ratio_sequential": round(statistics.median(r["cpu_ratio_sequential"] for r in rs), 3)}
    result = {"model": args.model, "videos": [str(v) for v in videos], "threads": args.threads, "rounds": rounds,
              "median_of_quiet_rounds": summary, "peak_rss_mb": round(rss, 1)}
    print(json.dumps({"median_of_quiet_rounds": summary, "peak_rss_mb": result["peak_rss_mb"]}, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

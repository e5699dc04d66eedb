"""What ``edgecls learn`` gets from a few photos: plantvillage-potato on the shipped ImageNet MobileNetV2.

1. Every photo is embedded once with the learn's own embedding pass (the base cut at its embedding,
   the runtime's decode and pre-processing). A fixed 30% per class is held out; from the rest,
   1, 5, 10, 20, 50, 100 and all photos per class (5 seeded draws below 100) fit the ``imprint`` and
   ``softmax`` heads; balanced accuracy on the held-out photos.
2. Speed: the embedding pass's images/s against ``edgecls run`` on the same folder of photos, same
   model and threads (decode overlapped with invoke in both); the learned model's latency against
   the base's; wall time and peak memory of a real ``edgecls learn`` on the whole train part.

    nice -n 19 .venv/bin/python scripts/learn_curve.py --out /tmp/learn_curve
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_app.learn import heads  # noqa: E402
from edge_app.learn.embed import Embedder  # noqa: E402
from edge_app.learn.learn import DEFAULT_BASE  # noqa: E402
from edge_app.learn.report import evaluate  # noqa: E402
from edge_app.runtime import ImageClassifier, graph, list_images, rewrite  # noqa: E402
from edge_app.runtime.timing import latency_stats, time_invokes  # noqa: E402

POTATO = Path(os.environ.get("EDGECLS_SHARED", REPO.parent / "shared")) / "datasets" / "plantvillage-potato"
SIZES = (1, 5, 10, 20, 50, 100, None)


def embed_all(threads: int) -> tuple[np.ndarray, np.ndarray, list[str], float, list[Path]]:
    labels = sorted(p.name for p in POTATO.iterdir() if p.is_dir())
    paths = [(p, i) for i, label in enumerate(labels) for p in list_images(POTATO / label)]
    model = graph.read_model(DEFAULT_BASE.read_bytes())
    embedder = Embedder(rewrite.cut_at(model, graph.find_embedding(model)), {}, num_threads=threads)
    start = time.monotonic()
    raw, kept, _ = embedder.embed([p for p, _ in paths])
    seconds = time.monotonic() - start
    y = np.array([i for _, i in paths])[kept]
    return embedder.dequantize(raw), y, labels, seconds, [p for p, _ in paths]


def curve(x: np.ndarray, y: np.ndarray, labels: list[str], seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    test, pool = [], {}
    for c in range(len(labels)):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = round(0.3 * len(idx))
        test += idx[:n_test].tolist()
        pool[c] = idx[n_test:]
    test = np.array(test)
    rows = []
    for n in SIZES:
        draws = 5 if n is not None and n < 100 else 1
        for kind in ("imprint", "softmax"):
            scores = []
            for d in range(draws):
                pick = np.random.default_rng(100 + d)
                train = np.concatenate([pick.permutation(pool[c])[:n] for c in pool]) if n else np.concatenate(list(pool.values()))
                head = heads.fit(kind, x[train], y[train], len(labels), seed=d)
                result = evaluate(head.scores(x[test]).argmax(1), y[test], labels)
                scores.append(result["balanced_accuracy"])
            rows.append({"per_class": n or "all", "head": kind, "balanced_accuracy": float(np.mean(scores)),
                         "min": float(np.min(scores)), "draws": draws, "train_images": int(len(train)),
                         "test_images": int(len(test))})
            print(rows[-1], flush=True)
    return rows


def run_fps(paths: list[Path], threads: int, out: Path) -> float:
    from edge_app.live.app import AppConfig, run

    folder = out / "photos"
    folder.mkdir(parents=True, exist_ok=True)
    for i, p in enumerate(paths):
        link = folder / f"{i:05d}{p.suffix}"
        if not link.exists():
            link.symlink_to(p)
    stats = run(AppConfig(model=str(DEFAULT_BASE), source=str(folder), num_threads=threads))
    return stats.fps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/learn_curve"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--curve-only", action="store_true", help="only the accuracy curve (no speed, no learn run)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    x, y, labels, embed_s, paths = embed_all(args.threads)
    results = {"photos": int(len(y)), "embedding_seconds": round(embed_s, 2),
               "embedding_img_s": round(len(y) / embed_s, 1), "curve": curve(x, y, labels)}
    if args.curve_only:
        (args.out / "learn_curve.json").write_text(json.dumps(results, indent=2))
        return 0
    results["run_fps_same_folder"] = round(run_fps(paths, args.threads, args.out), 1)
    results["embedding_vs_run"] = round(results["embedding_img_s"] / results["run_fps_same_folder"], 3)

    # A real `edgecls learn` on the train part (test/ held out by folder): wall time and peak memory.
    data = args.out / "potato"
    rng = np.random.default_rng(0)
    for label in labels:
        files = rng.permutation(list_images(POTATO / label))
        for split, chunk in (("test", files[:round(0.3 * len(files))]), ("train", files[round(0.3 * len(files)):])):
            folder = data / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for f in chunk:
                if not (folder / Path(f).name).exists():
                    (folder / Path(f).name).symlink_to(f)
    model = args.out / "potato.tflite"
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "edgecls", "learn", str(data), "--out", str(model), "--threads",
                           str(args.threads)], capture_output=True, text=True, cwd=REPO)
    results["learn_wall_s"] = round(time.monotonic() - start, 1)
    results["learn_peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)
    if proc.returncode != 0:
        print(proc.stderr)
        return 1
    report = json.loads(model.with_suffix(".learn.json").read_text())
    results["learn"] = {k: report[k] for k in ("head", "images", "seconds", "embedding_rate_img_s", "size_bytes")} | {
        "val_balanced": report["val"]["balanced_accuracy"], "test_balanced": report["test"]["balanced_accuracy"],
        "test_accuracy": report["test"]["accuracy"]}
    classifiers = {name: ImageClassifier(path, num_threads=args.threads)
                   for name, path in (("base", DEFAULT_BASE), ("learned", model))}
    latency = {name: float("inf") for name in classifiers}
    for _ in range(5):  # interleaved rounds: a burst of load hits both, not one
        for name, classifier in classifiers.items():
            p50 = latency_stats(time_invokes(classifier, runs=200, warmup=20)[1])["p50"]
            latency[name] = round(min(latency[name], p50), 3)
    results["latency_p50_ms"] = latency | {"ratio": round(latency["learned"] / latency["base"], 3)}
    (args.out / "learn_curve.json").write_text(json.dumps(results, indent=2))
    print(json.dumps({k: v for k, v in results.items() if k != "curve"}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

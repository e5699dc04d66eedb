"""Which novelty score lets a potato kiosk say "unknown"? The open-set protocol on plantvillage-potato.

Coral's ImageNet MobileNetV2 (the shipped base) embeds every photo once (the learn's embedding pass:
the runtime's decode and pre-processing). For each of the three rotations, two classes are known and the
third is the *near* unknown (a leaf disease the kiosk was never taught); *far* unknowns are the bundled
texture patches, the photos in ../shared/images and the real photos scikit-image ships. Known photos are
split per class: up to ``--per-class`` fit the head (a softmax head, as ``edgecls learn`` fits) and are the
reference set, 20% of the rest calibrate the threshold (accept 95% of known), the remainder are the test.

Scores (higher = more novel): max softmax probability (``1 - msp``), energy (``-logsumexp`` of logits),
cosine to the nearest class centroid, mean cosine to the k nearest reference embeddings (k = 1, 5, 10),
the latter also with the reference set cut to N per class (random, or k-center greedy "to cover the
class"). Reported: share of unknowns still accepted at the calibrated threshold, AUROC, share of known
test photos accepted, known accuracy among accepted, and numpy time per frame.

    .venv/bin/python scripts/unknown_scores.py --out /tmp/unknown_scores

``--trained`` measures the same protocol on models trained on the two known classes (``edgecls train
--weights imagenet-tflite``, frozen head then fine-tuning) and converted to int8 (``edgecls convert``: each
variant's own reference set and threshold); unknown photos are scored by the int8 model itself, and the max
softmax probability is thresholded to accept the same share of the test split.

    .venv/bin/python scripts/unknown_scores.py --out /tmp/unknown_scores --trained     # ~20 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_app.learn import heads  # noqa: E402
from edge_app.learn.embed import Embedder  # noqa: E402
from edge_app.learn.learn import DEFAULT_BASE  # noqa: E402
from edge_app.runtime import graph, list_images, rewrite  # noqa: E402

SHARED = Path(os.environ.get("EDGECLS_SHARED", REPO.parent / "shared"))
POTATO = SHARED / "datasets" / "plantvillage-potato"
TEXTURES = REPO / "edgecls" / "sample_data" / "textures"
ACCEPT = 0.95


def far_photos(folder: Path) -> list[Path]:
    """Real non-leaf photos: the bundled textures, ../shared/images, and scikit-image's own photos."""
    import cv2
    from skimage import data as skdata

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "camera", "chelsea", "clock", "coffee", "coins", "horse", "hubble_deep_field",
                 "immunohistochemistry", "moon", "page", "rocket", "text", "retina", "microaneurysms"):
        path = folder / f"{name}.png"
        if not path.exists():
            try:
                image = getattr(skdata, name)()
            except Exception:  # not shipped in this wheel (some need a download): left out
                continue
            image = image if image.ndim == 3 else np.stack([image] * 3, -1)
            cv2.imwrite(str(path), cv2.cvtColor(image[..., :3].astype(np.uint8), cv2.COLOR_RGB2BGR))
    return sorted(folder.glob("*.png")) + list_images(SHARED / "images") + list_images(TEXTURES, recursive=True)


def normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(a random unknown scores above a random known), ties half (the Mann-Whitney statistic)."""
    both = np.concatenate([known, unknown])
    ranks = np.argsort(np.argsort(both, kind="stable"), kind="stable").astype(np.float64) + 1
    for value in np.unique(both):  # average ranks for ties
        tied = both == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[len(known):].sum() - len(unknown) * (len(unknown) + 1) / 2) / (len(known) * len(unknown)))


def k_center(x: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Greedy farthest-point choice of ``n`` rows of normalised ``x``: a sample that covers the class."""
    if len(x) <= n:
        return np.arange(len(x))
    chosen = [int(np.random.default_rng(seed).integers(len(x)))]
    distance = 1 - x @ x[chosen[0]]
    for _ in range(n - 1):
        chosen.append(int(distance.argmax()))
        distance = np.minimum(distance, 1 - x @ x[chosen[-1]])
    return np.array(chosen)


def scores_for(head, ref: np.ndarray, ref_y: np.ndarray, x: np.ndarray, k_values=(1, 5, 10)) -> dict[str, np.ndarray]:
    logits = x @ head.weights.T + head.bias
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    xn, rn = normalise(x), normalise(ref)
    centroids = normalise(np.stack([rn[ref_y == c].mean(0) for c in np.unique(ref_y)]))
    sim = xn @ rn.T
    out = {"max softmax": 1 - probs.max(1),
           "energy": -np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) - logits.max(1),
           "centroid cosine": 1 - (xn @ centroids.T).max(1)}
    for k in k_values:
        top = -np.sort(-sim, axis=1)[:, :min(k, sim.shape[1])]
        out[f"k-NN mean cosine, k={k}"] = 1 - top.mean(1)
    out["_predicted"] = probs.argmax(1)
    return out


def mahalanobis(fit_x: np.ndarray, fit_y: np.ndarray, dims: int):
    """Lee et al. 2018 on unit rows: distance to the nearest class mean under one shared covariance, in the
    ``dims`` leading principal directions (shrunk with Ledoit-Wolf: a few dozen photos per class)."""
    from sklearn.covariance import LedoitWolf

    x = normalise(fit_x)
    mu = x.mean(0)
    basis = np.linalg.svd(x - mu, full_matrices=False)[2][:min(dims, len(x) - 1)].T
    z = (x - mu) @ basis
    means = np.stack([z[fit_y == c].mean(0) for c in np.unique(fit_y)])
    root = np.linalg.cholesky(LedoitWolf().fit(z - means[np.searchsorted(np.unique(fit_y), fit_y)]).precision_)
    project, centres = basis @ root, means @ root

    def score(q: np.ndarray) -> np.ndarray:
        diff = ((normalise(q) - mu) @ project)[:, None, :] - centres[None]
        return (diff ** 2).sum(-1).min(1)
    return score


def alternatives(fit_x: np.ndarray, fit_y: np.ndarray, parts: dict[str, np.ndarray]) -> dict[str, dict]:
    """Scores tried against the k-NN for the held-out class, per part: Mahalanobis in 32/64/128 principal
    directions, k-NN on embeddings centred on the training mean, k-NN among the predicted class's references."""
    centre = fit_x.mean(0)
    out = {f"Mahalanobis, {d} principal directions": {name: f(x) for name, x in parts.items()}
           for d, f in ((d, mahalanobis(fit_x, fit_y, d)) for d in (32, 64, 128))}
    out["k-NN k=5, centred embeddings"] = {
        name: 1 - np.sort(normalise(x - centre) @ normalise(fit_x - centre).T, 1)[:, -5:].mean(1)
        for name, x in parts.items()}
    return out


def evaluate(scores: dict, val: dict, test: dict, near: dict, far: dict, test_y: np.ndarray) -> dict:
    rows = {}
    for name in scores:
        if name.startswith("_"):
            continue
        threshold = float(np.quantile(val[name], ACCEPT))
        accepted = test[name] <= threshold
        correct = test["_predicted"] == test_y
        rows[name] = {
            "near_accepted": float((near[name] <= threshold).mean()), "near_auroc": auroc(test[name], near[name]),
            "far_accepted": float((far[name] <= threshold).mean()), "far_auroc": auroc(test[name], far[name]),
            "known_accepted": float(accepted.mean()),
            "accuracy_all": float(correct.mean()),
            "accuracy_accepted": float(correct[accepted].mean()) if accepted.any() else float("nan")}
    return rows


def trained(out: Path, labels: list[str], far_paths: list[Path], epochs: int, fine_tune: int, threads: int,
            reuse: bool = False) -> dict:
    """The open-set protocol on trained + converted int8 models: one training per rotation."""
    import subprocess

    from edge_app.runtime import ImageClassifier, read_image
    from edge_app.runtime.novelty import auroc

    embedded = {}

    def scores(clf, paths, part):
        novelty, msp, embedding = [], [], []
        for path in paths:
            clf.classify(read_image(path, clf.spec.decode_size), top_k=1)
            novelty.append(clf.novelty())
            msp.append(1 - float(clf.scores().max()))
            embedding.append(clf.embedding())
        embedded[part] = np.array(embedding)
        return np.array(novelty), np.array(msp)

    results = {}
    for unknown in range(len(labels)):
        name = labels[unknown]
        data, run = out / f"open-{unknown}" / "data", out / f"open-{unknown}" / "run"
        for c, label in enumerate(labels):
            if c != unknown and not (data / label).exists():
                (data / label).mkdir(parents=True)
                for photo in list_images(POTATO / label):
                    (data / label / photo.name).symlink_to(photo)
        started = time.monotonic()
        commands = (["train", data, "--out", run, "--backbone", "mobilenet_v2", "--weights", "imagenet-tflite",
                     "--epochs", epochs, "--fine-tune-epochs", fine_tune, "--overwrite"],
                    ["convert", run, "--quant", "int8", "--threads", threads, "--runs", "20"])
        for command in () if reuse and (run / "model_int8.tflite").is_file() else commands:
            done = subprocess.run([sys.executable, "-m", "edgecls", *map(str, command)], cwd=REPO,
                                  capture_output=True, text=True)
            if done.returncode not in (0, 1):  # 1: a check failed, the model is still written
                raise SystemExit(f"{command[0]} failed: {done.stderr.strip().splitlines()[-1]}")
        clf = ImageClassifier(run / "model_int8.tflite", num_threads=threads)
        report = json.loads((run / "conversion.json").read_text())["variants"][0]
        test = [p for p, _ in _split(run, "test")]
        known, known_msp = scores(clf, test, "test")
        near, near_msp = scores(clf, list_images(POTATO / name), "near")
        far, far_msp = scores(clf, far_paths, "far")
        train = _split(run, "train")
        scores(clf, [p for p, _ in train], "fit")
        scores(clf, [p for p, _ in _split(run, "val")], "val")
        msp_threshold = float(np.quantile(known_msp, float((known <= clf.reference.threshold).mean()), method="higher"))
        results[name] = {
            "seconds": round(time.monotonic() - started), "test_accuracy": report["accuracy"],
            "unknown": report["unknown"]["test"], "threshold": clf.reference.threshold,
            "k-NN": {"near_accepted": float((near <= clf.reference.threshold).mean()), "near_auroc": auroc(known, near),
                     "far_accepted": float((far <= clf.reference.threshold).mean()), "far_auroc": auroc(known, far)},
            "max softmax": {"near_accepted": float((near_msp <= msp_threshold).mean()),
                            "near_auroc": auroc(known_msp, near_msp),
                            "far_accepted": float((far_msp <= msp_threshold).mean()),
                            "far_auroc": auroc(known_msp, far_msp)}}
        fit = embedded.pop("fit")
        for score, values in alternatives(fit, np.array([c for _, c in train]), embedded).items():
            threshold = float(np.quantile(values["val"], ACCEPT))
            results[name][score] = {f"{part}_{what}": value for part in ("near", "far") for what, value in (
                ("accepted", float((values[part] <= threshold).mean())), ("auroc", auroc(values["test"], values[part])))}
        print(name, json.dumps(results[name]), flush=True)
    return results


def _split(run: Path, split: str):
    from edge_app.runtime.rundir import load_split

    return load_split(run, split)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/unknown_scores"))
    parser.add_argument("--trained", action="store_true", help="also: trained + converted int8 models (slow)")
    parser.add_argument("--reuse", action="store_true", help="--trained: score the models an earlier run left in OUT")
    parser.add_argument("--epochs", type=int, default=10, help="--trained: frozen-head epochs")
    parser.add_argument("--fine-tune-epochs", type=int, default=3, help="--trained: fine-tuning epochs")
    parser.add_argument("--per-class", type=int, default=50, help="known photos per class that fit the head")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    labels = sorted(p.name for p in POTATO.iterdir() if p.is_dir())
    potato = [(p, i) for i, label in enumerate(labels) for p in list_images(POTATO / label)]
    far_paths = far_photos(args.out / "far")
    model = graph.read_model(DEFAULT_BASE.read_bytes())
    embedder = Embedder(rewrite.cut_at(model, graph.find_embedding(model)), {}, num_threads=args.threads)
    cache = args.out / "embeddings.npz"
    if cache.exists():
        saved = np.load(cache)
        x, y, far_x = saved["x"], saved["y"], saved["far"]
    else:
        raw, kept, _ = embedder.embed([p for p, _ in potato], desc="potato")
        x, y = embedder.dequantize(raw), np.array([i for _, i in potato])[kept]
        raw, _, _ = embedder.embed(far_paths, desc="far")
        far_x = embedder.dequantize(raw)
        np.savez(cache, x=x, y=y, far=far_x)
    results = {"base": DEFAULT_BASE.name, "per_class": args.per_class, "accept": ACCEPT, "photos": len(y),
               "far_photos": len(far_x), "rotations": {}}
    rng = np.random.default_rng(0)
    for unknown in range(len(labels)):
        known = [c for c in range(len(labels)) if c != unknown]
        fit, val, test = [], [], []
        for c in known:
            idx = rng.permutation(np.flatnonzero(y == c))
            n_fit = min(args.per_class, len(idx) // 2)
            rest = idx[n_fit:]
            n_val = max(5, round(0.2 * len(rest)))
            fit += idx[:n_fit].tolist()
            val += rest[:n_val].tolist()
            test += rest[n_val:].tolist()
        remap = {c: j for j, c in enumerate(known)}
        fy = np.array([remap[c] for c in y[fit]])
        head = heads.fit("softmax", x[fit], fy, len(known), seed=0)
        parts = {name: scores_for(head, x[fit], fy, x[idx]) for name, idx in
                 (("val", val), ("test", test), ("near", np.flatnonzero(y == unknown)))}
        parts["far"] = scores_for(head, x[fit], fy, far_x)
        alt = alternatives(x[fit], fy, {"val": x[val], "test": x[test], "near": x[y == unknown], "far": far_x})
        for score, values in alt.items():
            for part, v in values.items():
                parts[part][score] = v
        test_y = np.array([remap[c] for c in y[test]])
        rows = evaluate(parts["val"], parts["val"], parts["test"], parts["near"], parts["far"], test_y)
        # The reference set cut to N per class: random, or k-center greedy.
        for n in (8, 16, 32):
            for how in ("random", "k-center"):
                keep = np.concatenate([
                    np.flatnonzero(fy == c)[(k_center(normalise(x[fit][fy == c]), n) if how == "k-center"
                                             else np.random.default_rng(1).permutation(int((fy == c).sum()))[:n])]
                    for c in range(len(known))])
                cut = {name: scores_for(head, x[fit][keep], fy[keep], x[idx], k_values=(5,)) for name, idx in
                       (("val", val), ("test", test), ("near", np.flatnonzero(y == unknown)))}
                cut["far"] = scores_for(head, x[fit][keep], fy[keep], far_x, k_values=(5,))
                rows[f"k-NN k=5, {n}/class {how}"] = evaluate(cut["val"], cut["val"], cut["test"], cut["near"],
                                                              cut["far"], test_y)["k-NN mean cosine, k=5"]
        results["rotations"][labels[unknown]] = rows
    # Cost per frame: the k=5 score against a reference of every fit photo, on one embedding.
    ref = normalise(x[:2 * args.per_class]).astype(np.float32)
    one = normalise(x[-1:]).astype(np.float32)
    start = time.perf_counter()
    for _ in range(2000):
        sim = ref @ one[0]
        np.partition(sim, len(sim) - 5)[-5:].mean()
    results["knn_score_us_per_frame"] = round((time.perf_counter() - start) / 2000 * 1e6, 1)
    names = list(next(iter(results["rotations"].values())))
    table = ["| score | near unknown accepted (AUROC) | far accepted (AUROC) | known accepted | accuracy all → accepted |",
             "|---|---|---|---|---|"]
    for name in names:
        rows = [r[name] for r in results["rotations"].values()]
        mean = {k: float(np.nanmean([r[k] for r in rows])) for k in rows[0]}
        results.setdefault("mean", {})[name] = mean
        table.append(f"| {name} | {100 * mean['near_accepted']:.1f}% ({mean['near_auroc']:.3f}) | "
                     f"{100 * mean['far_accepted']:.1f}% ({mean['far_auroc']:.3f}) | "
                     f"{100 * mean['known_accepted']:.1f}% | {100 * mean['accuracy_all']:.1f}% → "
                     f"{100 * mean['accuracy_accepted']:.1f}% |")
    if args.trained:
        results["trained"] = trained(args.out, labels, far_paths, args.epochs, args.fine_tune_epochs, args.threads,
                                     args.reuse)
        names = [k for k, v in next(iter(results["trained"].values())).items() if isinstance(v, dict) and "near_auroc" in v]
        for score in names:
            rows = [r[score] for r in results["trained"].values()]
            known = [r["unknown"] for r in results["trained"].values()]  # the converter's test split figures
            table.append(f"| trained int8, {score} | " + " | ".join(
                f"{100 * np.mean([r[f'{part}_accepted'] for r in rows]):.1f}% "
                f"({np.mean([r[f'{part}_auroc'] for r in rows]):.3f})" for part in ("near", "far"))
                + (" | 95% of val | – |" if score not in ("k-NN", "max softmax") else
                   f" | {100 * np.mean([r['known_accepted'] for r in known]):.1f}% | "
                   f"{100 * np.mean([r['accuracy'] for r in known]):.1f}% → "
                   f"{100 * np.mean([r['accuracy_accepted'] for r in known]):.1f}% |"))
    (args.out / "unknown_scores.json").write_text(json.dumps(results, indent=2))
    (args.out / "unknown_scores.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    print(f"k-NN (k=5, {2 * args.per_class} references) in numpy: {results['knn_score_us_per_frame']} µs per frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())

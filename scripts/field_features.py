"""Which features tell field lesions apart: cross-validation on the *dev* part of the potato field photos only.

The same split as ``scripts/field_curve.py`` (its report part is never read here). For a base model, every dev
photo is embedded whole and as five crops (four corners and the centre, 60% of each side); a logistic head
(scikit-learn, class-balanced) is fitted on folds of the dev potato photos, with or without the tomato blight
field photos (same pathogens), with or without lab photos (weighted to 30% of the mass), scored on the held-out
fold whole or averaged over the crops (multi-crop at inference: 6 invokes a frame). 5 folds × 3 seeds.

    .venv/bin/python scripts/field_features.py                       # the shipped ImageNet MobileNetV2
    .venv/bin/python scripts/field_features.py --base ../shared/models/mobilenet_v2_1.0_224_inat_bird_quant.tflite
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from field_curve import CLASSES, FIELD, LAB, REPORT_SHARE, SPLIT_SEED, TOMATO  # noqa: E402

from edge_app.learn.embed import Embedder  # noqa: E402
from edge_app.learn.learn import DEFAULT_BASE  # noqa: E402
from edge_app.runtime import graph, preprocess, read_image, rewrite  # noqa: E402
from edge_app.runtime.artifact import read_artifact  # noqa: E402


def dev_photos() -> dict[str, list[Path]]:
    rng = random.Random(SPLIT_SEED)  # field_curve.split's draw, so the report part stays unseen
    out = {}
    for folder, label in CLASSES.items():
        photos = sorted((FIELD / folder).iterdir())
        rng.shuffle(photos)
        out[label] = photos[round(len(photos) * REPORT_SHARE):]
    return out


def embedder(base: Path, size: int | None = None) -> Embedder:
    artifact = read_artifact(base, keep_bytes=True)
    model = graph.read_model(artifact.data)
    if size:
        model = rewrite.at_size(model, size)
    return Embedder(rewrite.cut_at(model, graph.find_embedding(model)), artifact.metadata, num_threads=2)


def crops(image: np.ndarray) -> list[np.ndarray]:
    h, w = image.shape[:2]
    ch, cw = int(h * 0.6), int(w * 0.6)
    corners = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), ((h - ch) // 2, (w - cw) // 2)]
    return [image] + [np.ascontiguousarray(image[y:y + ch, x:x + cw]) for y, x in corners]


def embed(e: Embedder, paths: list[Path], all_crops: bool) -> np.ndarray:
    """[N, crops, D] unit rows (crops = 6, or 1)."""
    out = []
    for path in paths:
        rows = []
        for part in crops(read_image(path)) if all_crops else [read_image(path)]:
            pixels = cv2.resize(part, (e.spec.width, e.spec.height), interpolation=cv2.INTER_AREA)
            e.interpreter.set_tensor(e._input, preprocess(pixels, e.spec))
            e.interpreter.invoke()
            v = e.dequantize(e.interpreter.get_tensor(e._output).reshape(1, -1))[0]
            rows.append(v / max(float(np.linalg.norm(v)), 1e-12))
        out.append(np.stack(rows))
    return np.stack(out)


def main() -> int:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", type=Path, default=DEFAULT_BASE)
    parser.add_argument("--lab-per-class", type=int, default=150)
    parser.add_argument("--size", type=int, help="the base's input size (default: as it is)")
    args = parser.parse_args()
    e = embedder(args.base, args.size)
    labels = list(CLASSES.values())
    dev = dev_photos()
    x = embed(e, [p for label in labels for p in dev[label]], True)
    y = np.array([i for i, label in enumerate(labels) for _ in dev[label]])
    tomato_paths = [(p, labels.index(label)) for folder, label in TOMATO.items() for p in sorted((FIELD / folder).iterdir())]
    tx = embed(e, [p for p, _ in tomato_paths], True)
    ty = np.array([i for _, i in tomato_paths])
    rng = np.random.default_rng(0)
    lab = [(p, i) for i, label in enumerate(labels)
           for p in rng.permutation(sorted((LAB / label).iterdir()))[:args.lab_per_class]]
    lx = embed(e, [p for p, _ in lab], False)[:, 0]
    ly = np.array([i for _, i in lab])
    print(f"base {args.base.name} at {e.spec.width} px: {len(y)} dev field photos, {len(ty)} tomato blight, {len(ly)} lab")
    for tomato in (False, True):
        for with_lab in (False, True):
            for tta in (False, True):
                scores = []
                for seed in range(3):
                    for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y):
                        fx, fy = [x[train, 0]], [y[train]]
                        if tomato:
                            fx.append(tx[:, 0])
                            fy.append(ty)
                        n = sum(len(v) for v in fy)
                        w = [np.ones(n)]
                        if with_lab:
                            fx.append(lx)
                            fy.append(ly)
                            w.append(np.full(len(ly), 0.3 / 0.7 * n / len(ly)))
                        clf = LogisticRegression(max_iter=3000, class_weight="balanced")
                        clf.fit(np.concatenate(fx), np.concatenate(fy), sample_weight=np.concatenate(w))
                        queries = x[test].mean(axis=1) if tta else x[test, 0]
                        scores.append(float((clf.predict(queries) == y[test]).mean()))
                print(f"tomato {'yes' if tomato else 'no ':3s}  lab {'yes' if with_lab else 'no ':3s}  multi-crop "
                      f"{'yes' if tta else 'no ':3s}: {100 * np.mean(scores):.1f}% (± {100 * np.std(scores) / np.sqrt(len(scores)):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

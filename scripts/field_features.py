"""Which features tell field lesions apart: cross-validation on the *dev* part of the potato field photos only.

The same split as ``scripts/field_curve.py`` (its report part is never read here). For a base model, every dev
photo is embedded whole and as five crops (four corners and the centre, 60% of each side); a logistic head
(scikit-learn, class-balanced) is fitted on folds of the dev potato photos, with or without the tomato blight
field photos (same pathogens), with or without lab photos (weighted to 30% of the mass), scored on the held-out
fold whole or averaged over the crops (multi-crop at inference: 6 invokes a frame). 5 folds × 3 seeds.

``--pooled``: the dev potato photos and the tomato blight ones in one pool (101 photos, so half the noise),
5 folds × 4 seeds, lab photos always at 30%, scored on the held-out photos whole, with a flipped copy, or over
the crops: what docs/field.md compares input sizes (``--size``) and centre crops (``--centre``) with.

``--layers``: the same pool, other poolings (max, GeM) of the last feature map and average-pooled earlier
blocks (the shipped base's tensor names), alone and beside the embedding.

``--heads``: the same pool fitted as ``learn`` fits its head on the kiosk's path (3 classes, the 128 lab photos
per class a learned base remembers, field photos at half of each class's weight) at several L2 strengths; field
accuracy, ECE on field photos, and accuracy on 40 held-out lab photos per class: how much lab accuracy a more
regularised head gives up for field accuracy.

    .venv/bin/python scripts/field_features.py                       # the shipped ImageNet MobileNetV2
    .venv/bin/python scripts/field_features.py --base ../shared/models/mobilenet_v2_1.0_224_inat_bird_quant.tflite
    .venv/bin/python scripts/field_features.py --pooled --size 320 --centre 0.8
    .venv/bin/python scripts/field_features.py --heads --size 320
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


def embedder(base: Path, size: int | None = None, model=None) -> Embedder:
    """learn's embedding pass on ``base`` (at ``size``); ``model``: its graph, already read (and resized)."""
    artifact = read_artifact(base, keep_bytes=True)
    model = model or base_graph(base, size)
    return Embedder(rewrite.cut_at(model, graph.find_embedding(model)), artifact.metadata, num_threads=2)


def base_graph(base: Path, size: int | None = None):
    model = graph.read_model(read_artifact(base, keep_bytes=True).data)
    return rewrite.at_size(model, size) if size else model


def crops(image: np.ndarray) -> list[np.ndarray]:
    """The photo, its four corners and centre at 60% of each side, and the photo flipped left-right."""
    h, w = image.shape[:2]
    ch, cw = int(h * 0.6), int(w * 0.6)
    corners = [(0, 0), (0, w - cw), (h - ch, 0), (h - ch, w - cw), ((h - ch) // 2, (w - cw) // 2)]
    return [image] + [np.ascontiguousarray(image[y:y + ch, x:x + cw]) for y, x in corners] + \
        [np.ascontiguousarray(image[:, ::-1])]


def centred(image: np.ndarray, share: float) -> np.ndarray:
    h, w = image.shape[:2]
    ch, cw = int(h * share), int(w * share)
    return np.ascontiguousarray(image[(h - ch) // 2:(h - ch) // 2 + ch, (w - cw) // 2:(w - cw) // 2 + cw])


def embed(e: Embedder, paths: list[Path], all_crops: bool, centre: float = 1.0) -> np.ndarray:
    """[N, views, D] unit rows (views = 7: the photo, five crops and the flipped photo; or 1)."""
    out = []
    for path in paths:
        rows = []
        image = centred(read_image(path), centre)
        for part in crops(image) if all_crops else [image]:
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
    parser.add_argument("--centre", type=float, default=1.0, help="every photo cut to this share of its centre first")
    parser.add_argument("--pooled", action="store_true", help="dev potato and tomato blight photos in one pool")
    parser.add_argument("--layers", action="store_true", help="the pool on other poolings and earlier layers")
    parser.add_argument("--heads", action="store_true", help="the pool, learn's head at several L2 strengths")
    args = parser.parse_args()
    if args.layers:
        return layers(args.base, args.size)
    e = embedder(args.base, args.size)
    labels = list(CLASSES.values())
    dev = dev_photos()
    if args.heads:
        return heads_study(e, dev)
    x = embed(e, [p for label in labels for p in dev[label]], True, args.centre)
    y = np.array([i for i, label in enumerate(labels) for _ in dev[label]])
    tomato_paths = [(p, labels.index(label)) for folder, label in TOMATO.items() for p in sorted((FIELD / folder).iterdir())]
    tx = embed(e, [p for p, _ in tomato_paths], True, args.centre)
    ty = np.array([i for _, i in tomato_paths])
    rng = np.random.default_rng(0)
    lab = [(p, i) for i, label in enumerate(labels)
           for p in rng.permutation(sorted((LAB / label).iterdir()))[:args.lab_per_class]]
    lx = embed(e, [p for p, _ in lab], False, args.centre)[:, 0]
    ly = np.array([i for _, i in lab])
    print(f"base {args.base.name} at {e.spec.width} px: {len(y)} dev field photos, {len(ty)} tomato blight, {len(ly)} lab")
    if args.pooled:
        return pooled(np.concatenate([x, tx]), np.concatenate([y, ty]), len(y), lx, ly)
    x = x[:, :6]  # the table below: the photo and its five crops
    tx = tx[:, :6]
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


def pooled(x: np.ndarray, y: np.ndarray, potato: int, lx: np.ndarray, ly: np.ndarray) -> int:
    """Cross-validation on one pool (the first ``potato`` rows are potato photos), lab photos at 30% of the fit."""
    for name, views in (("whole", [0]), ("flipped too", [0, 6]), ("five crops", [0, 1, 2, 3, 4, 5])):
        on_potato, on_all = pool_folds(x[:, 0], y, potato, lx, ly, x[:, views].mean(axis=1))
        print(f"scored {name:11s}: potato {100 * np.mean(on_potato):.1f}%, all {100 * np.mean(on_all):.1f}% "
              f"(± {100 * np.std(on_all) / np.sqrt(len(on_all)):.1f})")
    return 0


def pool_folds(x: np.ndarray, y: np.ndarray, potato: int, lx: np.ndarray, ly: np.ndarray,
               queries: np.ndarray | None = None) -> tuple[list[float], list[float]]:
    """Share right per fold (on the potato rows, on all): a logistic head on ``x``'s other folds and the lab
    photos at 30% of the fit, scoring the held-out rows of ``queries`` (default: ``x``). 5 folds × 4 seeds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    queries = x if queries is None else queries
    is_potato = np.arange(len(y)) < potato
    on_potato, on_all = [], []
    for seed in range(4):
        for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y * 2 + is_potato):
            n = len(train)
            clf = LogisticRegression(max_iter=3000, class_weight="balanced")
            clf.fit(np.concatenate([x[train], lx]), np.concatenate([y[train], ly]),
                    sample_weight=np.concatenate([np.ones(n), np.full(len(ly), 0.3 / 0.7 * n / len(ly))]))
            right = clf.predict(queries[test]) == y[test]
            on_potato.append(float(right[is_potato[test]].mean()))
            on_all.append(float(right.mean()))
    return on_potato, on_all


def field_pool(dev: dict[str, list[Path]]) -> tuple[list[tuple[Path, int]], int]:
    """(photo, class index) of the dev potato photos, then the tomato blight ones; and how many are potato."""
    labels = list(CLASSES.values())
    pool = [(p, labels.index(label)) for label in labels for p in dev[label]]
    return pool + [(p, labels.index(label)) for folder, label in TOMATO.items()
                   for p in sorted((FIELD / folder).iterdir())], len(pool)


def heads_study(e: Embedder, dev: dict[str, list[Path]]) -> int:
    """learn's field fit at L2 strengths λ (per-photo mean loss + λ/2·|W|² on learn's centred, scaled features)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    from edge_app.learn import heads
    from edge_app.learn.learn import SAMPLES_PER_CLASS, field_weights
    from edge_app.runtime.scoring import expected_calibration_error

    labels = sorted(p.name for p in LAB.iterdir() if p.is_dir())  # the healthy class too, as learn sees it
    pool, potato = field_pool(dev)
    x = embed(e, [p for p, _ in pool], False)[:, 0]
    y = np.array([labels.index(CLASSES.get(p.parent.name) or TOMATO[p.parent.name]) for p, _ in pool])
    is_potato = np.arange(len(y)) < potato
    rng = np.random.default_rng(0)
    lab = {c: rng.permutation(sorted((LAB / label).iterdir()))[:40 + SAMPLES_PER_CLASS] for c, label in enumerate(labels)}
    lx = {c: embed(e, list(paths), False)[:, 0] for c, paths in lab.items()}
    lab_test = np.concatenate([v[:40] for v in lx.values()])
    lab_test_y = np.repeat(list(lx), 40)
    lab_x = np.concatenate([v[40:] for v in lx.values()])
    lab_y = np.repeat(list(lx), [len(v) - 40 for v in lx.values()])
    print(f"{len(y)} field photos ({potato} potato), {len(lab_y)} lab photos remembered, {len(lab_test_y)} lab held out")
    for strength in (None, 0.01, 0.1, 0.3, 1.0, 3.0):
        field, field_potato, eces, lab_right = [], [], [], []
        for seed in range(4):
            for train, test in StratifiedKFold(5, shuffle=True, random_state=seed).split(x, y * 2 + is_potato):
                fx, fy = np.concatenate([lab_x, x[train]]), np.concatenate([lab_y, y[train]])
                weights = field_weights(fy, np.arange(len(fy)) >= len(lab_y), 0.5)
                if strength is None:  # learn's own head
                    head = heads.softmax(fx, fy, len(labels), weights=weights)
                    scores = [head.scores(q) for q in (x[test], lab_test)]
                else:  # a solver that converges at any strength; sklearn's C is 1/(λ·N) for this λ
                    mean = fx.mean(axis=0)
                    scale = float(np.sqrt(np.mean((fx - mean) ** 2)))
                    mass = np.bincount(fy, weights=weights)
                    clf = LogisticRegression(C=1 / (strength * len(fy)), max_iter=10000)
                    clf.fit((fx - mean) / scale, fy, sample_weight=weights / mass[fy] * len(fy) / len(labels))
                    scores = [clf.predict_proba((q - mean) / scale) for q in (x[test], lab_test)]
                right = scores[0].argmax(1) == y[test]
                field.append(right.mean())
                field_potato.append(right[is_potato[test]].mean())
                eces.append(expected_calibration_error(scores[0].max(1), right)["ece"])
                lab_right.append((scores[1].argmax(1) == lab_test_y).mean())
        name = "learn's head" if strength is None else f"λ = {strength}"
        print(f"{name:14s}: field {100 * np.mean(field):.1f}% (± {100 * np.std(field) / np.sqrt(len(field)):.1f}; "
              f"potato {100 * np.mean(field_potato):.1f}%), field ECE {np.mean(eces):.3f}, lab {100 * np.mean(lab_right):.1f}%")
    return 0


def layers(base: Path, size: int | None) -> int:
    """The pool on max- and GeM-pooled last feature maps and on average-pooled earlier blocks."""
    from edge_app.runtime.interpreter import load_runtime, without_default_delegates

    model = base_graph(base, size)
    e = embedder(base, size, model)
    runtime = load_runtime()
    # every tensor kept (no XNNPACK, which frees them): the feature maps are read after invoke
    interpreter = runtime.interpreter_class(model_content=bytes(graph.flatbuffer_utils.convert_object_to_bytearray(model)),
                                            experimental_preserve_all_tensors=True, **without_default_delegates(runtime))
    interpreter.allocate_tensors()
    details = interpreter.get_tensor_details()
    maps = {short: next(d for d in details if name in d["name"] and len(d["shape"]) == 4)
            for short, name in (("last", "Conv_1/Relu6"), ("block16", "expanded_conv_16/expand/Relu6"),
                                ("block13", "expanded_conv_13/expand/Relu6"), ("block10", "expanded_conv_10/expand/Relu6"))}

    def features(path: Path) -> dict[str, np.ndarray]:
        pixels = cv2.resize(read_image(path), (e.spec.width, e.spec.height), interpolation=cv2.INTER_AREA)
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], preprocess(pixels, e.spec))
        interpreter.invoke()
        out = {}
        for short, d in maps.items():
            scale, zero = d["quantization"]
            m = interpreter.get_tensor(d["index"])[0].astype(np.float32)
            m = (m - zero) * scale if scale else m
            out[f"{short} avg"], out[f"{short} max"] = m.mean(axis=(0, 1)), m.max(axis=(0, 1))
            out[f"{short} GeM"] = np.cbrt((np.maximum(m, 0) ** 3).mean(axis=(0, 1)))
        return out

    labels = list(CLASSES.values())
    pool, potato = field_pool(dev_photos())
    rows, y = [features(p) for p, _ in pool], np.array([i for _, i in pool])
    rng = np.random.default_rng(0)
    lab = [(p, i) for i, label in enumerate(labels) for p in rng.permutation(sorted((LAB / label).iterdir()))[:150]]
    lab_rows, ly = [features(p) for p, _ in lab], np.array([i for _, i in lab])

    def stack(found: list[dict], keys: tuple[str, ...]) -> np.ndarray:
        parts = [np.stack([r[k] for r in found]) for k in keys]
        return np.concatenate([v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) for v in parts], axis=1)

    for keys in (("last avg",), ("last max",), ("last GeM",), ("block16 avg",), ("block13 avg",), ("block10 avg",),
                 ("last avg", "block13 avg"), ("last avg", "block16 avg"), ("last GeM", "block13 GeM")):
        _, scores = pool_folds(stack(rows, keys), y, potato, stack(lab_rows, keys), ly)
        print(f"{' + '.join(keys):26s}: {100 * np.mean(scores):.1f}% (± {100 * np.std(scores) / np.sqrt(len(scores)):.1f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

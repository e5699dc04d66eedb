"""Would an earlier layer help ``unknown`` tell a held-out potato disease apart? The k-NN novelty of each
residual block's pooled output, alone and added to the final embedding's, on the trained int8 models.

Needs the models ``scripts/unknown_scores.py --trained`` left in OUT (``OUT/open-N/run``, one per held-out
class). Every intermediate tensor is read back from LiteRT (``experimental_preserve_all_tensors``, built-in
kernels: slower, same values). Per layer: the spatial mean of the tensor, k-NN (k = 5) against 150 random train
photos per class, the threshold accepting 95% of the val split. *Fused*: each score divided by its spread on
the val split, then added to the final embedding's. Reported: held-out class and far photos accepted, AUROC.

    .venv/bin/python scripts/unknown_layers.py --out /tmp/unknown_scores      # ~3 min per rotation, 2 cores
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from unknown_scores import ACCEPT, POTATO, far_photos, normalise  # noqa: E402

from edge_app.runtime import ImageClassifier, list_images, read_image  # noqa: E402
from edge_app.runtime.novelty import auroc, sample  # noqa: E402
from edge_app.runtime.rundir import load_split  # noqa: E402

PER_CLASS = 150
LIMIT = 300  # held-out and far photos per rotation


def pooled_layers(model: Path, threads: int):
    """``(classifier, read(paths) -> {layer: [N, C]})``: the residual blocks' outputs and the last feature map."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    clf = ImageClassifier(model, num_threads=threads, unknown=False)
    interpreter = Interpreter(model_path=str(model), num_threads=threads, experimental_preserve_all_tensors=True,
                              experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    interpreter.allocate_tensors()
    details = {d["index"]: d for d in interpreter.get_tensor_details()}
    ops = interpreter._get_ops_details()
    height = clf.input_size[0]
    layers = [int(o["outputs"][0]) for o in ops if o["op_name"] == "ADD"]
    layers.append(int([o for o in ops if o["op_name"] == "CONV_2D"][-1]["outputs"][0]))
    layers = [t for t in layers if len(details[t]["shape"]) == 4 and details[t]["shape"][1] < height]  # not the input

    def read(paths):
        out = {t: [] for t in layers}
        for path in paths:
            clf.set_input(read_image(path, clf.spec.decode_size))
            interpreter.set_tensor(clf.input_detail["index"], clf.interpreter.get_tensor(clf.input_detail["index"]))
            interpreter.invoke()
            for t in layers:
                scale, zero = details[t]["quantization"]
                value = interpreter.get_tensor(t).astype(np.float32)
                out[t].append(((value - zero) * (scale or 1.0)).mean(axis=(1, 2))[0])
        return {f"{t} {[int(d) for d in details[t]['shape'][1:]]}": np.array(v) for t, v in out.items()}

    return clf, read


def knn(reference: np.ndarray, queries: np.ndarray, k: int = 5) -> np.ndarray:
    return 1 - np.sort(normalise(queries) @ normalise(reference).T, axis=1)[:, -k:].mean(axis=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/unknown_scores"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    labels = sorted(p.name for p in POTATO.iterdir() if p.is_dir())
    far = far_photos(args.out / "far")
    rng = np.random.default_rng(0)
    results: dict[str, list] = {}
    for held_out, name in enumerate(labels):
        run = args.out / f"open-{held_out}" / "run"
        if not (run / "model_int8.tflite").is_file():
            raise SystemExit(f"no {run}/model_int8.tflite: run scripts/unknown_scores.py --trained --out {args.out}")
        _, read = pooled_layers(run / "model_int8.tflite", args.threads)
        train = load_split(run, "train")
        train = [train[i] for i in sample(np.array([c for _, c in train]), PER_CLASS)]
        near = list_images(POTATO / name)
        parts = {"train": [p for p, _ in train], "val": [p for p, _ in load_split(run, "val")],
                 "test": [p for p, _ in load_split(run, "test")],
                 "near": [near[i] for i in sorted(rng.permutation(len(near))[:LIMIT])],
                 "far": [far[i] for i in sorted(rng.permutation(len(far))[:LIMIT])]}
        features = {part: read(paths) for part, paths in parts.items()}
        layers = list(features["train"])
        scores = {layer: {part: knn(features["train"][layer], features[part][layer]) for part in parts if part != "train"}
                  for layer in layers}
        last = scores[layers[-1]]
        for layer in layers[:-1]:
            one = scores[layer]
            scores[f"last + {layer}"] = {part: last[part] / last["val"].std() + one[part] / one["val"].std()
                                         for part in last}
        for score, values in scores.items():
            threshold = float(np.quantile(values["val"], ACCEPT))
            results.setdefault(score, []).append({
                "held_out": name, "near_accepted": float((values["near"] <= threshold).mean()),
                "near_auroc": auroc(values["test"], values["near"]),
                "far_accepted": float((values["far"] <= threshold).mean()), "far_auroc": auroc(values["test"], values["far"])})
        print(f"{name}: {len(layers)} layers", flush=True)
    table = ["| layer (tensor, shape) | held-out class accepted, per rotation | mean (AUROC) | far accepted |",
             "|---|---|---|---|"]
    for score, rows in sorted(results.items(), key=lambda kv: np.mean([r["near_accepted"] for r in kv[1]])):
        table.append(f"| {score} | " + " / ".join(f"{100 * r['near_accepted']:.1f}%" for r in rows)
                     + f" | {100 * np.mean([r['near_accepted'] for r in rows]):.1f}% "
                     f"({np.mean([r['near_auroc'] for r in rows]):.3f}) | "
                     f"{100 * np.mean([r['far_accepted'] for r in rows]):.1f}% |")
    (args.out / "unknown_layers.json").write_text(json.dumps(results, indent=2))
    (args.out / "unknown_layers.md").write_text("\n".join(table) + "\n")
    print("\n".join(table))
    return 0


if __name__ == "__main__":
    sys.exit(main())

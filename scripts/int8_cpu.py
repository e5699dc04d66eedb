"""What delegate-aware int8 buys on this CPU: fp32 vs full-integer int8 vs int8 with XNNPACK's missing ops in float.

1. Speed at 224 (random weights: speed does not depend on them): MobileNetV3Small, MobileNetV3Small
   minimalistic, MobileNetV3Large and MobileNetV2, each converted by ``converter.run`` to fp32, to int8
   with ``full_integer=True`` (the converter before delegate-aware int8) and to the default int8.
   p50 at 1 and 2 threads (best of ``--rounds`` interleaved rounds), XNNPACK partitions, size.
2. Accuracy: a model trained from scratch on PlantVillage-potato (``--backbone``, default the trainer's
   MobileNetV3Small) converted the default way: the int8 drop on the held-out test split, with its
   paired statistics, and the repair when plain int8 fails.

    nice -n 19 .venv/bin/python scripts/int8_cpu.py --out /tmp/int8_cpu

Writes ``OUT/int8_cpu.json`` and ``OUT/int8_cpu.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from quant_speed import POTATO, make_splits, potato_pixels, write_run  # noqa: E402

from converter.checks import measure_latency  # noqa: E402
from converter.config import ConvertConfig  # noqa: E402
from converter.convert import run as convert  # noqa: E402
from edge_app.runtime import ImageClassifier  # noqa: E402

BACKBONES = ("mobilenet_v3_small", "mobilenet_v3_small_minimalistic", "mobilenet_v3_large", "mobilenet_v2")


def build(backbone: str, size: int, num_classes: int):
    """The trainer's shape of model: 0-255 float input, backbone with average pooling, softmax head."""
    import keras

    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    shape = (size, size, 3)
    if backbone == "mobilenet_v2":
        x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
        base = keras.applications.MobileNetV2(input_shape=shape, include_top=False, weights=None, pooling="avg")
    else:  # MobileNetV3 rescales inside
        x = inputs
        cls = keras.applications.MobileNetV3Large if "large" in backbone else keras.applications.MobileNetV3Small
        base = cls(input_shape=shape, include_top=False, weights=None, pooling="avg",
                   minimalistic=backbone.endswith("minimalistic"))
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9  # 0.999 leaves moving statistics unsettled after a few hundred steps
    return keras.Model(inputs, keras.layers.Dense(num_classes, activation="softmax")(base(x)))


def speed(out: Path, backbone: str, threads, runs: int, rounds: int) -> dict:
    import keras

    labels, splits = make_splits(POTATO)
    keras.utils.set_random_seed(0)
    run = write_run(out / backbone, build(backbone, 224, len(labels)), labels, splits, 224, backbone, POTATO)
    common = dict(num_threads=1, runs=20, calibration_size=100, max_eval_images=30, max_accuracy_drop=100)
    aware = convert(ConvertConfig(run, quants=("fp32", "int8"), **common))
    full = convert(ConvertConfig(run, quants=("int8",), full_integer=True, out_dir=run / "full_integer", **common))
    variants = {"fp32": aware["variants"][0], "int8 full integer": full["variants"][0],
                "int8 delegate-aware": aware["variants"][1]}
    rows = {name: {"size_bytes": v["size_bytes"], "partitions": v["graph"]["xnnpack_partitions"],
                   "outside_xnnpack": v["graph"]["cpu_fallback_ops"],
                   "kept_float": (v.get("kept_float") or {}).get("ops", {})} for name, v in variants.items()}
    for _ in range(rounds):  # rounds outermost: a burst of load hits every variant, not one
        for name, v in variants.items():
            for n in threads:
                classifier = ImageClassifier(v["path"], num_threads=n)
                p50 = measure_latency(classifier, warmup=10, runs=runs).p50
                rows[name][f"p50_ms_{n}t"] = min(p50, rows[name].get(f"p50_ms_{n}t", p50))
                del classifier
    return rows


def accuracy(out: Path, backbone: str, size: int, epochs: int, run: Path | None = None) -> dict:
    """Train from scratch on potato (or take ``run``), convert fp32 + int8 the default way; the int8 facts."""
    if run is None:
        run, train_s = train(out, backbone, size, epochs)
    else:
        train_s = 0.0
    report = convert(ConvertConfig(run, quants=("fp32", "int8"), num_threads=1, runs=20, calibration_size=300))
    plain = convert(ConvertConfig(run, quants=("int8",), num_threads=1, runs=20, calibration_size=300, repair=False,
                                  out_dir=run / "no_repair"))
    int8 = report["variants"][1]
    return {"backbone": backbone, "image_size": size, "epochs": epochs, "train_seconds": round(train_s),
            "test_images": report["check_data"]["num_images"], "float_accuracy": report["float_accuracy"],
            "int8_accuracy": int8["accuracy"], "int8_drop_pp": int8["accuracy_drop_pp"], "drop_test": int8["drop_test"],
            "kept_float": int8.get("kept_float"), "repair": int8.get("repair"), "passed": int8["passed"],
            "without_repair": {k: plain["variants"][0][k] for k in ("accuracy_drop_pp", "drop_test", "passed")},
            "size_vs_fp32": int8["size_vs_fp32"]}


def train(out: Path, backbone: str, size: int, epochs: int) -> tuple[Path, float]:
    import keras

    labels, splits = make_splits(POTATO)
    start = time.time()
    (x_train, y_train), (x_val, y_val) = potato_pixels(splits, "train", size), potato_pixels(splits, "val", size)
    keras.utils.set_random_seed(0)
    model = build(backbone, size, len(labels))
    counts = np.bincount(y_train)
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=epochs, batch_size=32, verbose=2,
              class_weight={i: len(y_train) / (len(counts) * n) for i, n in enumerate(counts)},
              callbacks=[keras.callbacks.ModelCheckpoint(str(out / "best.keras"), monitor="val_accuracy",
                                                         save_best_only=True)])
    model = keras.models.load_model(out / "best.keras")
    return write_run(out / f"potato_{backbone}", model, labels, splits, size, backbone, POTATO), time.time() - start


def markdown(results: dict, threads) -> str:
    lines = [f"Machine: {results['cpu']}, {results['runtime']}; p50 ms, best of {results['rounds']} rounds.", ""]
    for backbone, rows in results["speed"].items():
        fp32 = rows["fp32"]
        lines += [f"### {backbone} 224", "",
                  "| variant | MB | vs fp32 | " + " | ".join(f"p50 ms {n}t (speed-up)" for n in threads)
                  + " | partitions | kept float |", "|---|---|---|" + "---|" * len(threads) + "---|---|"]
        for name, r in rows.items():
            cells = [f"{r[f'p50_ms_{n}t']:.2f} ({fp32[f'p50_ms_{n}t'] / r[f'p50_ms_{n}t']:.2f}×)" for n in threads]
            kept = ", ".join(f"{op} {k}" for op, k in r["kept_float"].items()) or "—"
            lines.append(f"| {name} | {r['size_bytes'] / 1e6:.2f} | {r['size_bytes'] / fp32['size_bytes']:.3f} | "
                         + " | ".join(cells) + f" | {r['partitions']} | {kept} |")
        lines.append("")
    acc = results.get("accuracy")
    if acc:
        test = acc["drop_test"]
        lines += [f"### Accuracy: {acc['backbone']} {acc['image_size']}px trained on potato ({acc['epochs']} epochs)",
                  "", f"Test split {acc['test_images']} images: float {100 * acc['float_accuracy']:.2f}%, int8 "
                  f"{100 * acc['int8_accuracy']:.2f}% (drop {acc['int8_drop_pp']:+.2f} pp, 95% interval "
                  f"{test['ci95_pp']}, {test['lost']} lost / {test['gained']} gained, p {test['p_value']}); "
                  f"without repair: drop {acc['without_repair']['accuracy_drop_pp']:+.2f} pp; size "
                  f"{acc['size_vs_fp32']}× fp32; repair: {(acc['repair'] or {}).get('result', 'not needed')}.", ""]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/int8_cpu"))
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backbone", default="mobilenet_v3_small", help="backbone of the trained accuracy model")
    parser.add_argument("--size", type=int, default=128, help="image size of the trained accuracy model")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--run", type=Path, default=None, help="a trained potato run directory: skip training")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--skip-speed", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    threads = tuple(int(t) for t in args.threads.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    from edge_app.runtime import load_runtime
    from edge_app.runtime.device import cpu_model

    runtime = load_runtime()
    results = {"cpu": cpu_model(), "runtime": f"{runtime.name} {runtime.version}", "rounds": args.rounds, "speed": {}}
    if not args.skip_speed:
        for backbone in args.backbones.split(","):
            results["speed"][backbone] = speed(args.out, backbone, threads, args.runs, args.rounds)
            print(markdown(results, threads), flush=True)
    if not args.skip_accuracy:
        results["accuracy"] = accuracy(args.out, args.backbone, args.size, args.epochs, args.run)
    (args.out / "int8_cpu.json").write_text(json.dumps(results, indent=2))
    (args.out / "int8_cpu.md").write_text(markdown(results, threads))
    print(markdown(results, threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())

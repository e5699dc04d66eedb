"""Measure what quantization buys on this machine: size, accuracy drop and latency of every target.

1. Accuracy: MobileNetV2 (``weights=None``) trained briefly from scratch on PlantVillage-potato at a small
   image size, written as a run directory per the run contract, then ``converter.run`` on every target
   (accuracy against Keras on the held-out test split, calibration from the training split).
2. Speed at 224: MobileNetV2, MobileNetV3Small and MobileNetV3Small-minimalistic, random weights (speed
   does not depend on the weights), converted to fp32 and int8 (+ fp16/dynamic for V2): latency at 1 and 2
   threads, XNNPACK partitions, ops left out of the delegate.

Run it niced; it takes about 10-15 minutes on 2 cores::

    nice -n 19 .venv/bin/python scripts/quant_speed.py --out /tmp/quant_speed

Writes ``OUT/quant_speed.json`` and ``OUT/quant_speed.md`` (and a run directory per model).
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

from converter.calibration import float_spec  # noqa: E402
from converter.checks import measure_latency  # noqa: E402
from converter.config import ConvertConfig  # noqa: E402
from converter.convert import run as convert  # noqa: E402
from edge_app.runtime import ImageClassifier, list_images, preprocess, read_image  # noqa: E402

POTATO = Path(os.environ.get("EDGECLS_SHARED", REPO.parent / "shared")) / "datasets" / "plantvillage-potato"
log = logging.getLogger("edgecls")


def make_splits(data: Path, seed: int = 0) -> tuple[list[str], dict[str, list]]:
    from sklearn.model_selection import train_test_split

    labels = sorted(p.name for p in data.iterdir() if p.is_dir())
    items = [(str(p.relative_to(data)), i) for i, label in enumerate(labels) for p in list_images(data / label)]
    y = [c for _, c in items]
    train, rest = train_test_split(items, test_size=0.3, stratify=y, random_state=seed)
    val, test = train_test_split(rest, test_size=0.5, stratify=[c for _, c in rest], random_state=seed)
    return labels, {"train": [list(i) for i in train], "val": [list(i) for i in val], "test": [list(i) for i in test]}


def build(backbone: str, size: int, num_classes: int):
    import keras

    inputs = keras.Input((size, size, 3), dtype="float32", name="image")
    if backbone == "mobilenet_v2":
        x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
        base = keras.applications.MobileNetV2(input_shape=(size, size, 3), include_top=False, weights=None,
                                              pooling="avg")
    else:  # MobileNetV3 rescales inside (include_preprocessing=True)
        x = inputs
        base = keras.applications.MobileNetV3Small(input_shape=(size, size, 3), include_top=False, weights=None,
                                                   pooling="avg", minimalistic=backbone.endswith("minimalistic"))
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.9  # 0.999 leaves moving statistics unsettled after a few hundred steps
    outputs = keras.layers.Dense(num_classes, activation="softmax")(base(x))
    return keras.Model(inputs, outputs)


def write_run(run: Path, model, labels, splits, size: int, backbone: str, data: Path) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    model.save(run / "model.keras")
    (run / "labels.txt").write_text("\n".join(labels) + "\n")
    config = {"labels": labels, "image_size": [size, size], "backbone": backbone, "weights": "none", "seed": 0,
              "data_dir": str(data), "splits": splits, "split_source": {"train": "carved", "val": "carved",
                                                                       "test": "carved"},
              "preprocessing": {"mean": 0, "std": 1, "channel_order": "RGB",
                                "resize": "area when shrinking, bilinear when enlarging, stretched"}}
    (run / "config.json").write_text(json.dumps(config))
    return run


def potato_pixels(splits: dict, split: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One split's float32 0-255 pixels at ``size``, as the runtime decodes and resizes them, and its labels."""
    spec = float_spec(size, size, (0.0,), (1.0,))
    return (np.concatenate([preprocess(read_image(POTATO / rel), spec) for rel, _ in splits[split]]),
            np.array([c for _, c in splits[split]]))


def train_accuracy_run(out: Path, size: int, epochs: int) -> tuple[Path, dict]:
    import keras

    labels, splits = make_splits(POTATO)
    start = time.time()
    (x_train, y_train), (x_val, y_val) = potato_pixels(splits, "train", size), potato_pixels(splits, "val", size)
    keras.utils.set_random_seed(0)
    model = build("mobilenet_v2", size, len(labels))
    counts = np.bincount(y_train)
    class_weight = {i: len(y_train) / (len(counts) * n) for i, n in enumerate(counts)}
    model.compile(keras.optimizers.Adam(1e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(x_train, y_train, validation_data=(x_val, y_val), epochs=epochs, batch_size=32,
                        class_weight=class_weight, verbose=2,
                        callbacks=[keras.callbacks.ModelCheckpoint(str(out / "best.keras"), monitor="val_accuracy",
                                                                   save_best_only=True)])
    model = keras.models.load_model(out / "best.keras")
    run = write_run(out / "potato_mobilenet_v2", model, labels, splits, size, "mobilenet_v2", POTATO)
    info = {"train_seconds": round(time.time() - start, 1), "epochs": epochs, "image_size": size,
            "best_val_accuracy": max(history.history["val_accuracy"]), "train_images": len(y_train)}
    return run, info


def latency_table(report: dict, threads: tuple[int, ...], runs: int, rounds: int = 1) -> list[dict]:
    """Rows of the results table; latency is the best p50 of ``rounds`` rounds (shared machines are noisy)."""
    rows = []
    for v in report["variants"]:
        row = {"quant": v["quant"], "size_bytes": v["size_bytes"], "accuracy": v["accuracy"],
               "accuracy_drop_pp": v["accuracy_drop_pp"], "agreement": v["agreement"],
               "xnnpack_partitions": v["graph"]["xnnpack_partitions"], "cpu_fallback_ops": v["graph"]["cpu_fallback_ops"],
               "warnings": v["warnings"]}
        rows.append(row)
    for _ in range(rounds):  # rounds outermost: a burst of load hits every variant, not one
        for v, row in zip(report["variants"], rows, strict=True):
            for n in threads:
                classifier = ImageClassifier(v["path"], num_threads=n)
                p50 = measure_latency(classifier, warmup=10, runs=runs).p50
                row[f"p50_ms_{n}t"] = min(p50, row.get(f"p50_ms_{n}t", p50))
                del classifier
    return rows


def interpreter_options(models: dict[str, Path], threads: tuple[int, ...], runs: int) -> list[dict]:
    """p50 of each model under the interpreter options LiteRT exposes (is there a runtime fix for int8 V3?)."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    variants = {
        "default (XNNPACK)": {},
        "XNNPACK latest features": {"experimental_default_delegate_latest_features": True},
        "no XNNPACK (builtin kernels)": {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES},
    }
    rows = []
    for name, path in models.items():
        for option, kwargs in variants.items():
            row = {"model": name, "option": option}
            for n in threads:
                interpreter = Interpreter(model_path=str(path), num_threads=n, **kwargs)
                interpreter.allocate_tensors()
                detail = interpreter.get_input_details()[0]
                interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
                for _ in range(10):
                    interpreter.invoke()
                times = []
                for _ in range(runs):
                    start = time.perf_counter()
                    interpreter.invoke()
                    times.append((time.perf_counter() - start) * 1e3)
                row[f"p50_ms_{n}t"] = round(float(np.median(times)), 2)
                row["partitions"] = sum(o["op_name"] == "DELEGATE" for o in interpreter._get_ops_details())
            rows.append(row)
    return rows


def markdown(results: dict, threads) -> str:
    lines = []
    for name, block in results["models"].items():
        lines += [f"### {name}", "", block["note"], "",
                  "| variant | MB | vs fp32 | accuracy | drop pp | agreement | "
                  + " | ".join(f"p50 ms {n}t" for n in threads) + " | XNNPACK partitions | outside XNNPACK |",
                  "|---|---|---|---|---|---|" + "---|" * len(threads) + "---|---|"]
        fp32 = next((r["size_bytes"] for r in block["rows"] if r["quant"] == "fp32"), None)
        for r in block["rows"]:
            fell = ", ".join(f"{k} {n}" for k, n in r["cpu_fallback_ops"].items()) or "—"
            lines.append(f"| {r['quant']} | {r['size_bytes'] / 1e6:.2f} | "
                         f"{(100 * r['size_bytes'] / fp32) if fp32 else 0:.0f}% | {100 * r['accuracy']:.2f}% | "
                         f"{r['accuracy_drop_pp']:+.2f} | {100 * r['agreement']:.2f}% | "
                         + " | ".join(f"{r[f'p50_ms_{n}t']:.2f}" for n in threads)
                         + f" | {r['xnnpack_partitions']} | {fell} |")
        fastest = {n: min(block["rows"], key=lambda r: r[f"p50_ms_{n}t"])["quant"] for n in threads}
        lines += ["", "Fastest: " + ", ".join(f"{n} thread(s): **{q}**" for n, q in fastest.items()), ""]
        warnings = sorted({w for r in block["rows"] for w in r["warnings"] if "HARD_SWISH" in w})
        lines += [f"- {w}" for w in warnings] + ([""] if warnings else [])
    if results.get("interpreter_options"):
        lines += ["### Interpreter options (int8 models)", "",
                  "| model | option | " + " | ".join(f"p50 ms {n}t" for n in threads) + " | partitions |",
                  "|---|---|" + "---|" * len(threads) + "---|"]
        for r in results["interpreter_options"]:
            lines.append(f"| {r['model']} | {r['option']} | " + " | ".join(f"{r[f'p50_ms_{n}t']:.2f}" for n in threads)
                         + f" | {r['partitions']} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/quant_speed"))
    parser.add_argument("--size", type=int, default=96, help="image size of the trained (accuracy) model")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--skip-speed", action="store_true", help="only the trained accuracy model")
    parser.add_argument("--run", type=Path, default=None, help="use this trained run directory instead of training")
    parser.add_argument("--remeasure", action="store_true",
                        help="only measure latency again (best of --rounds) for the models already in --out")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--options-only", action="store_true",
                        help="only the interpreter-options table, on the int8 models already in --out")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    threads = tuple(int(t) for t in args.threads.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"models": {}}
    if args.remeasure:
        results = json.loads((args.out / "quant_speed.json").read_text())
        for block, folder in zip(results["models"].values(),
                                 ["potato_mobilenet_v2", "speed_mobilenet_v2", "speed_mobilenet_v3_small",
                                  "speed_mobilenet_v3_small_minimalistic"], strict=True):
            report = json.loads((args.out / folder / "conversion.json").read_text())
            block["rows"] = latency_table(report, threads, args.runs, args.rounds)
            json.dump(results, open(args.out / "quant_speed.json", "w"), indent=2)
        args.options_only = True
    if args.options_only:
        results = json.loads((args.out / "quant_speed.json").read_text())
        models = {b: args.out / f"speed_{b}" / "model_int8.tflite"
                  for b in ("mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_small_minimalistic")}
        results["interpreter_options"] = interpreter_options(models, threads, args.runs)
        json.dump(results, open(args.out / "quant_speed.json", "w"), indent=2)
        (args.out / "quant_speed.md").write_text(markdown(results, threads))
        print(markdown(results, threads))
        return 0

    if args.run:
        run, info = args.run, {"note": "run directory given"}
    else:
        run, info = train_accuracy_run(args.out, args.size, args.epochs)
    report = convert(ConvertConfig(run, num_threads=1, runs=args.runs, max_accuracy_drop=1.0))
    results["models"][f"MobileNetV2 {args.size}px, trained"] = {
        "note": f"MobileNetV2 1.0, weights=None, trained from scratch on PlantVillage-potato at {args.size}px: "
                f"{json.dumps(info)}. Accuracy on the held-out test split ({report['check_data']['num_images']} "
                f"images; float {100 * report['float_accuracy']:.2f}%), int8 calibrated on "
                f"{report['calibration']['num_images']} class-balanced training images.",
        "info": info, "rows": latency_table(report, threads, args.runs)}
    json.dump(results, open(args.out / "quant_speed.json", "w"), indent=2)

    if not args.skip_speed:
        labels, splits = make_splits(POTATO)
        for backbone, quants in (("mobilenet_v2", ("fp32", "fp16", "dynamic", "int8")),
                                 ("mobilenet_v3_small", ("fp32", "int8")),
                                 ("mobilenet_v3_small_minimalistic", ("fp32", "int8"))):
            import keras

            keras.utils.set_random_seed(0)
            run = write_run(args.out / f"speed_{backbone}", build(backbone, 224, len(labels)), labels, splits, 224,
                            backbone, POTATO)
            report = convert(ConvertConfig(run, quants=quants, num_threads=1, runs=args.runs, calibration_size=100,
                                           max_eval_images=30, max_accuracy_drop=100))
            results["models"][f"{backbone} 224px, random weights"] = {
                "note": "Random weights: speed, size and graph facts only (accuracy columns are meaningless).",
                "rows": latency_table(report, threads, args.runs)}
            json.dump(results, open(args.out / "quant_speed.json", "w"), indent=2)
    (args.out / "quant_speed.md").write_text(markdown(results, threads))
    print(markdown(results, threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())

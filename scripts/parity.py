"""x86-64 against the Pi's architecture: the same pre-processed inputs through the same models, output by output.

    .venv/bin/python scripts/parity.py --demo runs/demo --out runs/parity   # after: make test-pi (the arm64 root)

1. On the host: every model's inputs are decoded and pre-processed once, exactly as the device does it
   (``ImageClassifier``: decode size, resize, normalization, quantization), and saved as arrays.
2. The host runs them (``x86_64``), then the emulated arm64 root runs the very same arrays
   (``pi/pi_root.sh exec``: Debian Trixie, Python 3.13, ai-edge-litert's aarch64 wheel, XNNPACK).
3. Raw outputs are compared: share of images whose output is bit-identical, the largest difference (in
   quantization steps for uint8/int8 outputs, absolute for float), top-1 agreement; and for the demo's
   converted models the converter's accuracy check (its held-out images, its own selection) on both sides.

Models: the demo run's ``model_fp32``/``model_int8`` (``--demo RUN``), Coral's ImageNet and bird models in
``../shared/models``, and the ImageNet MobileNetV2 that ships in ``edge_app/learn/models``. Writes
``OUT/parity.json`` and ``OUT/parity.md``; with ``--record`` (the default when ``--demo`` is given) the run's
``conversion.json``/``conversion.md`` get an arm64 line in ``checked_on``. Emulated timings mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("EDGECLS_SHARED", REPO.parent / "shared"))
PI_ROOT = REPO / "pi" / "pi_root.sh"
THREADS = 2  # the same on both sides: XNNPACK's float sums may split by thread


def shipped_models() -> dict[str, Path]:
    """Coral's models and learn's shipped base; a file with the same bytes as one already listed is run once."""
    import hashlib

    models = {"coral/imagenet": SHARED / "models" / "mobilenet_v2_1.0_224_quant.tflite",
              "coral/inat_bird": SHARED / "models" / "mobilenet_v2_1.0_224_inat_bird_quant.tflite"}
    seen = {hashlib.sha256(p.read_bytes()).hexdigest(): key for key, p in models.items()}
    for path in sorted((REPO / "edge_app" / "learn" / "models").glob("*.tflite")):
        same = seen.get(hashlib.sha256(path.read_bytes()).hexdigest())
        if same:
            print(f"{path.relative_to(REPO)}: the same bytes as {same}", file=sys.stderr)
        else:
            models[f"learn/{path.stem}"] = path
    return models


def photos(count: int) -> list[Path]:
    """The shared photos plus ``count`` potato leaves taken evenly from each class (real, varied inputs)."""
    out = sorted(p for p in (SHARED / "images").iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp"))
    folders = sorted(p for p in (SHARED / "datasets" / "plantvillage-potato").iterdir() if p.is_dir())
    for folder in folders:
        files = sorted(folder.iterdir())
        step = max(1, len(files) // max(1, count // len(folders)))
        out += files[::step][: count // len(folders)]
    return out


def converter_check_set(run: Path, labels: list[str]) -> tuple[list[Path], np.ndarray]:
    """The held-out images the converter checked the run's variants on, chosen as it chooses them."""
    from converter.config import ConvertConfig
    from converter.source import load_source, stratified_sample

    config = ConvertConfig(run)
    source = load_source(config)
    items = stratified_sample(source.test, config.max_eval_images, config.seed)
    if [*source.labels] != labels:
        raise SystemExit(f"{run}: the run's labels {source.labels} are not the model's {labels}")
    return [p for p, _ in items], np.array([label for _, label in items])


def prepare(work: Path, demo: Path | None, count: int) -> dict:
    """Pre-process every model's inputs on the host into ``work`` (models copied beside them); returns the plan."""
    from edge_app.runtime import ImageClassifier, preprocess
    from edge_app.runtime.rundir import LEARNED

    models = dict(shipped_models())
    checks = {}
    if demo is not None:
        conversion = json.loads((demo / "conversion.json").read_text())
        for variant in conversion["variants"]:
            key = f"demo/{variant['quant']}"
            models[key] = Path(variant["path"])
            checks[key] = {"converter_accuracy": variant["accuracy"], "quant": variant["quant"]}
        if (demo / LEARNED).is_file():  # the demo's edgecls-learn model: photos, no check set of its own
            models["demo/learned"] = demo / LEARNED
    general = photos(count)
    plan = {"models": {}, "demo": str(demo) if demo else None}
    for d in ("models", "inputs"):
        (work / d).mkdir(parents=True, exist_ok=True)
    for key, path in models.items():
        clf = ImageClassifier(path, num_threads=THREADS)
        truth = None
        if key in checks:
            files, truth = converter_check_set(demo, clf.labels)
        else:
            files = general
        tensors = np.concatenate([preprocess(clf.read_image(f), clf.spec) for f in files])
        name = key.replace("/", "__")
        shutil.copy(path, work / "models" / f"{name}.tflite")
        np.save(work / "inputs" / f"{name}.npy", tensors)
        if truth is not None:
            np.save(work / "inputs" / f"{name}.truth.npy", truth)
        plan["models"][key] = {"name": name, "source": str(path), "images": len(files),
                               "input_dtype": np.dtype(clf.spec.dtype).name,
                               "output_dtype": np.dtype(clf.output_detail["dtype"]).name,
                               "output_quantization": [float(q) for q in clf.output_detail["quantization"]],
                               "truth": truth is not None, **checks.get(key, {})}
    (work / "plan.json").write_text(json.dumps(plan, indent=1))
    return plan


def worker(work: Path, side: str) -> None:
    """Run every planned model on its saved inputs here; raw outputs to ``work/<side>/``. No TensorFlow needed."""
    from edge_app.runtime import ImageClassifier, load_runtime

    plan = json.loads((work / "plan.json").read_text())
    out = work / side
    out.mkdir(exist_ok=True)
    facts = {"machine": platform.machine(), "python": platform.python_version(), "models": {},
             "qemu_cpu": os.environ.get("QEMU_CPU")}  # pi/pi_root.sh emulates a Pi 5's Cortex-A76
    runtime = load_runtime()
    facts["runtime"] = f"{runtime.name} {runtime.version}"
    for key, entry in plan["models"].items():
        clf = ImageClassifier(work / "models" / f"{entry['name']}.tflite", num_threads=THREADS)
        tensors = np.load(work / "inputs" / f"{entry['name']}.npy")
        outputs = []
        for row in tensors:
            clf.set_tensor(row[None])
            clf.invoke()
            outputs.append(clf.interpreter.get_tensor(clf.output_detail["index"]).reshape(-1).copy())
        np.save(out / f"{entry['name']}.npy", np.stack(outputs))
        facts["models"][key] = clf.kernels.to_dict() if clf.kernels else None
        print(f"{side}: {key}: {len(outputs)} images, {clf.kernels.summary() if clf.kernels else '?'}", flush=True)
    (out / "facts.json").write_text(json.dumps(facts, indent=1))


def run_arm64(work: Path) -> None:
    """The worker inside the emulated root: ``work`` is mounted at /out there, the repository read-only."""
    env = {**os.environ, "EDGECLS_PI_OUT": str(work)}
    done = subprocess.run([str(PI_ROOT), "exec", "python", "/work/repo/scripts/parity.py", "--worker", "/out",
                           "--side", "arm64"], env=env)
    if done.returncode == 3:
        raise SystemExit("no arm64 root: build it first with make test-pi (or pi/pi_root.sh build)")
    if done.returncode:
        raise SystemExit(f"the arm64 worker failed (exit {done.returncode})")


def compare(work: Path, plan: dict) -> dict:
    """Per model: bit-identical share, largest difference, top-1 agreement, accuracy on both sides."""
    rows = []
    sides = {s: json.loads((work / s / "facts.json").read_text()) for s in ("x86_64", "arm64")}
    for key, entry in plan["models"].items():
        x86, arm = (np.load(work / s / f"{entry['name']}.npy") for s in ("x86_64", "arm64"))
        quantized = entry["output_dtype"] in ("uint8", "int8")
        diff = np.abs(x86.astype(np.float64) - arm.astype(np.float64))  # float64: uint8 subtraction would wrap
        row = {"model": key, "images": entry["images"], "output": entry["output_dtype"],
               "bit_identical_images": float(np.mean(np.all(diff == 0, axis=1))),
               "bit_identical_values": float(np.mean(diff == 0)),
               "max_diff": float(diff.max()), "max_diff_unit": "steps" if quantized else "abs",
               "top1_agreement": float(np.mean(x86.argmax(1) == arm.argmax(1))),
               "kernels": {s: sides[s]["models"].get(key) for s in sides}}
        if entry["truth"]:
            truth = np.load(work / "inputs" / f"{entry['name']}.truth.npy")
            row["accuracy"] = {"converter": entry["converter_accuracy"],
                               "x86_64": float(np.mean(x86.argmax(1) == truth)),
                               "arm64": float(np.mean(arm.argmax(1) == truth))}
        rows.append(row)
    return {"sides": {s: {k: v for k, v in f.items() if k != "models"} for s, f in sides.items()},
            "demo": plan["demo"], "threads": THREADS, "results": rows}


def site(report: dict, side: str, emulated: bool) -> str:
    from converter.report import check_site

    facts = report["sides"][side]
    demo = [r for r in report["results"] if r["model"].startswith("demo/")]
    variants = [{"kernels": r["kernels"][side]} for r in demo] or [{"kernels": r["kernels"][side]}
                                                                  for r in report["results"]]
    return check_site(facts["machine"], facts["python"], variants, emulated)


def markdown(report: dict) -> str:
    pct = lambda x: "—" if x is None else f"{100 * x:.2f}%"  # noqa: E731
    lines = ["# Parity: x86-64 vs arm64", "",
             f"The same pre-processed inputs through the same models, {report['threads']} threads each: "
             f"{site(report, 'x86_64', False)} with {report['sides']['x86_64']['runtime']} against "
             f"{site(report, 'arm64', True)} with {report['sides']['arm64']['runtime']} (qemu-user, CPU "
             f"{report['sides']['arm64'].get('qemu_cpu') or 'default'}; timings there mean nothing). Max diff: in "
             "quantization steps for uint8/int8 outputs, absolute for float.", "",
             "| model | images | output | bit-identical images | bit-identical values | max diff | top-1 agreement "
             "| kernels x86 / arm64 |", "|---|---:|---|---:|---:|---:|---:|---|"]
    for r in report["results"]:
        k = r["kernels"]
        cell = " / ".join("?" if k[s] is None else f"{k[s]['delegate'] or 'builtin'} {k[s]['delegated_ops']}/"
                          f"{k[s]['total_ops']}" for s in ("x86_64", "arm64"))
        unit = " steps" if r["max_diff_unit"] == "steps" else ""
        lines.append(f"| {r['model']} | {r['images']} | {r['output']} | {pct(r['bit_identical_images'])} | "
                     f"{pct(r['bit_identical_values'])} | {r['max_diff']:.4g}{unit} | {pct(r['top1_agreement'])} | {cell} |")
    checked = [r for r in report["results"] if "accuracy" in r]
    if checked:
        lines += ["", f"The converter's accuracy check of `{report['demo']}` (its held-out images, chosen as it "
                  "chooses them), re-run on both sides:", "",
                  "| variant | conversion.json | x86_64 here | arm64 |", "|---|---:|---:|---:|"]
        for r in checked:
            a = r["accuracy"]
            lines.append(f"| {r['model']} | {pct(a['converter'])} | {pct(a['x86_64'])} | {pct(a['arm64'])} |")
    return "\n".join(lines) + "\n"


def record(demo: Path, report: dict) -> None:
    """Add the arm64 check to the run's ``conversion.json``/``conversion.md`` (``checked_on``)."""
    from converter.report import write_reports

    conversion = json.loads((demo / "conversion.json").read_text())
    accuracy = ", ".join(f"{r['model'].split('/')[1]} accuracy {100 * r['accuracy']['arm64']:.2f}%"
                         for r in report["results"] if "accuracy" in r)
    line = f"{site(report, 'arm64', True)}: {accuracy} (scripts/parity.py)"
    conversion["checked_on"] = [c for c in conversion.get("checked_on", []) if not c.startswith("aarch64 ")] + [line]
    write_reports(demo, conversion)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo", type=Path, help="a converted run directory (edgecls demo --out RUN)")
    parser.add_argument("--out", type=Path, default=Path("runs/parity"), help="where parity.json/.md go")
    parser.add_argument("--images", type=int, default=48, help="potato photos for the shipped models (+ shared/images)")
    parser.add_argument("--record", action=argparse.BooleanOptionalAction, default=None,
                        help="add the arm64 line to the demo run's conversion reports (default: with --demo)")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--side", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.side)
        return 0
    work = args.out.resolve() / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    plan = prepare(work, args.demo.resolve() if args.demo else None, args.images)
    worker(work, "x86_64")
    run_arm64(work)
    report = compare(work, plan)
    (args.out / "parity.json").write_text(json.dumps(report, indent=1) + "\n")
    text = markdown(report)
    (args.out / "parity.md").write_text(text)
    print(text)
    if args.demo and args.record is not False:
        record(args.demo.resolve(), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Lab against field, and how many field photos close the gap: the learning curve behind docs/field.md.

The potato field photos of ``datasets/plantdoc-field`` are split once (seeded, per class) into a *dev* part,
which the models may learn from, and a *report* part, which only measures (never used to choose anything).
Every figure comes from the real commands (``edgecls learn``, ``edgecls eval``, ``edgecls classify``), so it
is what a kiosk would get:

- device path, ``learn --field``: a head on the base's embedding from all the lab photos and ``k`` dev field
  photos per class (``k`` = 0, 5, 10, 20, all; three seeded draws below "all");
- device path, the kiosk's loop: the lab model learned first, then ``learn DEV_k --base lab.tflite --as-field``
  (what Apply runs on the kiosk's labelled frames);
- host path: run directories trained with ``edgecls train --field`` (``--host k=RUN``), their int8 models.

For each: field top-1 on the report part, the share of it called ``unknown``, the share right *and* shown
(what a farmer sees), lab accuracy, and the share of non-leaf photos called ``unknown``.

    nice .venv/bin/python scripts/field_curve.py --out /tmp/field_curve \\
        --host 0=/tmp/runs/lab_only --host all=/tmp/runs/field_all
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("EDGECLS_SHARED", REPO.parent / "shared"))
LAB = SHARED / "datasets" / "plantvillage-potato"
FIELD = SHARED / "datasets" / "plantdoc-field"
CLASSES = {"potato_early_blight": "Potato___Early_blight", "potato_late_blight": "Potato___Late_blight"}
TOMATO = {"tomato_early_blight": "Potato___Early_blight", "tomato_late_blight": "Potato___Late_blight"}
SIZES = (0, 5, 10, 20, None)
REPORT_SHARE, SPLIT_SEED = 0.4, 2026


def edgecls(*args) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "edgecls", *map(str, args)], capture_output=True, text=True,
                          cwd=REPO)
    if done.returncode != 0:
        raise SystemExit(f"edgecls {' '.join(map(str, args[:3]))} failed: {done.stderr.strip()[-500:]}")
    return done


def split(out: Path) -> tuple[dict[str, list[Path]], Path]:
    """The dev photos per class, and the report folder (symlinks named like the model's classes)."""
    rng = random.Random(SPLIT_SEED)
    dev = {}
    report = out / "report"
    for folder, label in CLASSES.items():
        photos = sorted((FIELD / folder).iterdir())
        rng.shuffle(photos)
        n = round(len(photos) * REPORT_SHARE)
        (report / label).mkdir(parents=True, exist_ok=True)
        for p in photos[:n]:
            (report / label / p.name).symlink_to(p)
        dev[label] = photos[n:]
    return dev, report


def subset(dev: dict[str, list[Path]], k: int | None, seed: int, folder: Path, tomato: bool) -> Path:
    shutil.rmtree(folder, ignore_errors=True)
    rng = random.Random(seed)
    for label, photos in dev.items():
        chosen = photos if k is None else rng.sample(photos, min(k, len(photos)))
        (folder / label).mkdir(parents=True)
        for p in chosen:
            (folder / label / p.name).symlink_to(p)
    if tomato:  # the same pathogens on another crop: more field photos of each disease
        for source, label in TOMATO.items():
            for p in sorted((FIELD / source).iterdir()):
                (folder / label / f"tomato-{p.name}").symlink_to(p)
    return folder


def measure(model: Path, report: Path, others: Path) -> dict:
    result = json.loads(edgecls("eval", model, report, "--json").stdout)
    answers = [json.loads(line) for line in edgecls("classify", model, others, "--json", "-q").stdout.splitlines()]
    answers = [a for a in answers if "unknown" in a]
    return {"field_top1": result["accuracy"], "field_unknown": result.get("unknown_rate"),
            "field_shown": result.get("accuracy_shown"), "field_n": result["num_images"],
            "non_leaves_unknown": sum(a["unknown"] for a in answers) / max(1, len(answers)),
            "lab_accuracy": result.get("lab_accuracy")}


def others(out: Path) -> Path:
    """Photos that are not leaves: ../shared/images and the bundled textures' test part."""
    folder = out / "others"
    folder.mkdir(exist_ok=True)
    sources = list((SHARED / "images").iterdir()) + sorted((REPO / "edgecls" / "sample_data" / "textures" / "test")
                                                           .rglob("*.jpg"))
    for i, p in enumerate(sources):
        (folder / f"{i:04d}{p.suffix}").symlink_to(p.resolve())
    return folder


def mean(rows: list[dict]) -> dict:
    return {k: (sum(r[k] for r in rows) / len(rows) if all(r[k] is not None for r in rows) else None)
            for k in rows[0]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--base", type=Path, default=None, help="learn's --base (default: the shipped ImageNet one)")
    parser.add_argument("--input-size", type=int, default=None, metavar="N", help="learn's --input-size")
    parser.add_argument("--tomato", action="store_true", help="add the tomato blight field photos to every k > 0")
    parser.add_argument("--draws", type=int, default=3, help="seeded draws per k below 'all'")
    parser.add_argument("--host", action="append", default=[], metavar="K=RUN",
                        help="a run directory trained with that many field photos per class ('all', '0')")
    args = parser.parse_args()
    out = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    dev, report = split(out)
    non_leaves = others(out)
    base = ["--base", args.base] if args.base else []
    if args.input_size:
        base += ["--input-size", args.input_size]
    lab_model = out / "lab.tflite"
    edgecls("learn", LAB, "--out", lab_model, *base, "-q")
    rows = []
    for k in SIZES:
        label = "all" if k is None else str(k)
        draws = [0] if k in (0, None) else range(args.draws)
        learned, kiosk = [], []
        for seed in draws:
            if k == 0:
                learned.append(measure(lab_model, report, non_leaves))
                kiosk.append(learned[-1])
                continue
            field = subset(dev, k, seed, out / "field", args.tomato)
            model = out / f"learn-{label}-{seed}.tflite"
            edgecls("learn", LAB, "--out", model, *base, "--field", field, "-q")
            learned.append(measure(model, report, non_leaves))
            model = out / f"kiosk-{label}-{seed}.tflite"
            edgecls("learn", field, "--base", lab_model, "--as-field", "--out", model, "-q")
            kiosk.append(measure(model, report, non_leaves))
        rows.append({"path": "device: learn --field", "k": label, **mean(learned)})
        rows.append({"path": "device: kiosk loop (--as-field)", "k": label, **mean(kiosk)})
        print(rows[-2], rows[-1], flush=True)
    for item in args.host:
        k, _, run = item.partition("=")
        run = Path(run)
        model = run / "model_int8.tflite"
        row = {"path": "host: train --field, int8", "k": k, **measure(model, report, non_leaves)}
        metrics = json.loads((run / "metrics.json").read_text())
        row["lab_accuracy"] = metrics["test_accuracy"]
        rows.append(row)
        print(row, flush=True)
    (out / "field_curve.json").write_text(json.dumps(rows, indent=2))
    write_markdown(rows, out / "field_curve.md", len(list(report.rglob("*.jpg"))))
    plot(rows, out / "field_curve.png")
    return 0


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.0f}%"


def write_markdown(rows: list[dict], path: Path, n: int) -> None:
    lines = [f"Field photos held out: {n} (potato early/late blight, PlantDoc); lab accuracy on the model's own lab "
             "check.", "", "| path | field photos per class | field top-1 | field unknown | right and shown | "
             "lab | non-leaves unknown |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['path']} | {r['k']} | {_pct(r['field_top1'])} | {_pct(r['field_unknown'])} | "
              f"{_pct(r['field_shown'])} | {_pct(r['lab_accuracy'])} | {_pct(r['non_leaves_unknown'])} |" for r in rows]
    path.write_text("\n".join(lines) + "\n")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = ["0", "5", "10", "20", "all"]
    fig, ax = plt.subplots(figsize=(7, 4))
    for name in dict.fromkeys(r["path"] for r in rows):
        points = sorted(((order.index(r["k"]), r) for r in rows if r["path"] == name and r["k"] in order),
                        key=lambda p: p[0])
        if not points:
            continue
        xs = [x for x, _ in points]
        line, = ax.plot(xs, [100 * r["field_top1"] for _, r in points], marker="o", label=f"{name}: top-1")
        if all(r["field_shown"] is not None for _, r in points):
            ax.plot(xs, [100 * r["field_shown"] for _, r in points], marker="x", linestyle="--",
                    color=line.get_color(), label=f"{name}: right and shown")
    ax.axhline(50, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xticks(range(len(order)), order)
    ax.set_xlabel("field photos per class")
    ax.set_ylabel("% of held-out field photos")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("Potato blight, field photos the models never saw")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())

"""``edgecls eval MODEL DATA``: how right a model is on a labelled folder of photos, lab or field, on this machine.

The photos go through the runtime exactly as ``classify`` and the live app run them (decode, resize,
normalization, quantization, ``unknown``), so the figure is the device's. Reported: top-1, balanced accuracy,
per class, the confusion matrix, the share called ``unknown``, accuracy among the photos accepted, and
calibration (ECE); JSON on stdout with ``--json``, Markdown with ``--md``, a PNG with ``--plot``.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from edge_app.runtime.errors import DataError, EdgeclsError, check_normalization, check_threads
from edge_app.runtime.flags import add_normalization, add_threads, add_unknown

log = logging.getLogger("edgecls")

MAX_REPORT_BYTES = 16_000_000  # a metrics.json or NAME.learn.json is tens of kB

EXAMPLES = """examples:
  edgecls eval runs/potato field_photos/                        # class folders named like the model's classes
  edgecls eval leaves.tflite field/ --map potato_late_blight=Potato___Late_blight
  edgecls eval model_int8.tflite field/ --json > field.json --md field.md --plot field.png

DATA is a folder of class folders; a folder matches a class ignoring case, '_', '-' and spaces
(potato_late_blight = Potato___Late_blight); --map FOLDER=CLASS says the rest. A folder that matches
no class is an error, never skipped. Unreadable photos are skipped and listed.

exit codes: 0 measured, 2 bad input (a folder matching no class, an empty class, no photos, a bad model)."""


@dataclass(frozen=True)
class EvalConfig:
    model: str
    data: Path
    mapping: tuple[str, ...] = ()
    labels: str | None = None
    device: str = "cpu"
    num_threads: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    unknown: bool = True
    md: Path | None = None
    plot: Path | None = None

    def __post_init__(self):
        check_threads(self.num_threads)
        check_normalization(self.mean, self.std)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXAMPLES
    parser.add_argument("model", help="a .tflite model, or a run directory holding converted models")
    parser.add_argument("data", metavar="DATA", help="folder of class folders (lab or field photos)")
    parser.add_argument("--map", action="append", default=None, metavar="FOLDER=CLASS", dest="mapping",
                        help="a class folder whose name is not the model's (repeatable)")
    parser.add_argument("--labels", help="label file (default: labels embedded in the model, else labels.txt beside it)")
    parser.add_argument("--device", default="cpu", help="cpu, or edgetpu for a Coral")
    add_threads(parser)
    add_normalization(parser)
    add_unknown(parser, "count photos the model calls 'unknown' (models that carry a reference set)")
    parser.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    parser.add_argument("--md", type=Path, metavar="FILE", help="also write a Markdown report")
    parser.add_argument("--plot", type=Path, metavar="FILE.png", help="also write the confusion matrix and "
                        "reliability diagram as a PNG (needs matplotlib)")


def main(args: argparse.Namespace) -> int:
    result = run(EvalConfig(model=args.model, data=Path(args.data), mapping=tuple(args.mapping or ()), labels=args.labels,
                            device=args.device, num_threads=args.num_threads, mean=args.mean, std=args.std,
                            unknown=args.unknown != "off", md=args.md, plot=args.plot))
    print(json.dumps(result, indent=2) if args.json else headline(result))
    return 0


def run(config: EvalConfig) -> dict:
    """Measure ``config.model`` on ``config.data``; returns the result (and writes ``md``/``plot`` when asked)."""
    from edge_app.runtime import ImageClassifier
    from edge_app.runtime.files import write_text
    from edge_app.runtime.labelled import labelled_folder, parse_map
    from edge_app.runtime.scoring import FIELD_GAP_WARN_PP, score_photos

    classifier = ImageClassifier(config.model, config.labels, config.device, config.num_threads, config.mean,
                                 config.std, unknown=config.unknown)
    items, folders = labelled_folder(config.data, classifier.labels, parse_map(config.mapping))
    result, skipped = score_photos(classifier, items)
    if not result["num_images"]:
        raise DataError(f"no photo in {config.data} could be read ({len(skipped)} unreadable, e.g. "
                        f"{skipped[0]['path']}); replace them")
    for s in skipped:
        log.warning("skipped %s", s["error"])
    result = {"model": str(classifier.path), "data": str(config.data),
              "folders": {folder: classifier.labels[i] for folder, i in folders.items()}, **result,
              "skipped": skipped, "lab_accuracy": lab_accuracy(classifier.path)}
    gap = _gap_pp(result)
    if gap is not None and gap >= FIELD_GAP_WARN_PP:
        log.warning("%s is right on %.1f%% of %s, %.0f points below its lab accuracy (%.1f%%): it was measured on "
                    "photos unlike these; train or learn with field photos (--field)", classifier.path.name,
                    100 * result["accuracy"], config.data, gap, 100 * result["lab_accuracy"])
    if config.md is not None:
        write_text(config.md, render_markdown(result))
    if config.plot is not None:
        plot(result, config.plot)
    return result


def lab_accuracy(model: Path) -> float | None:
    """The accuracy the model's own report gives on lab photos: the run's test split (``metrics.json``), or a
    learned model's validation part (``NAME.learn.json``); None when neither is beside it."""
    from edge_app.runtime import rundir
    from edge_app.runtime.files import FileTooLarge, NotRegularFile, read_bounded

    for path, keys in ((model.parent / rundir.METRICS, ("test_accuracy",)),
                       (model.with_suffix(".learn.json"), ("val", "accuracy"))):
        try:  # checked, then read: a report beside a model is a file like any other from outside
            value = json.loads(read_bounded(path, MAX_REPORT_BYTES))
            for key in keys:
                value = value[key]
            return float(value)
        except (OSError, ValueError, KeyError, TypeError, NotRegularFile, FileTooLarge):
            continue
    return None


def _gap_pp(result: dict) -> float | None:
    lab = result.get("lab_accuracy")
    return None if lab is None else round(100 * (lab - result["accuracy"]), 1)


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def headline(result: dict) -> str:
    """One line for people: top-1, balanced, unknown, accepted, ECE, and the lab figure when known."""
    parts = [f"top-1 {_pct(result['accuracy'])}", f"balanced {_pct(result['balanced_accuracy'])}"]
    if "unknown_rate" in result:
        parts += [f"unknown {_pct(result['unknown_rate'])}", f"accuracy among accepted "
                  f"{_pct(result['accuracy_accepted'])}"]
    parts.append(f"ECE {result['calibration']['ece']:.3f}")
    if result.get("lab_accuracy") is not None:
        parts.append(f"lab accuracy {_pct(result['lab_accuracy'])}")
    return f"{Path(result['model']).name} on {result['data']} ({result['num_images']} photos): " + ", ".join(parts)


def render_markdown(result: dict) -> str:
    lines = [f"# `{Path(result['model']).name}` on `{result['data']}`", "",
             "| photos | top-1 | balanced | unknown | accuracy among accepted | ECE | lab accuracy |",
             "|---|---|---|---|---|---|---|",
             f"| {result['num_images']} | {_pct(result['accuracy'])} | {_pct(result['balanced_accuracy'])} | "
             f"{_pct(result.get('unknown_rate'))} | {_pct(result.get('accuracy_accepted'))} | "
             f"{result['calibration']['ece']:.3f} | {_pct(result.get('lab_accuracy'))} |", "",
             "| class | precision | recall | F1 | photos |", "|---|---|---|---|---|"]
    lines += [f"| {label} | {_pct(m['precision'])} | {_pct(m['recall'])} | {_pct(m['f1'])} | {m['support']} |"
              for label, m in result["per_class"].items()]
    matrix = result["confusion_matrix"]
    lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
              "| | " + " | ".join(matrix["labels"]) + " |", "|---|" + "---|" * len(matrix["labels"])]
    lines += [f"| {label} | " + " | ".join(str(v) for v in row) + " |"
              for label, row in zip(matrix["labels"], matrix["rows"], strict=True)]
    lines += ["", "Calibration (top-1 probability against how often it is right):", "",
              "| probability | photos | mean probability | accuracy |", "|---|---|---|---|"]
    lines += [f"| {b['low']:.1f}–{b['high']:.1f} | {b['count']} | {_pct(b['confidence'])} | {_pct(b['accuracy'])} |"
              for b in result["calibration"]["bins"]]
    if result["skipped"]:
        lines += ["", f"{len(result['skipped'])} unreadable photos skipped: "
                  + ", ".join(f"`{s['path']}`" for s in result["skipped"][:10])]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """The confusion matrix and the reliability diagram side by side, written atomically as a PNG."""
    try:
        import matplotlib
    except ImportError:
        raise EdgeclsError(f"--plot {path} needs matplotlib (pip install matplotlib); the JSON and Markdown "
                           "reports do not") from None
    import io

    import numpy as np

    from edge_app.runtime.files import write_bytes

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = result["confusion_matrix"]
    rows = np.array(matrix["rows"], float)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.8))
    shares = rows / np.maximum(rows.sum(axis=1, keepdims=True), 1)
    left.imshow(shares, cmap="Greens", vmin=0, vmax=1)
    ticks = range(len(matrix["labels"]))
    left.set_xticks(ticks, matrix["labels"], rotation=45, ha="right", fontsize=8)
    left.set_yticks(ticks, matrix["labels"], fontsize=8)
    for (i, j), count in np.ndenumerate(rows):
        left.text(j, i, int(count), ha="center", va="center", color="black" if shares[i, j] < 0.6 else "white")
    left.set_xlabel("predicted")
    left.set_ylabel("true")
    left.set_title(f"top-1 {_pct(result['accuracy'])} on {result['num_images']} photos")
    bins = result["calibration"]["bins"]
    right.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    right.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["accuracy"] for b in bins], width=0.09, alpha=0.7)
    right.set_xlim(0, 1)
    right.set_ylim(0, 1)
    right.set_xlabel("top-1 probability")
    right.set_ylabel("accuracy")
    right.set_title(f"calibration: ECE {result['calibration']['ece']:.3f}")
    fig.suptitle(f"{Path(result['model']).name} on {result['data']}", fontsize=10)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, out.getvalue())

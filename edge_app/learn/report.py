"""The report of a learned model, beside it: ``NAME.learn.json`` (machines) and ``NAME.learn.md`` (people)."""

from __future__ import annotations

from pathlib import Path

from edge_app.runtime.files import write_json, write_text
from edge_app.runtime.scoring import evaluate  # noqa: F401  (learn's API)


def report_paths(model: Path) -> tuple[Path, Path]:
    """``leaves.tflite`` → ``leaves.learn.json``, ``leaves.learn.md``."""
    return model.with_suffix(".learn.json"), model.with_suffix(".learn.md")


def write_reports(model: Path, report: dict) -> tuple[Path, Path]:
    json_path, md_path = report_paths(model)
    return write_json(json_path, report), write_text(md_path, render_markdown(report))


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def render_markdown(report: dict) -> str:
    lines = [f"# `{Path(report['model']).name}`: learned on `{report['data']}`", "",
             f"Base `{Path(report['base']).name}` at {'×'.join(map(str, report.get('input_size') or ['?']))} px, "
             f"embedding `{report['embedding']['name']}` "
             f"({report['embedding']['width']} values, {report['embedding']['dtype']}); head **{report['head']}**; "
             f"{len(report['labels'])} classes ({len(report['new_labels'])} new"
             + (f", {len(report['kept_labels'])} kept" if report["kept_labels"] else "") + "). Images: "
             + ", ".join(f"{part} {n}" for part, n in report["images"].items())
             + (f"; {len(report['skipped'])} unreadable skipped" if report["skipped"] else "") + ".",
             "", f"Embedding {report['seconds']['embedding']} s ({report['embedding_rate_img_s']} images/s), "
             f"fitting {report['seconds']['fit']} s; model {report['size_bytes'] / 1e6:.2f} MB"
             + "".join(f"; p50 {name} {ms} ms" for name, ms in (report.get("latency_p50_ms") or {}).items()) + ".", ""]
    titles = {"val": "Validation part (lab)", "field_val": "Field photos held out (--field)", "test": "test/"}
    if report.get("val_before"):
        titles["val_before"] = f"The same validation part, `{Path(report['val_before']['model']).name}`"
    for part, title in titles.items():
        result = report.get(part)
        if not result:
            continue
        lines += [f"## {title}: accuracy {_pct(result['accuracy'])}, "
                  f"balanced {_pct(result['balanced_accuracy'])} on {result['num_images']} images", "",
                  "| class | precision | recall | F1 | images |", "|---|---|---|---|---|"]
        lines += [f"| {label} | {_pct(m['precision'])} | {_pct(m['recall'])} | {_pct(m['f1'])} | {m['support']} |"
                  for label, m in result["per_class"].items()]
        matrix = result["confusion_matrix"]
        if len(matrix["labels"]) <= 12:
            lines += ["", "Confusion matrix (rows: true class, columns: predicted):", "",
                      "| | " + " | ".join(matrix["labels"]) + " |", "|---|" + "---|" * len(matrix["labels"])]
            lines += [f"| {label} | " + " | ".join(str(v) for v in row) + " |"
                      for label, row in zip(matrix["labels"], matrix["rows"], strict=True)]
        lines.append("")
    lines += _unknown_lines(report.get("unknown"))
    if "val" not in report and "test" not in report:
        lines += ["No validation part (every class has fewer than 5 images, or --val-split 0): accuracy unmeasured.", ""]
    return "\n".join(lines)


def _unknown_lines(unknown: dict | None) -> list[str]:
    """The ``unknown`` section: the threshold, known photos accepted, and the --unknown-check comparison."""
    if not unknown:
        return []
    if not unknown.get("enabled"):
        return [f"## Unknown: off ({unknown['why']})", ""]
    lines = [f"## Unknown: novelty above {unknown['threshold']:.4f}", "",
             f"{unknown['references']} reference photos ({unknown['reference_bytes'] / 1e3:.0f} kB in the model); "
             f"the threshold accepts {_pct(unknown['accept'])} of {unknown['calibrated_on']}.", "",
             "| photos | known accepted | accuracy, all | accuracy, accepted |", "|---|---|---|---|"]
    for part, title in (("val", "validation part (calibration)"), ("field_val", "field photos held out (calibration)"),
                        ("test", "test/")):
        if unknown.get(part):
            r = unknown[part]
            lines.append(f"| {title}: {r['num_images']} | {_pct(r['known_accepted'])} | {_pct(r['accuracy'])} | "
                         f"{_pct(r['accuracy_accepted'])} |")
    check = unknown.get("check")
    if check:
        lines += ["", f"`--unknown-check {check['folder']}`: {check['num_images']} photos of none of the classes.", "",
                  "| score | unknown rejected | AUROC |", "|---|---|---|",
                  f"| k-NN novelty (the model's) | {_pct(check['knn']['unknown_rejected'])} | "
                  f"{check['knn']['auroc']} |",
                  f"| max softmax probability | {_pct(check['max_softmax']['unknown_rejected'])} | "
                  f"{check['max_softmax']['auroc']} |"]
    return [*lines, ""]

"""Bench reports: the stdout table, JSON, Markdown, CSV, the comparison with an older report, and plots."""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path

from benchmarks.config import BenchError
from edge_app.runtime.files import atomic_path, write_json, write_text

log = logging.getLogger("edgecls")

# (header, how to get the cell from a result row); one table for stdout, Markdown and CSV.
COLUMNS = (
    ("model", lambda r: r["name"]),
    ("quant", lambda r: r["quant"]),
    ("size_mb", lambda r: r["size_bytes"] / 1e6),
    ("threads", lambda r: r["threads"]),
    ("load_ms", lambda r: r["load_ms"]),
    ("first_ms", lambda r: r["first_invoke_ms"]),
    ("mean_ms", lambda r: r["latency_ms"]["mean"]),
    ("min_ms", lambda r: r["latency_ms"]["min"]),
    ("p50_ms", lambda r: r["latency_ms"]["p50"]),
    ("p90_ms", lambda r: r["latency_ms"]["p90"]),
    ("p99_ms", lambda r: r["latency_ms"]["p99"]),
    ("fps", lambda r: r["fps"]),
    ("peak_rss_mb", lambda r: r["peak_rss_mb"]),
    # 'unknown': the k-NN novelty per frame, as a share of the p50 invoke (models with a reference set).
    ("novelty_pct", lambda r: None if not r.get("novelty_ms") else 100 * r["novelty_ms"]["share_of_p50"]),
    ("top1", lambda r: (r.get("accuracy") or {}).get("top1")),
    ("top5", lambda r: (r.get("accuracy") or {}).get("top5")),
    ("n", lambda r: (r.get("accuracy") or {}).get("n")),
    # read back from the interpreter: "builtin" = XNNPACK was not applied (see docs/arm64.md)
    ("kernels", lambda r: None if not r.get("kernels") else
     f"{r['kernels']['delegate'] or 'builtin'} {r['kernels']['delegated_ops']}/{r['kernels']['total_ops']}"),
)


def format_cell(value) -> str:
    """A number as the tables show it: 3 significant-ish digits, ``-`` for missing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.1f}" if value >= 100 else f"{value:.2f}" if value >= 1 else f"{value:.3f}"
    return str(value)


def device_line(device: dict) -> str:
    """One line that says which machine and runtime produced the figures (boards compare only with it)."""
    parts = [device.get("board") or device.get("cpu_model") or "unknown CPU",
             f"{device.get('cpu_count')} cores"]
    if device.get("board") and device.get("cpu_model"):
        parts.insert(1, device["cpu_model"])
    parts.append(f"{device.get('runtime')} {device.get('runtime_version')}")
    parts.append(f"delegate {device.get('delegate')}")
    parts.append(f"governor {device.get('cpu_governor') or 'n/a'}")
    if device.get("cpu_max_mhz"):
        parts.append(f"max {device['cpu_max_mhz']:.0f} MHz")
    if device.get("cpu_temperature_c") is not None:
        end = device.get("cpu_temperature_c_end")
        parts.append(f"{device['cpu_temperature_c']} °C" + (f" → {end} °C" if end is not None else ""))
    if device.get("throttled") is not None:
        parts.append(f"throttled {device.get('throttled_end') or device['throttled']}")
    if device.get("loadavg_1m") is not None:
        parts.append(f"load {device['loadavg_1m']:.2f}")
    return ", ".join(str(p) for p in parts)


def table(rows: list[dict]) -> str:
    """The results as an aligned plain-text table."""
    cells = [[h for h, _ in COLUMNS]] + [[format_cell(get(r)) for _, get in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in cells]
    return "\n".join(lines)


def per_class_lines(rows: list[dict], max_classes: int = 20) -> str:
    """Top-1 per class folder for each model (once, not per thread count), when there are few classes.

    Plain top-1 hides a weak minority class (PlantVillage's 152 healthy leaves against 1000 + 1000).
    """
    lines, seen = [], set()
    for r in rows:
        acc = r.get("accuracy")
        if not acc or r["model"] in seen or len(acc.get("per_class", {})) > max_classes:
            continue
        seen.add(r["model"])
        classes = ", ".join(f"{name} {c['top1']:.3f} (n={c['n']})" for name, c in acc["per_class"].items())
        lines.append(f"top-1 per class, {r['name']}: {classes}; balanced {acc['balanced_top1']:.3f}")
    return "\n".join(lines)


def pipeline_table(pipelines: list[dict]) -> str:
    """Per-stage p50/p90 and the three rates of each pipeline measurement."""
    lines = []
    for p in pipelines:
        lines.append(f"pipeline {Path(p['model']).name} x{p['threads']} on {p['source']}: "
                     f"app {p['app_fps']:.1f} FPS ({p['app']['frames']} frames), "
                     f"plain sequential loop {format_cell(p['sequential_fps'])} FPS, bare invoke {format_cell(p['invoke_fps'])} FPS; "
                     f"app/sequential {format_cell(p['app_vs_sequential'])}, app/invoke {format_cell(p['app_vs_invoke'])}")
        for name, loop in (("app", p["app"]), ("sequential", p["sequential"])):
            if loop is None:
                continue
            stages = ", ".join(f"{s} {v['p50']:.2f}/{v['p90']:.2f}" for s, v in loop["stages"].items())
            lines.append(f"  {name:<10} stage ms p50/p90: {stages}")
    return "\n".join(lines)


def markdown(report: dict) -> str:
    """The results as a Markdown table for READMEs, with the device line above it."""
    rows = report["results"]
    head = [h for h, _ in COLUMNS]
    out = [f"Measured with `edgecls bench` on: {device_line(report['device'])}.", "",
           "| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(format_cell(get(r)) for _, get in COLUMNS) + " |" for r in rows]
    pipelines = report.get("pipeline") or []
    if pipelines:
        out += ["", f"Live pipeline (`edgecls run`, headless) on `{Path(pipelines[0]['source']).name}`; "
                    "stage times are p50 ms per frame in the app:", "",
                "| model | threads | app FPS | plain loop FPS | bare invoke FPS | app / invoke | "
                "capture | preprocess | invoke | postprocess |",
                "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in pipelines:
            stages = [format_cell(p["app"]["stages"].get(s, {}).get("p50")) for s in ("capture", "preprocess", "invoke",
                                                                                "postprocess")]
            out.append(f"| {Path(p['model']).stem} | {p['threads']} | {format_cell(p['app_fps'])} | {format_cell(p['sequential_fps'])} | "
                       f"{format_cell(p['invoke_fps'])} | {format_cell(p['app_vs_invoke'])} | " + " | ".join(stages) + " |")
    return "\n".join(out) + "\n"


def csv_text(report: dict) -> str:
    """One CSV row per model and thread count (raw numbers, no rounding)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([h for h, _ in COLUMNS] + ["path", "cpu_model", "runtime", "runtime_version"])
    device = report["device"]
    for r in report["results"]:
        writer.writerow([get(r) for _, get in COLUMNS] +
                        [r["model"], device.get("cpu_model"), device.get("runtime"), device.get("runtime_version")])
    return buffer.getvalue()


def compare(report: dict, old_path: str | Path) -> dict:
    """Ratios new/old of p50 and mean latency, per model file name, quant and thread count.

    A ratio above 1 means slower now. Rows are matched by file name (not path) so reports from
    another checkout or board line up; a different CPU or runtime is reported as ``same_device: false``.

    Example:
        >>> compare(new_report, "bench_main.json")["rows"][0]["p50_ratio"]
        1.03
    """
    try:
        old = json.loads(Path(old_path).read_text(encoding="utf-8"))
        old_rows = {_key(r): r for r in old["results"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BenchError(f"--compare {old_path} is not a report written by edgecls bench --json ({e})") from e
    rows, missing = [], []
    for r in report["results"]:
        o = old_rows.get(_key(r))
        if o is None:
            missing.append(f"{r['name']} x{r['threads']}")
            continue
        rows.append({"name": r["name"], "quant": r["quant"], "threads": r["threads"],
                     "old_p50": o["latency_ms"]["p50"], "new_p50": r["latency_ms"]["p50"],
                     "p50_ratio": r["latency_ms"]["p50"] / o["latency_ms"]["p50"],
                     "mean_ratio": r["latency_ms"]["mean"] / o["latency_ms"]["mean"]})
    od, nd = old.get("device", {}), report["device"]
    same = all(od.get(k) == nd.get(k) for k in ("cpu_model", "cpu_count", "runtime", "runtime_version"))
    return {"reference": str(old_path), "same_device": same, "rows": rows, "not_in_reference": missing,
            "reference_device": {k: od.get(k) for k in ("cpu_model", "cpu_count", "runtime", "runtime_version")}}


def _key(row: dict) -> tuple:
    return row.get("name") or Path(row["model"]).name, row.get("quant"), row["threads"]


def compare_table(comparison: dict) -> str:
    """The comparison as text: one line per model with both p50s and the ratio."""
    lines = [f"compared with {comparison['reference']} (ratio = now / then; above 1 is slower):"]
    if not comparison["same_device"]:
        ref = comparison["reference_device"]
        lines.append(f"  note: the reference was measured on {ref.get('cpu_model')} ({ref.get('cpu_count')} cores, "
                     f"{ref.get('runtime')} {ref.get('runtime_version')}): the ratios compare machines, not changes")
    for r in comparison["rows"]:
        flag = "  SLOWER" if r["p50_ratio"] > 1.10 else "  faster" if r["p50_ratio"] < 0.90 else ""
        lines.append(f"  {r['name']} ({r['quant']}) x{r['threads']}: p50 {r['old_p50']:.2f} -> {r['new_p50']:.2f} ms, "
                     f"ratio {r['p50_ratio']:.2f} (mean {r['mean_ratio']:.2f}){flag}")
    if comparison["not_in_reference"]:
        lines.append(f"  not in the reference: {', '.join(comparison['not_in_reference'])}")
    return "\n".join(lines)


def write_reports(report: dict, json_path=None, md_path=None, csv_path=None, plot_path=None) -> list[Path]:
    """Write the asked-for report files atomically; returns their paths."""
    written = []
    if json_path:
        written.append(write_json(json_path, report))
    if md_path:
        written.append(write_text(md_path, markdown(report)))
    if csv_path:
        written.append(write_text(csv_path, csv_text(report)))
    if plot_path:
        written.append(plot(report, plot_path))
    return written


def plot(report: dict, path: str | Path) -> Path:
    """Latency vs accuracy (one point per model variant and thread count; vs size without accuracy), and one
    latency histogram per model and thread count on a shared axis.

    Example:
        >>> plot(json.load(open("bench.json")), "bench.png")
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
    except ImportError as e:
        raise BenchError("--plot needs matplotlib: pip install matplotlib (or pip install 'edgecls[train]')") from e
    import numpy as np

    rows = report["results"]
    with_accuracy = any(r.get("accuracy") for r in rows)
    n = len(rows)
    fig = plt.figure(figsize=(13, max(4.8, 0.9 * n + 1.5)))
    grid = fig.add_gridspec(n, 2, width_ratios=[1.15, 1], hspace=0.15)
    ax = fig.add_subplot(grid[:, 0])
    names = list(dict.fromkeys(f"{r['name']} ({r['quant']})" for r in rows))
    colors = {name: plt.cm.tab10(i % 10) for i, name in enumerate(names)}
    markers = {1: "o", 2: "s", 3: "D", 4: "^"}
    p50s = [r["latency_ms"]["p50"] for r in rows]
    for r in rows:
        if with_accuracy and not r.get("accuracy"):
            continue
        y = r["accuracy"]["top1"] * 100 if with_accuracy else r["size_bytes"] / 1e6
        ax.scatter(r["latency_ms"]["p50"], y, s=60, color=colors[f"{r['name']} ({r['quant']})"],
                   marker=markers.get(r["threads"], "v"), edgecolors="black", linewidths=0.5)
    if max(p50s) / max(min(p50s), 1e-9) > 10:
        ax.set_xscale("log")
    handles = [Line2D([], [], marker="o", ls="", color=colors[name], label=name) for name in names]
    handles += [Line2D([], [], marker=markers.get(t, "v"), ls="", color="gray", label=f"{t} thread{'s' * (t > 1)}")
                for t in sorted({r["threads"] for r in rows})]
    ax.legend(handles=handles, fontsize=8, loc="best")
    ax.set_xlabel("latency p50 (ms)")
    ax.set_ylabel("top-1 accuracy (%)" if with_accuracy else "size (MB)")
    ax.set_title("latency vs accuracy" if with_accuracy else "latency vs size (no --data given)")
    ax.grid(alpha=0.3)
    if with_accuracy:
        bottom, top = ax.get_ylim()
        ax.set_ylim(bottom, min(top, 100.5))
    every = np.array([s for r in rows for s in (r.get("samples_ms") or [])], dtype=np.float64)
    if every.size:
        lo, hi = float(every.min()), float(np.percentile(every, 99.5))
        hi = max(hi, lo * 1.01)
        log_x = hi / lo > 10
        # One set of bins for all, so the histograms of different models compare; the slowest 0.5% are cut.
        bins = np.geomspace(lo, hi, 60) if log_x else np.linspace(lo, hi, 60)
        first = None
        for i, r in enumerate(rows):
            h = fig.add_subplot(grid[i, 1], sharex=first)
            first = first or h
            h.hist([s for s in r.get("samples_ms") or [] if s <= hi], bins=bins,
                   color=colors[f"{r['name']} ({r['quant']})"], alpha=0.8)
            h.axvline(r["latency_ms"]["p50"], color="black", lw=0.8)
            h.text(0.99, 0.8, f"{r['name']} ({r['quant']}) x{r['threads']}: p50 {r['latency_ms']['p50']:.2f} ms",
                   transform=h.transAxes, ha="right", fontsize=7)
            h.tick_params(labelsize=7)
            h.set_yticks([])
            if log_x:
                h.set_xscale("log")
            if i < n - 1:
                h.tick_params(labelbottom=False)
        first.set_title("invoke latency histograms (line: p50; slowest 0.5% cut)", fontsize=10)
        h.set_xlabel("invoke latency (ms)")
    fig.suptitle(device_line(report["device"]), fontsize=8)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".").lower() or "png", bbox_inches="tight")
    plt.close(fig)
    return path

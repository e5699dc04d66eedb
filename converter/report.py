"""``conversion.json`` (machines read it; schema in DESIGN.md, extra keys allowed) and ``conversion.md`` (people do)."""

from __future__ import annotations

from pathlib import Path

from edge_app.runtime.files import write_json, write_text
from edge_app.runtime.rundir import CONVERSION, CONVERSION_MD

SCHEMA = "edgecls.conversion/1"


def summarize_speed(variants: list[dict]) -> dict:
    """Which variant is fastest and smallest here, and by how much against fp32."""
    timed = [v for v in variants if (v.get("latency_ms") or {}).get("p50") is not None]
    out: dict = {}
    if timed:
        fastest = min(timed, key=lambda v: v["latency_ms"]["p50"])
        out["fastest"] = fastest["quant"]
        fp32 = next((v for v in timed if v["quant"] == "fp32"), None)
        if fp32:
            out["speedup_vs_fp32"] = {v["quant"]: round(fp32["latency_ms"]["p50"] / v["latency_ms"]["p50"], 2)
                                      for v in timed}
    if variants:
        out["smallest"] = min(variants, key=lambda v: v["size_bytes"])["quant"]
    return out


def write_reports(out_dir: Path, report: dict) -> tuple[Path, Path]:
    """Write both reports atomically; returns their paths."""
    json_path = write_json(out_dir / CONVERSION, report)
    md_path = write_text(out_dir / CONVERSION_MD, render_markdown(report))
    return json_path, md_path


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _mb(n) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def render_markdown(report: dict) -> str:
    """The table a person reads first, then per-class deltas, calibration, graph facts and the Edge TPU step."""
    lines = [f"# Conversion of `{report['model']}`", ""]
    verdict = "**all checks passed**" if report["passed"] else "**a check FAILED**"
    lines += [f"{verdict}; limits: accuracy drop ≤ {report['limits']['max_accuracy_drop_pp']:g} pp"
              + (f", p50 latency ≤ {report['limits']['max_latency_ms']:g} ms"
                 if report['limits']['max_latency_ms'] is not None else "") + ".", ""]
    check = report["check_data"]
    lines += [f"Checked on {check['num_images']} images from {check['source']}; float (Keras) accuracy "
              f"**{_pct(report['float_accuracy'])}** (one image = {100 / max(1, check['num_images']):.2f} pp). Latency on {report['machine']['cpu']} with "
              f"{report['machine']['runtime']} {report['machine']['runtime_version']}, "
              f"{report['machine']['num_threads']} thread(s), {report['machine']['runs']} timed runs after "
              f"{report['machine']['warmup']} warm-up.", ""]
    lines += ["| variant | size | vs fp32 | I/O | accuracy | drop (pp) | agreement | p50 ms | p90 ms | XNNPACK partitions | result |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in report["variants"]:
        lat = v.get("latency_ms") or {}
        graph = v.get("graph") or {}
        ratio = f"{100 * v['size_vs_fp32']:.0f}%" if v.get("size_vs_fp32") is not None else "—"
        result = "pass" if v["passed"] else "**FAIL**: " + "; ".join(v["failures"])
        drop = "—" if v.get("accuracy_drop_pp") is None else f"{v['accuracy_drop_pp']:+.2f}"
        lines.append(f"| {v['quant']} | {_mb(v['size_bytes'])} | {ratio} | {v['io']['input']}/{v['io']['output']} | "
                     f"{_pct(v.get('accuracy'))} | {drop} | {_pct(v.get('agreement'))} | {lat.get('p50', '—')} | "
                     f"{lat.get('p90', '—')} | {graph.get('xnnpack_partitions', '—')} | {result} |")
    lines += ["", "Variants: " + "; ".join(f"**{v['quant']}**: {v['description']}" for v in report["variants"]
                                       if v.get("description")) + "."]
    speed = report.get("speed", {})
    if speed.get("fastest"):
        lines += ["", f"**Fastest on this machine: {speed['fastest']}**"
                  + (" (p50 speed-up vs fp32: " + ", ".join(f"{k} {x}×" for k, x in speed['speedup_vs_fp32'].items()) + ")"
                     if speed.get("speedup_vs_fp32") else "")
                  + f". Smallest: {speed.get('smallest')}."]
    warnings = [(v["quant"], w) for v in report["variants"] for w in v.get("warnings", [])]
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- **{q}**: {w}" for q, w in warnings]
    lines += ["", "## Per-class accuracy (change vs float, pp)", "",
              "| class | float | " + " | ".join(v["quant"] for v in report["variants"]) + " |",
              "|---|---|" + "---|" * len(report["variants"])]
    for label, acc in report["float_per_class_accuracy"].items():
        cells = []
        for v in report["variants"]:
            d = (v.get("per_class_delta_pp") or {}).get(label)
            cells.append("—" if d is None else f"{_pct(v['per_class_accuracy'][label])} ({d + 0.0:+.2f})")
        lines.append(f"| {label} | {_pct(acc)} | " + " | ".join(cells) + " |")
    cal = report.get("calibration")
    if cal:
        lines += ["", "## Calibration (int8)", "",
                  f"{cal['num_images']} images from {cal['source']}, per class: "
                  + ", ".join(f"{k} {n}" for k, n in cal["per_class"].items())
                  + f"; model input range seen: {cal['input_range']}."]
    lines += ["", "## Ops by type", ""]
    for v in report["variants"]:
        graph = v.get("graph") or {}
        ops = ", ".join(f"{k} {n}" for k, n in graph.get("op_counts", {}).items())
        fell = graph.get("cpu_fallback_ops") or {}
        lines.append(f"- **{v['quant']}** ({'full integer' if graph.get('full_integer') else 'float tensors: ' + str(graph.get('float_tensors'))}): {ops}"
                     + (f". Outside XNNPACK: {', '.join(f'{k} {n}' for k, n in fell.items())}" if fell else ""))
    tpu = report.get("edgetpu")
    if tpu:
        lines += ["", "## Edge TPU", "", f"Status: **{tpu['status']}**. {tpu.get('message', '')}"]
        if tpu.get("path"):
            lines.append(f"\nCompiled model: `{tpu['path']}` ({_mb(tpu['size_bytes'])}), "
                         f"{tpu.get('ops_on_tpu')} ops on the Edge TPU, {tpu.get('ops_on_cpu')} on the CPU.")
    return "\n".join(lines) + "\n"

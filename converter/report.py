"""``conversion.json`` (machines read it; schema in DESIGN.md, extra keys allowed) and ``conversion.md`` (people do)."""

from __future__ import annotations

from pathlib import Path

from converter.results import Variant
from edge_app.runtime.files import write_json, write_text
from edge_app.runtime.rundir import CONVERSION, CONVERSION_MD

SCHEMA = "edgecls.conversion/1"


def summarize_speed(variants: list[Variant]) -> dict:
    """Which variant is fastest and smallest here, and by how much against fp32."""
    out: dict = {}
    if variants:
        out["fastest"] = min(variants, key=lambda v: v.latency.p50).quant
        fp32 = next((v for v in variants if v.quant == "fp32"), None)
        if fp32:
            out["speedup_vs_fp32"] = {v.quant: round(fp32.latency.p50 / v.latency.p50, 2) for v in variants}
        out["smallest"] = min(variants, key=lambda v: v.size_bytes).quant
    return out


def write_reports(out_dir: Path, report: dict) -> tuple[Path, Path]:
    """Write both reports atomically; returns their paths."""
    json_path = write_json(out_dir / CONVERSION, report)
    md_path = write_text(out_dir / CONVERSION_MD, render_markdown(report))
    return json_path, md_path


def check_site(machine: str, python: str, variants: list[dict], emulated: bool = False) -> str:
    """Where checks ran, as ``conversion.json``'s ``checked_on`` says it: ``x86_64 (XNNPACK, Python 3.11.7)``.
    The kernels are those the variants' interpreters applied (read back, see ``edge_app.runtime.applied_kernels``)."""
    kernels = sorted({(v.get("kernels") or {}).get("delegate") or "built-in kernels" for v in variants}) or ["?"]
    return f"{machine} ({' + '.join(kernels)}, Python {python}{', emulated' if emulated else ''})"


def _pct(x) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def _mb(n) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def drop_cell(v: dict) -> str:
    """``+1.50 [-0.19, 3.19]``: the drop and its 95% interval, in pp."""
    if v.get("accuracy_drop_pp") is None:
        return "—"
    test = v.get("drop_test")
    interval = f" [{test['ci95_pp'][0]:+.2f}, {test['ci95_pp'][1]:+.2f}]" if test else ""
    return f"{v['accuracy_drop_pp']:+.2f}{interval}"


def disagreement_cell(v: dict) -> str:
    """``3 / 0 (p 0.125)``: images lost and gained against float, and how likely that is by chance."""
    test = v.get("drop_test")
    return "—" if not test else f"{test['lost']} / {test['gained']} (p {test['p_value']:.3g})"


def layer_name(node: str) -> str:
    """The Keras layer of a TFLite tensor name: ``model/dense_1/MatMul;model/dense_1/BiasAdd`` → ``dense_1``,
    ``model/MobileNetV3Small_1/expanded_conv_project_1/convolution`` → ``expanded_conv_project_1``."""
    parts = node.split(";")[0].split("/")
    return parts[-2] if len(parts) > 2 else parts[0]


def _kept_float(v: dict) -> list[str]:
    kept = v.get("kept_float")
    if not kept:
        return []
    ops = ", ".join(f"{op} ×{n}" for op, n in kept["ops"].items())
    speed = kept["full_integer_p50_ms"] / kept["p50_ms"] if kept["p50_ms"] else float("nan")
    return ["", f"## {v['quant']}: ops kept in float for the CPU", "",
            f"XNNPACK has no int8 kernel for {', '.join(kept['ops'])}: in a full-integer graph each runs on slow "
            f"reference kernels and splits the graph into {kept['partitions_full_integer']} partitions. Kept in "
            f"float: {ops}. Cost: {kept['bytes']:+d} bytes; accuracy {_pct(v['accuracy'])} vs "
            f"{_pct(kept['full_integer_accuracy'])} full integer. Bought: {kept['partitions']} partition(s), p50 "
            f"{kept['p50_ms']} ms instead of {kept['full_integer_p50_ms']} ms ({speed:.1f}× faster). The Edge TPU "
            "runs these ops in int8: its model stays full integer."]


_SIZE_PARTS = {"weights_int8": "int8 weights", "weights_float32": "float32 weights", "weights_float16": "float16 weights",
               "weights_int32": "int32 biases", "quantization_params": "quantization parameters",
               "tensor_names": "tensor names", "metadata_archive": "metadata and labels", "structure": "graph structure"}


def _sizes(variants: list[dict]) -> list[str]:
    """Where each variant's bytes go (per-channel int8 carries a float32 scale and an int64 zero point per
    output channel of every weight and bias: on a small model that is a fifth of the file)."""
    rows = [v for v in variants if v.get("size_breakdown")]
    if not rows:
        return []
    parts = [k for k in _SIZE_PARTS if any(v["size_breakdown"].get(k) for v in rows)]
    lines = ["", "## Where the bytes go", "", "| variant | " + " | ".join(_SIZE_PARTS[k] for k in parts) + " |",
             "|---|" + "---|" * len(parts)]
    for v in rows:
        total = v["size_breakdown"]["total"]
        lines.append(f"| {v['quant']} | " + " | ".join(
            f"{_mb(v['size_breakdown'].get(k, 0))} ({100 * v['size_breakdown'].get(k, 0) / total:.0f}%)"
            for k in parts) + " |")
    return lines + ["", "Inner tensor names are stripped (kernels never read them). Per-channel int8 stores a "
                        "float32 scale and an int64 zero point for every output channel of every weight and bias "
                        "(the runtime requires both), so small layers pay more than their int8 weights."]


def _repair(v: dict) -> list[str]:
    repair = v.get("repair")
    if not repair:
        return []
    outcome = {"passed": "the drop is within the limit", "budget": f"the budget of {repair['layer_budget']} layers was spent",
               "latency": f"the model got slower than {repair['latency_limit_ms']} ms"}[repair["result"]]
    lines = ["", f"## Repair of {v['quant']}", "",
             f"int8 lost more than the limit, so the layers that quantize worst (each int8 layer against its float twin, "
             f"in quantization steps) were kept in float, a few at a time. Stopped because {outcome}"
             + ("" if repair["result"] == "passed" else "; the unrepaired model was kept") + ".", "",
             "| layers in float | accuracy | drop (pp) | p | p50 ms | size | passed |", "|---|---|---|---|---|---|---|"]
    for step in repair["steps"]:
        names = ", ".join(layer_name(n) for n in step["kept_layers"]) or "none"
        lines.append(f"| {names} | {_pct(step['accuracy'])} | {step['accuracy_drop_pp']:+.2f} | {step['p_value']:.3g} "
                     f"| {step['p50_ms']} | {_mb(step['size_bytes'])} | {'yes' if step['passed'] else 'no'} |")
    return lines


def _unknown(variants: list[dict]) -> list[str]:
    """Each variant's 'unknown': threshold, reference set, known accepted, and the --unknown-check comparison."""
    rows = [v for v in variants if v.get("unknown")]
    if not rows:
        return []
    check = next((v["unknown"].get("check") for v in rows if v["unknown"].get("check")), None)
    lines = ["", "## Unknown: none of the classes", "",
             f"Each variant carries a reference set computed with itself from the train split; its threshold "
             f"accepts {_pct(rows[0]['unknown']['accept'])} of {rows[0]['unknown']['calibrated_on']}. On the check "
             "images: known photos accepted, accuracy on all of them and on those accepted"
             + (f"; `--unknown-check {check['folder']}` ({check['num_images']} photos of none of the classes): share "
                "called unknown, by our k-NN novelty and by the max softmax probability at the same known acceptance"
                if check else "") + ".", "",
             "| variant | threshold | references | known accepted | accuracy → accepted |"
             + (" unknown rejected: k-NN (AUROC) | max softmax (AUROC) |" if check else ""),
             "|---|---|---|---|---|" + ("---|---|" if check else "")]
    for v in rows:
        u, test = v["unknown"], v["unknown"].get("test") or {}
        line = (f"| {v['quant']} | {u['threshold']:.4f} | {u['references']} ({u['reference_bytes'] / 1e3:.0f} kB) | "
                f"{_pct(test.get('known_accepted'))} | {_pct(test.get('accuracy'))} → "
                f"{_pct(test.get('accuracy_accepted'))} |")
        if check:
            c = u.get("check") or {}
            line += (f" {_pct((c.get('knn') or {}).get('unknown_rejected'))} ({(c.get('knn') or {}).get('auroc')}) | "
                     f"{_pct((c.get('max_softmax') or {}).get('unknown_rejected'))} "
                     f"({(c.get('max_softmax') or {}).get('auroc')}) |")
        lines.append(line)
    return lines


def _field(report: dict) -> list[str]:
    """Lab and field side by side: the lab check above, the field photos (a kiosk's) here, never pooled."""
    field = report.get("field")
    if not field:
        return []
    lines = ["", "## Lab and field", "",
             f"Field photos: {field['num_images']} from {field['source']}, through the same runtime. Lab figures are "
             "the check above (photos like the training ones); field figures are photos like a kiosk's."
             + (" From the fleet (`edgecls fleet pull`): " + ", ".join(f"{n} from {d}" for d, n in
                                                                        field["devices"].items()) + "."
                if field.get("devices") else ""), "",
             "| variant | lab accuracy | field top-1 | field balanced | field unknown | field accuracy among accepted "
             "| field ECE |", "|---|---|---|---|---|---|---|"]
    for v in report["variants"]:
        f = v.get("field")
        if f:
            lines.append(f"| {v['quant']} | {_pct(v.get('accuracy'))} | {_pct(f['accuracy'])} | "
                         f"{_pct(f['balanced_accuracy'])} | {_pct(f.get('unknown_rate'))} | "
                         f"{_pct(f.get('accuracy_accepted'))} | {f['ece']:.3f} |")
    return lines


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
    if report.get("checked_on"):
        lines += ["Checked on: " + "; ".join(report["checked_on"]) + ".", ""]
    lines += ["A variant fails the accuracy check when its drop is above the limit *and* unlikely to be noise: "
              "only the images float and the variant disagree on carry information (lost: float right, variant "
              "wrong; gained: the reverse), and McNemar's exact test asks how likely that many losses are if both "
              "were equally accurate (fail at p < 0.05). The interval is the 95% interval of the drop.", ""]
    lines += ["| variant | size | vs fp32 | I/O | accuracy | drop (pp) [95% interval] | lost / gained (p) | agreement "
              "| p50 ms | p90 ms | XNNPACK partitions | result |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for v in report["variants"]:
        lat = v.get("latency_ms") or {}
        graph = v.get("graph") or {}
        ratio = f"{100 * v['size_vs_fp32']:.0f}%" if v.get("size_vs_fp32") is not None else "—"
        result = "pass" if v["passed"] else "**FAIL**: " + "; ".join(v["failures"])
        lines.append(f"| {v['quant']} | {_mb(v['size_bytes'])} | {ratio} | {v['io']['input']}/{v['io']['output']} | "
                     f"{_pct(v.get('accuracy'))} | {drop_cell(v)} | {disagreement_cell(v)} | {_pct(v.get('agreement'))} | "
                     f"{lat.get('p50', '—')} | {lat.get('p90', '—')} | {graph.get('xnnpack_partitions', '—')} | {result} |")
    lines += ["", "Variants: " + "; ".join(f"**{v['quant']}**: {v['description']}" for v in report["variants"]
                                       if v.get("description")) + "."]
    speed = report.get("speed", {})
    if speed.get("fastest"):
        lines += ["", f"**Fastest on this machine: {speed['fastest']}**"
                  + (" (p50 speed-up vs fp32: " + ", ".join(f"{k} {x}×" for k, x in speed['speedup_vs_fp32'].items()) + ")"
                     if speed.get("speedup_vs_fp32") else "")
                  + f". Smallest: {speed.get('smallest')}."]
    for v in report["variants"]:
        lines += _kept_float(v) + _repair(v)
    lines += _field(report)
    lines += _unknown(report["variants"])
    lines += _sizes(report["variants"])
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

"""The CPU's int8 model: one XNNPACK partition, and repaired until it keeps its accuracy.

Delegate-aware: XNNPACK has no int8 kernel for some ops (HARD_SWISH in LiteRT 2.x); in a
full-integer graph each runs on slow reference kernels and splits the graph, which makes int8
MobileNetV3 several times slower than its float model. Those op types are found on the real
delegate and re-quantized in float: XNNPACK runs float HARD_SWISH and the QUANTIZE/DEQUANTIZE
around it, so the graph is one partition again. The Edge TPU runs hard-swish in int8, so its
model stays full integer.

Repair: when int8 loses more accuracy than ``--max-accuracy-drop`` (observed, significant or not), the layers that quantize worst (the
debugger's per-layer error) are kept in float, 1, 2, 4… at a time, until the gate passes, the
model gets slower than the limit, or the layer budget is spent (``--repair-budget``, and never more
than a quarter of the layers). Every step is reported.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from converter.graph import delegate_partitions
from converter.report import layer_name
from converter.results import KeptFloat, Repair, Variant

log = logging.getLogger("edgecls")

MAX_FLOAT_SHARE = 4  # the repair keeps at most 1/4 of the quantized layers in float
LATENCY_SLACK = 1.25  # timing noise allowed before a repair step counts as slower than the limit


def float_ops_for_cpu(full: bytes) -> tuple[list[str], int, dict[str, int]]:
    """The op types to keep in float so XNNPACK runs the int8 graph as one partition:
    ``(ops, partitions of the full-integer graph, {op: nodes splitting it})``."""
    partitions, _, splitting = delegate_partitions(full)
    return sorted(splitting), partitions, splitting


def build_cpu_int8(child, full: bytes, prove: Callable[..., Variant], path: Path, config,
                   fp32_p50: float | None) -> Variant:
    """Write the CPU int8 model to ``path`` and return its proven variant (``kept_float`` and ``repair`` added).

    ``child`` is the :class:`~converter.worker.ConverterProcess`; ``prove(data, path, announce=True)`` writes a
    candidate with its metadata and checks it; ``full`` is the full-integer flatbuffer (what the Edge TPU gets).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".edgecls-int8-", dir=path.parent) as tmp:
        folder = Path(tmp)
        ops, partitions, left_out = ([], None, {}) if config.full_integer else float_ops_for_cpu(full)
        data, variant = full, None
        if ops:
            data = child.quantize(ops=ops)
            after = delegate_partitions(data)[0]
            if after < partitions:
                variant = prove(data, folder / path.name)
                plain = prove(full, folder / "full_integer.tflite", announce=False)
                variant.kept_float = KeptFloat(
                    ops={op: left_out[op] for op in ops}, bytes=len(data) - len(full),
                    partitions_full_integer=partitions, partitions=after,
                    full_integer_p50_ms=plain.latency.p50, p50_ms=variant.latency.p50,
                    full_integer_accuracy=plain.accuracy)
                log.info("int8 for CPU: %s kept in float (%+d bytes): %d XNNPACK partition(s) instead of %d, "
                         "p50 %.2f ms instead of %.2f ms", ", ".join(f"{n} {op}" for op, n in
                                                                    variant.kept_float.ops.items()),
                         len(data) - len(full), after, partitions, variant.kept_float.p50_ms,
                         variant.kept_float.full_integer_p50_ms)
            else:
                log.warning("keeping %s in float did not reduce XNNPACK's %d partitions; int8 stays full integer",
                            ", ".join(ops), partitions)
                ops, data = [], full
        if variant is None:
            variant = prove(data, folder / path.name)
        # Repair on the observed drop, not only a significant one: it costs conversion time, never accuracy.
        if config.repair and variant.accuracy_drop_pp > config.max_accuracy_drop:
            limit = max(fp32_p50 or 0.0, variant.latency.p50) * LATENCY_SLACK
            kept_float = variant.kept_float
            variant = _repair(child, ops, variant, prove, folder, path.name, config, limit)
            if kept_float:
                variant.kept_float = kept_float
        chosen = Path(variant.path)
        for suffix in (".json", ".tflite"):  # the model last: a reader that sees it finds its sidecar
            os.replace(chosen.with_suffix(suffix), path.with_suffix(suffix))
        variant.path = str(path)
    return variant


def _repair(child, ops: list[str], variant: Variant, prove, folder: Path, name: str, config,
            latency_limit: float) -> Variant:
    log.info("int8 loses %.2f pp (limit %g): repairing, keeping the layers that quantize worst in float",
             variant.accuracy_drop_pp, config.max_accuracy_drop)
    ranking = child.layer_errors(ops=ops)
    log.info("worst-quantized layers: %s", ", ".join(f"{layer_name(r['node'])} ({r['rmse_per_scale']:.2f} steps)"
                                                     for r in ranking[:5]))
    # A quarter of the layers at most: past that the "int8" model is mostly float and should be fp16.
    budget = min(config.repair_budget, max(1, len(ranking) // MAX_FLOAT_SHARE))
    steps = [_step([], variant)]
    chosen, stop, k = variant, "budget", 1
    while k <= budget:
        kept = ranking[:k]
        candidate_data = child.quantize(ops=ops, nodes=[layer["node"] for layer in kept])
        candidate = prove(candidate_data, folder / f"repair-{k}-{name}", announce=False)
        steps.append(_step(kept, candidate))
        log.info("repair: %d layer(s) in float → accuracy %.2f%% (drop %+.2f pp), p50 %.2f ms", k,
                 100 * candidate.accuracy, candidate.accuracy_drop_pp, candidate.latency.p50)
        if candidate.accuracy_drop_pp <= config.max_accuracy_drop:
            chosen, stop = candidate, "passed"
            break
        if candidate.latency.p50 > latency_limit:
            stop = "latency"
            break
        if k == budget:
            break
        k = min(2 * k, budget)
    variant = chosen
    variant.repair = Repair(
        result=stop, layer_budget=budget, latency_limit_ms=round(latency_limit, 3),
        kept_layers=steps[-1]["kept_layers"] if stop == "passed" else [],
        steps=steps, worst_layers=ranking[:budget])
    if stop != "passed":
        log.warning("repair did not bring int8 within --max-accuracy-drop (%s); keeping the unrepaired int8 model",
                    {"budget": f"{budget} layer(s) in float, the budget (--repair-budget, at most a quarter of "
                               "the layers); if int8 loses this much, try more --calibration-data or --quant fp16",
                     "latency": f"slower than {latency_limit:.2f} ms"}[stop])
    return variant


def _step(kept: list[dict], variant: Variant) -> dict:
    """One row of the repair's table in ``conversion.json``: the layers kept in float and what they gave."""
    return {"kept_layers": [layer["node"] for layer in kept], "kept_ops": [layer["op"] for layer in kept],
            "accuracy": variant.accuracy, "accuracy_drop_pp": variant.accuracy_drop_pp,
            "p_value": variant.drop_test.p_value, "p50_ms": variant.latency.p50,
            "size_bytes": variant.size_bytes, "passed": variant.passed}

"""``run(config)``: convert a model to every requested target, prove each one, write the reports."""

from __future__ import annotations

import datetime
import logging
import os
import platform
from pathlib import Path

import numpy as np

from converter.calibration import choose_calibration, float_spec, load_pixels, pin_input_range, summarize
from converter.checks import (
    compare,
    evaluate,
    gate,
    measure_latency,
    open_classifier,
    reference_predictions,
    tflite_predictions,
)
from converter.config import ConvertConfig
from converter.edgetpu import compile_model
from converter.graph import inspect_flatbuffer, xnnpack_partitions
from converter.reference import ReferenceModel
from converter.report import SCHEMA, summarize_speed, write_reports
from converter.source import Source, load_source, stratified_sample
from converter.targets import TARGETS
from converter.worker import convert_all
from edge_app.errors import LabelsError
from edge_app.files import write_bytes, write_json
from edge_app.runtime import default_num_threads, embed_metadata, load_runtime, read_image

log = logging.getLogger("edgecls")


def run(config: ConvertConfig) -> dict:
    """Convert, check and report; returns the ``conversion.json`` dict (``report["passed"]`` says if all passed).

    Files: ``OUT/model_<quant>.tflite`` (metadata and labels embedded), ``OUT/model_<quant>.json``,
    ``OUT/conversion.json``, ``OUT/conversion.md``, and with ``edgetpu`` the compiled model.
    A variant that fails a check is still written, and marked failed in the reports.

    Example:
        >>> report = run(ConvertConfig.int8("runs/potato"))
        >>> report["variants"][0]["accuracy_drop_pp"]
    """
    source = load_source(config)
    out_dir = config.out_dir or source.run_dir or source.model_path.parent
    chosen = None  # chosen before TensorFlow loads, so a bad calibration set fails in a second
    if any(TARGETS[q].needs_calibration for q in config.quants):
        chosen = choose_calibration(source.calibration, config.calibration_size, config.seed,
                                    source.calibration_source, len(source.labels))
    log.info("loading %s", source.model_path)
    reference = ReferenceModel.load(source.model_path, source.image_size)
    if reference.num_classes != len(source.labels):
        raise LabelsError(f"{source.model_path} outputs {reference.num_classes} classes but its labels have "
                          f"{len(source.labels)}; pass --labels with the file the model was trained with")
    height, width = reference.input_size
    spec = float_spec(height, width, source.mean, source.std, source.channel_order)

    items = stratified_sample(source.test, config.max_eval_images, config.seed)
    log.info("checking on %d images from %s", len(items), source.test_source)
    if 100 / len(items) > config.max_accuracy_drop:
        log.warning("only %d check images: one image is %.2f pp, more than --max-accuracy-drop %g; a single "
                    "changed prediction fails the check. Check on more images (--data DIR)", len(items),
                    100 / len(items), config.max_accuracy_drop)
    images = [read_image(path) for path, _ in items]
    truth = np.array([label for _, label in items])
    ref_scores, ref_top1 = reference_predictions(reference, images, spec)
    probabilities = reference.outputs_probabilities(ref_scores)
    float_eval = evaluate(ref_top1, truth, source.labels)
    log.info("float model: accuracy %.2f%%", 100 * float_eval.accuracy)

    pixels, calibration_summary = None, None
    if chosen:
        pixels = load_pixels(chosen, spec, desc="calibration")
        pin_input_range(pixels, spec)
        calibration_summary = summarize(chosen, pixels, source.labels, source.calibration_source)
    flatbuffers = convert_all(source.model_path, reference.input_size, config.quants, config.io, pixels)

    base_metadata = _metadata(source, reference, probabilities)
    threads = config.num_threads or default_num_threads()
    variants = []
    for quant in config.quants:
        target, data = TARGETS[quant], flatbuffers[quant]
        path = out_dir / target.filename()
        metadata = {**base_metadata, "quant": quant}
        write_bytes(path, embed_metadata(data, metadata, source.labels))
        variant = _check(path, data, source, images, truth, float_eval, ref_top1, config, threads)
        metadata["accuracy"] = {k: variant[k] for k in ("accuracy", "accuracy_drop_pp", "agreement")} | {
            "float_accuracy": float_eval.accuracy, "num_images": len(items), "data": source.test_source}
        # Re-embed now that the accuracy is measured: the artifact carries its own proof.
        write_bytes(path, embed_metadata(data, metadata, source.labels))
        write_json(path.with_suffix(".json"), {**metadata, "labels": source.labels})
        variant["size_bytes"] = path.stat().st_size
        variants.append(variant)
        log.info("%s: %s, accuracy %.2f%% (drop %+.2f pp), agreement %.2f%%, p50 %.2f ms%s", quant,
                 path.name, 100 * variant["accuracy"], variant["accuracy_drop_pp"], 100 * variant["agreement"],
                 variant["latency_ms"]["p50"], "" if variant["passed"] else " FAILED: " + "; ".join(variant["failures"]))
        for warning in variant["warnings"]:
            log.warning("%s: %s", quant, warning)

    fp32_size = next((v["size_bytes"] for v in variants if v["quant"] == "fp32"), None)
    for v in variants:
        v["size_vs_fp32"] = round(v["size_bytes"] / fp32_size, 4) if fp32_size else None

    edgetpu = None
    if config.edgetpu:
        int8_path = out_dir / TARGETS["int8"].filename()
        edgetpu = compile_model(flatbuffers["int8"], int8_path, {**base_metadata, "quant": "int8"}, source.labels)
        (log.info if edgetpu["status"] == "compiled" else log.warning)("Edge TPU: %s", edgetpu["message"])

    report = {
        "schema": SCHEMA,
        "model": str(source.model_path),
        "run_dir": str(source.run_dir) if source.run_dir else None,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "labels": source.labels,
        "input_size": [height, width],
        "preprocessing": {k: base_metadata[k] for k in ("mean", "std", "channel_order")},
        "check_data": {"source": source.test_source, "num_images": len(items),
                       "per_class": {label: int((truth == i).sum()) for i, label in enumerate(source.labels)}},
        "float_accuracy": float_eval.accuracy,
        "float_per_class_accuracy": float_eval.per_class,
        "float_confusion_matrix": float_eval.confusion_matrix,
        "calibration": calibration_summary,
        "limits": {"max_accuracy_drop_pp": config.max_accuracy_drop, "max_latency_ms": config.max_latency_ms},
        "machine": _machine(threads, config),
        "variants": variants,
        "speed": summarize_speed(variants),
        "edgetpu": edgetpu,
    }
    report["passed"] = all(v["passed"] for v in variants) and (edgetpu or {}).get("status") != "failed"
    json_path, md_path = write_reports(out_dir, report)
    log.info("reports: %s, %s", json_path, md_path)
    return report


def _check(path: Path, data: bytes, source: Source, images, truth, float_eval, ref_top1,
           config: ConvertConfig, threads: int) -> dict:
    classifier = open_classifier(path, source.labels, threads)
    predictions = tflite_predictions(classifier, images, desc=path.name)
    result = compare(evaluate(predictions, truth, source.labels), float_eval, ref_top1)
    latency = measure_latency(classifier, images[0], config.warmup, config.runs)
    graph = inspect_flatbuffer(data)
    graph.xnnpack_partitions, graph.cpu_fallback_ops = xnnpack_partitions(classifier.interpreter)
    warnings = list(graph.warnings)
    if graph.xnnpack_partitions is not None and graph.xnnpack_partitions > 1:
        fell = ", ".join(f"{k} {n}" for k, n in graph.cpu_fallback_ops.items()) or "some ops"
        warnings.append(f"XNNPACK split the graph into {graph.xnnpack_partitions} partitions; outside it on "
                        f"reference kernels: {fell}")
    detail = classifier.input_detail, classifier.output_detail
    variant = {
        "quant": path.stem.removeprefix("model_"),
        "path": str(path),
        "size_bytes": path.stat().st_size,
        "io": {"input": np.dtype(detail[0]["dtype"]).name, "output": np.dtype(detail[1]["dtype"]).name,
               "input_quantization": [float(q) for q in detail[0]["quantization"]]},
        **result,
        "latency_ms": latency,
        "graph": graph.to_dict(),
        "warnings": warnings,
    }
    variant["failures"] = gate(variant, config.max_accuracy_drop, config.max_latency_ms)
    variant["passed"] = not variant["failures"]
    del classifier
    return variant


def _metadata(source: Source, reference: ReferenceModel, probabilities: bool) -> dict:
    from edge_app import __version__

    def compact(values):
        return values[0] if len(set(values)) == 1 else list(values)

    return {
        "format": "edgecls/1",
        "input_size": list(reference.input_size),
        "mean": compact(source.mean),
        "std": compact(source.std),
        "channel_order": source.channel_order,
        "output": "probabilities" if probabilities else "logits",
        "num_classes": len(source.labels),
        "source_model": source.model_path.name,
        "edgecls_version": __version__,
    }


def _machine(threads: int, config: ConvertConfig) -> dict:
    from edge_app.device import cpu_model

    runtime = load_runtime()
    return {"cpu": cpu_model(), "machine": platform.machine(), "cores": os.cpu_count(),
            "runtime": runtime.name, "runtime_version": runtime.version, "num_threads": threads,
            "runs": config.runs, "warmup": config.warmup}

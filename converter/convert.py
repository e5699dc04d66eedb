"""``run(config)``: convert a model to every requested target, prove each one, write the reports."""

from __future__ import annotations

import datetime
import logging
import os
import platform
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from converter import unknown
from converter.calibration import choose_calibration, float_spec, load_pixels, pin_input_range, summarize
from converter.checks import (
    Evaluation,
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
from converter.graph import inspect_flatbuffer, size_breakdown, strip_tensor_names, xnnpack_partitions
from converter.int8 import build_cpu_int8
from converter.reference import ReferenceModel
from converter.report import SCHEMA, check_site, summarize_speed, write_reports
from converter.results import Variant
from converter.source import Source, load_source, stratified_sample
from converter.targets import TARGETS
from converter.worker import ConverterProcess
from edge_app.runtime import (
    ImageClassifier,
    cards,
    default_num_threads,
    embed_metadata,
    load_runtime,
    novelty,
    read_artifact,
    read_image,
)
from edge_app.runtime.artifact import flatbuffer_part
from edge_app.runtime.errors import LabelsError
from edge_app.runtime.files import check_writable, write_bytes, write_json
from edge_app.runtime.rundir import model_file, read_config, split_items
from edge_app.runtime.scoring import FIELD_GAP_WARN_PP

log = logging.getLogger("edgecls")


@dataclass(frozen=True)
class Checks:
    """The held-out images every variant is checked on, and what the float model made of them."""

    images: list[np.ndarray]
    truth: np.ndarray
    float_eval: Evaluation
    float_top1: np.ndarray
    probabilities: bool
    source: str


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
    check_writable(out_dir, "--out", inside=True)  # before minutes of work, not after
    field, field_split = field_photos(source, config)  # a bad --field fails now, before minutes of work
    chosen = None  # chosen before TensorFlow loads, so a bad calibration set fails in a second
    if any(TARGETS[q].needs_calibration for q in config.quants):
        chosen = choose_calibration(source.calibration, config.calibration_size, config.seed,
                                    source.calibration_source, len(source.labels))
    log.info("loading %s", source.model_path)
    reference = ReferenceModel.load(source.model_path, source.image_size)
    if reference.num_classes != len(source.labels):
        raise LabelsError(f"{source.model_path} outputs {reference.num_classes} classes but its labels have "
                          f"{len(source.labels)}; pass --labels with the file the model was trained with")
    spec = float_spec(*reference.input_size, source.mean, source.std, source.channel_order)
    checks = _float_checks(reference, source, spec, config)
    pixels, calibration_summary = None, None
    if chosen:
        pixels = load_pixels(chosen, spec, desc="calibration")
        pin_input_range(pixels, spec)
        calibration_summary = summarize(chosen, pixels, source.labels, source.calibration_source)
    base_metadata = _metadata(source, reference, checks.probabilities)
    threads = config.num_threads or default_num_threads()
    variants = []
    with ConverterProcess(source.model_path, reference.input_size, config.io, pixels) as child:
        flatbuffers = {quant: child.convert(quant) for quant in config.quants}
        for quant in config.quants:
            path = out_dir / TARGETS[quant].filename()
            prove = partial(_write_and_check, quant, base_metadata=base_metadata, labels=source.labels,
                            checks=checks, config=config, threads=threads)
            if quant == "int8":
                fp32_p50 = next((v.latency.p50 for v in variants if v.quant == "fp32"), None)
                variants.append(build_cpu_int8(child, flatbuffers[quant], prove, path, config, fp32_p50))
            else:
                variants.append(prove(flatbuffers[quant], path))
    _attach_unknown(variants, source, config, threads, field_split)
    if field is not None:
        _attach_field(variants, field, threads)
    fp32_size = next((v.size_bytes for v in variants if v.quant == "fp32"), None)
    for v in variants:
        v.size_vs_fp32 = round(v.size_bytes / fp32_size, 4) if fp32_size else None
    edgetpu = None
    if config.edgetpu:
        edgetpu = _edgetpu(flatbuffers["int8"], variants[-1], out_dir, base_metadata, source.labels)
    report = _report(source, reference, base_metadata, checks, calibration_summary, config, threads, variants,
                     edgetpu)
    json_path, md_path = write_reports(out_dir, report)
    log.info("reports: %s, %s", json_path, md_path)
    return report


def _attach_unknown(variants: list[Variant], source: Source, config: ConvertConfig, threads: int,
                    field: dict | None = None) -> None:
    """Each proven variant gets its reference set for 'unknown', computed with itself (see :mod:`converter.unknown`);
    ``field``: a run's field ``train`` photos (taken into the reference set first) and ``val`` photos (which the
    threshold must accept too)."""
    field = field or {}
    if not config.unknown:
        return
    val = []
    if source.run_dir is not None and source.test_source != "the run's val split":
        val = split_items(source.run_dir, read_config(source.run_dir), "val")
    check = stratified_sample(source.test, config.max_eval_images, config.seed)
    for variant in variants:
        report = unknown.attach(variant, source.calibration, val, check, config, threads, field.get("val", []),
                                field.get("train", []))
        if report is not None:
            variant.unknown = report


def field_photos(source: Source, config: ConvertConfig) -> tuple[dict | None, dict]:
    """``({"source", "items"} to measure on, or None; the run's field train and val items, for 'unknown')``.

    ``--field DIR`` is measured; without it, a run trained with ``--field`` is measured on its own held-out field
    test photos. Its field train and val photos (never the measured ones) go into the ``unknown`` reference set
    and calibration.
    """
    from edge_app.runtime.labelled import labelled_folder, parse_map, photo_devices

    recorded = (read_config(source.run_dir).get("field") or {}) if source.run_dir is not None else {}
    splits = recorded.get("splits") or {}
    parts = {part: [(Path(p), int(i)) for p, i in splits.get(part, [])] for part in ("train", "val", "test")}
    if config.field is not None:
        items, _ = labelled_folder(config.field, source.labels, parse_map(config.field_map, "--field-map"),
                                   flag="--field", map_flag="--field-map")
        return {"source": str(config.field), "items": items,
                "devices": photo_devices(config.field, [p for p, _ in items])}, parts
    if parts["test"]:
        folder = recorded.get("folder")
        devices = photo_devices(folder, [p for p, _ in parts["test"]]) if folder and Path(folder).is_dir() else {}
        return {"source": f"the run's held-out field photos ({recorded.get('folder')})", "items": parts["test"],
                "devices": devices}, parts
    return None, parts


def _attach_field(variants: list[Variant], field: dict, threads: int) -> None:
    """Each variant measured on the field photos exactly as the device runs it (``eval``'s figures), apart from
    its lab figures; a variant far below its lab accuracy on them says so."""
    from edge_app.runtime.scoring import score_photos

    for variant in variants:
        classifier = ImageClassifier(variant.path, num_threads=threads)
        result, skipped = score_photos(classifier, field["items"], progress_desc=f"{Path(variant.path).name}: field")
        variant.field = {k: result[k] for k in ("accuracy", "balanced_accuracy", "num_images", "per_class",
                                                   "confusion_matrix", "unknown_rate", "known_accepted",
                                                   "accuracy_accepted") if k in result}
        variant.field |= {"ece": result["calibration"]["ece"], "skipped": len(skipped), "source": field["source"]}
        if field.get("devices"):  # the folder came from `edgecls fleet pull`: how many photos from each device
            variant.field["devices"] = field["devices"]
        gap = 100 * (variant.accuracy - result["accuracy"])
        log.info("%s: field top-1 %.1f%% on %d photos (lab %.1f%%)%s", variant.quant, 100 * result["accuracy"],
                 result["num_images"], 100 * variant.accuracy, "" if "unknown_rate" not in result else
                 f", unknown {100 * result['unknown_rate']:.0f}%")
        if gap >= FIELD_GAP_WARN_PP:
            warning = (f"field top-1 {100 * result['accuracy']:.1f}% is {gap:.0f} points below the lab check: "
                       "the lab check flatters it; more field photos (train --field, or learn --field on the device) close the gap")
            variant.warnings.append(warning)
            log.warning("%s: %s", variant.quant, warning)


def _float_checks(reference: ReferenceModel, source: Source, spec, config: ConvertConfig) -> Checks:
    """Pick and decode the check images and run the float model on them."""
    items = stratified_sample(source.test, config.max_eval_images, config.seed)
    log.info("checking on %d images from %s", len(items), source.test_source)
    if 100 / len(items) > config.max_accuracy_drop:
        log.warning("only %d check images: one image is %.2f pp, more than --max-accuracy-drop %g; a single "
                    "changed prediction fails the check. Check on more images (--data DIR)", len(items),
                    100 / len(items), config.max_accuracy_drop)
    # Decoded as the device decodes them for this input size (a large JPEG at a reduced scale).
    images = [read_image(path, spec.decode_size) for path, _ in items]
    truth = np.array([label for _, label in items])
    ref_scores, ref_top1 = reference_predictions(reference, images, spec)
    float_eval = evaluate(ref_top1, truth, source.labels)
    log.info("float model: accuracy %.2f%%", 100 * float_eval.accuracy)
    return Checks(images, truth, float_eval, ref_top1, reference.outputs_probabilities(ref_scores),
                  source.test_source)


def _edgetpu(full_integer: bytes, int8: Variant, out_dir: Path, base_metadata: dict, labels: list[str]) -> dict:
    """Compile the full-integer int8 graph; it is written beside the CPU's when that one keeps ops in float.

    When the CPU's int8 variant is full-integer, it is what gets compiled, with its embedding output and its
    reference set: the Edge TPU copy says ``unknown`` as the int8 variant does (scored in numpy on the device)."""
    metadata, members = {**base_metadata, "quant": "int8"}, None
    source = Path(int8.path)
    if int8.kept_float or (int8.repair and int8.repair.kept_layers):
        source = out_dir / model_file("int8", full_integer=True)
        write_bytes(source, embed_metadata(strip_tensor_names(full_integer), {**metadata, "full_integer": True},
                                           labels))
    elif (int8.unknown or {}).get("enabled"):
        proven = read_artifact(source, keep_bytes=True)
        full_integer = flatbuffer_part(proven.data)
        metadata[novelty.KEY] = proven.metadata[novelty.KEY]
        members = {novelty.MEMBER: proven.reference}
    result = compile_model(full_integer, source, metadata, labels, members=members)
    (log.info if result["status"] == "compiled" else log.warning)("Edge TPU: %s", result["message"])
    return result


def _write_and_check(quant: str, data: bytes, path: Path, base_metadata: dict, labels: list[str], checks: Checks,
                     config: ConvertConfig, threads: int, announce: bool = True) -> Variant:
    """Write one variant with its metadata, prove it, and embed the proof in it (``announce``: log the result;
    off for the candidates int8 compares internally)."""
    # The pooled features as a second output (what 'unknown' reads), in the graph that is proven.
    data = strip_tensor_names(unknown.with_embedding_output(data) if config.unknown else data)
    metadata = {**base_metadata, "quant": quant}
    write_bytes(path, embed_metadata(data, metadata, labels))
    variant = _check(quant, path, data, labels, checks, config, threads)
    metadata["accuracy"] = {"accuracy": variant.accuracy, "accuracy_drop_pp": variant.accuracy_drop_pp,
                            "agreement": variant.agreement, "float_accuracy": checks.float_eval.accuracy,
                            "num_images": len(checks.images), "data": checks.source}
    # Re-embed now that the accuracy is measured: the artifact carries its own proof.
    write_bytes(path, embed_metadata(data, metadata, labels))
    write_json(path.with_suffix(".json"), {**metadata, "labels": labels})
    variant.size_bytes = path.stat().st_size
    variant.size_breakdown = size_breakdown(path.read_bytes())
    say = log.info if announce else log.debug
    say("%s: %s, accuracy %.2f%% (drop %+.2f pp), agreement %.2f%%, p50 %.2f ms%s", quant,
             path.name, 100 * variant.accuracy, variant.accuracy_drop_pp, 100 * variant.agreement,
             variant.latency.p50, "" if variant.passed else " FAILED: " + "; ".join(variant.failures))
    for warning in variant.warnings if announce else ():
        log.warning("%s: %s", quant, warning)
    return variant


def _check(quant: str, path: Path, data: bytes, labels: list[str], checks: Checks, config: ConvertConfig,
           threads: int) -> Variant:
    classifier = open_classifier(path, labels, threads)
    predictions = tflite_predictions(classifier, checks.images, desc=path.name)
    result = compare(evaluate(predictions, checks.truth, labels), checks.float_eval, checks.float_top1, checks.truth)
    latency = measure_latency(classifier, config.warmup, config.runs)
    graph = inspect_flatbuffer(data)
    graph.xnnpack_partitions, graph.cpu_fallback_ops = xnnpack_partitions(classifier.interpreter)
    warnings = list(graph.warnings)
    if graph.xnnpack_partitions is not None and graph.xnnpack_partitions > 1:
        fell = ", ".join(f"{k} {n}" for k, n in graph.cpu_fallback_ops.items()) or "some ops"
        warnings.append(f"XNNPACK split the graph into {graph.xnnpack_partitions} partitions; outside it on "
                        f"reference kernels: {fell}")
    failures = gate(result.accuracy_drop_pp, result.drop_test, latency.p50, config.max_accuracy_drop,
                    config.max_latency_ms)
    test = result.drop_test
    if result.accuracy_drop_pp > config.max_accuracy_drop and not test.significant:
        warnings.append(f"drop {result.accuracy_drop_pp:.2f} pp is above --max-accuracy-drop but could be chance "
                        f"({test.lost} images lost, {test.gained} gained: p = {test.p_value:.3g}); check on "
                        "more images to be sure (--data DIR)")
    detail = classifier.input_detail, classifier.output_detail
    variant = Variant(
        quant=quant,
        description=TARGETS[quant].description,
        path=str(path),
        size_bytes=path.stat().st_size,
        io={"input": np.dtype(detail[0]["dtype"]).name, "output": np.dtype(detail[1]["dtype"]).name,
            "input_quantization": [float(q) for q in detail[0]["quantization"]]},
        **vars(result),  # accuracy, drop and its test, agreement, per-class figures, confusion matrix
        latency=latency,
        graph=graph,
        kernels=classifier.kernels,
        warnings=warnings,
        failures=failures,
        passed=not failures,
    )
    del classifier
    return variant


def _report(source: Source, reference: ReferenceModel, base_metadata: dict, checks: Checks,
            calibration_summary: dict | None, config: ConvertConfig, threads: int, variants: list[Variant],
            edgetpu: dict | None) -> dict:
    """The ``conversion.json`` dict: the variants are written out here, as their ``to_dict()``."""
    truth = checks.truth
    written = [v.to_dict() for v in variants]
    report = {
        "schema": SCHEMA,
        "model": str(source.model_path),
        "run_dir": str(source.run_dir) if source.run_dir else None,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "labels": source.labels,
        "input_size": list(reference.input_size),
        "preprocessing": {k: base_metadata[k] for k in ("mean", "std", "channel_order")},
        "check_data": {"source": checks.source, "num_images": len(truth),
                       "per_class": {label: int((truth == i).sum()) for i, label in enumerate(source.labels)}},
        "float_accuracy": checks.float_eval.accuracy,
        "float_per_class_accuracy": checks.float_eval.per_class,
        "float_confusion_matrix": checks.float_eval.confusion_matrix,
        "calibration": calibration_summary,
        "limits": {"max_accuracy_drop_pp": config.max_accuracy_drop, "max_latency_ms": config.max_latency_ms},
        "machine": _machine(threads, config),
        "variants": written,
        "speed": summarize_speed(variants),
        "edgetpu": edgetpu,
    }
    field = next((v.field for v in variants if v.field), None)
    if field is not None:
        report["field"] = {"source": field["source"], "num_images": field["num_images"],
                           **({"devices": field["devices"]} if field.get("devices") else {})}
    report["checked_on"] = [check_site(platform.machine(), platform.python_version(), written)]
    report["passed"] = all(v.passed for v in variants) and (edgetpu or {}).get("status") != "failed"
    return report


def _metadata(source: Source, reference: ReferenceModel, probabilities: bool) -> dict:
    from edge_app import __version__

    def compact(values):
        return values[0] if len(set(values)) == 1 else list(values)

    metadata = {
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
    if source.cards:  # every variant and the Edge TPU copy are made from this metadata
        metadata[cards.KEY] = source.cards
    return metadata


def _machine(threads: int, config: ConvertConfig) -> dict:
    from edge_app.runtime.device import cpu_model

    runtime = load_runtime()
    return {"cpu": cpu_model(), "machine": platform.machine(), "cores": os.cpu_count(),
            "runtime": runtime.name, "runtime_version": runtime.version, "num_threads": threads,
            "runs": config.runs, "warmup": config.warmup}

"""What a learned model needs to say ``unknown``: its reference set, its threshold, and the report of both.

The embeddings are the ones ``learn`` already computed (base type, as the device computes them); the choice,
calibration and scoring are :mod:`edge_app.runtime.novelty`'s, shared with the converter and the runtime.
"""

from __future__ import annotations

import logging

import numpy as np

from edge_app.learn.embed import Embedder
from edge_app.runtime import novelty
from edge_app.runtime.errors import DataError

log = logging.getLogger("edgecls")


def reference_set(final: dict, check: dict, raw: dict, embedder: Embedder, embedding, kept_classes: bool,
             model_bytes: int, config) -> tuple[dict, dict[str, bytes]]:
    """The reference set for ``unknown`` (archive members) and its report.

    The reference set: a random sample of each class's photos (all that the model was fitted on), as many as fit
    in ``novelty.BUDGET`` of the base model's size. The threshold accepts ``--unknown-accept`` of the validation
    photos, scored against a reference set of the training part alone (as the validation accuracy is measured
    with a head fitted without them); without a validation part, of the reference photos themselves, each left
    out of its own neighbours.
    """
    if kept_classes:
        log.info("no 'unknown' for a --keep-classes model: the base's own classes have no photos here to compare "
                 "frames with")
        return {"enabled": False, "why": "--keep-classes: the base's classes have no reference photos"}, {}
    x = novelty.unit_rows(embedder.dequantize(final["raw_x"]))
    if len(x) < 2:
        return {"enabled": False, "why": "fewer than two photos: nothing to calibrate on"}, {}
    row_bytes = final["raw_x"].itemsize * embedder.width
    held = [p for p in ("val", "field_val") if p in raw]
    if held:
        train = novelty.unit_rows(embedder.dequantize(check["raw_x"]))
        val = embedder.dequantize(np.concatenate([raw[p][0] for p in held]))
        field = np.concatenate([np.full(len(raw[p][1]), p == "field_val") for p in held])
        fitted = novelty.fit(train, check["raw_y"], row_bytes, model_bytes, config.unknown_accept,
                             novelty.unit_rows(val), check["head"].scores(val), config.seed,
                             first=check["is_field"], field=field)
    else:
        fitted = novelty.fit(x, final["raw_y"], row_bytes, model_bytes, config.unknown_accept, seed=config.seed,
                             first=final["is_field"])
    threshold, k, known = fitted.threshold, fitted.k, fitted.known
    # The model keeps a reference set sampled from every photo it was fitted on; the threshold stands as found with
    # the validation photos held out (against the final set, which includes them, they would look more familiar
    # than any new photo).
    chosen = novelty.sample(final["raw_y"], fitted.per_class, config.seed, first=final["is_field"])
    reference, reference_y = x[chosen], final["raw_y"][chosen]
    report: dict = {"enabled": True, "accept": config.unknown_accept, "references": int(len(chosen)), "k": k}
    if held:
        start = 0
        for part in held:  # each part's acceptance apart: lab and field photos are different numbers
            n = len(raw[part][1])
            report[part] = acceptance(known[start:start + n], threshold, check["head"],
                                      embedder.dequantize(raw[part][0]), raw[part][1])
            start += n
        if config.unknown_check is not None:
            report["check"] = unknown_check(config, embedder, check["head"], train[fitted.chosen], fitted.labels,
                                             known, threshold, k, np.concatenate([raw[p][0] for p in held]))
    elif config.unknown_check is not None:
        log.warning("--unknown-check needs a validation part (classes of 5 photos or more): not measured")
    calibrated_on = fitted.calibrated_on
    if "test" in raw:
        test = embedder.dequantize(raw["test"][0])
        scores = novelty.reference_novelty(reference, reference_y, novelty.unit_rows(test), k,
                                           final["head"].scores(test))
        report["test"] = acceptance(scores, threshold, final["head"], test, raw["test"][1])
    member = novelty.pack(final["raw_x"][chosen], final["raw_y"][chosen])
    report.update(threshold=round(threshold, 6), calibrated_on=calibrated_on, reference_bytes=len(member),
                  spec=novelty.spec(threshold, config.unknown_accept, embedding.name, len(chosen), calibrated_on, k,
                                    fitted.per_class))
    log.info("unknown: %d reference photos (%.0f kB), threshold %.3f accepts %.0f%% of %s", len(chosen),
             len(member) / 1e3, threshold, 100 * config.unknown_accept, calibrated_on)
    return report, {novelty.MEMBER: member}


def acceptance(novelty_scores: np.ndarray, threshold: float, head, x: np.ndarray, truth: np.ndarray) -> dict:
    return novelty.acceptance(novelty_scores, threshold, head.scores(x).argmax(1) == truth)


def unknown_check(config, embedder: Embedder, head, reference: np.ndarray, reference_y: np.ndarray,
                   known: np.ndarray, threshold: float, k: int, val_raw: np.ndarray) -> dict:
    """``--unknown-check DIR``, scored as the validation photos were (against the training part's reference set)."""
    from edge_app.runtime import list_images

    paths = list_images(config.unknown_check, recursive=True)
    if not paths:
        raise DataError(f"--unknown-check {config.unknown_check} holds no images (jpg, png, bmp, webp)")
    raw, _, skipped = embedder.embed(paths, desc="embedding --unknown-check")
    unknown_x = embedder.dequantize(raw)
    ours = novelty.reference_novelty(reference, reference_y, novelty.unit_rows(unknown_x), k, head.scores(unknown_x))
    result = novelty.compare_with_max_softmax(known, ours, threshold, head.scores(embedder.dequantize(val_raw)),
                                              head.scores(unknown_x), config.unknown_accept)
    return {"folder": str(config.unknown_check), "skipped": len(skipped), **result}

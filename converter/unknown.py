"""Every converted variant says ``unknown``: the trained model's pooled features as a second output, and a
reference set computed with the variant itself.

- **Graph**: the tensor that feeds the final FULLY_CONNECTED (the pooled features of a trained model) becomes a
  second output before the variant is proven (:func:`with_embedding_output`, the graph surgery ``edgecls learn``
  uses, on the flatbuffer): the scores are computed as before, and one invoke gives both.
- **Reference set** (:func:`attach`): the run's train split through the runtime's decode and pre-processing and
  the variant's own embedding (the int8 variant's set is int8, computed with the int8 model), a random sample
  per class sized to ``novelty.BUDGET`` of the variant's file; the threshold accepts ``--unknown-accept`` of the val
  split (without one, of the reference photos each left out of its own neighbours); checked on the test split
  (known accepted, accuracy among accepted) and, with ``--unknown-check DIR``, on photos of none of the classes,
  beside the max softmax probability.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from converter.graph import size_breakdown
from converter.results import Variant
from edge_app.runtime import (
    ImageClassifier,
    ModelArtifact,
    embed_metadata,
    graph,
    list_images,
    novelty,
    read_artifact,
    rewrite,
)
from edge_app.runtime.artifact import flatbuffer_part
from edge_app.runtime.errors import DataError, ImageError, ModelError
from edge_app.runtime.files import write_bytes, write_json
from edge_app.runtime.progress import progress
from edge_app.runtime.quant import dequantize

log = logging.getLogger("edgecls")

POOL_PER_CLASS = 2 * novelty.PER_CLASS  # train photos per class embedded: the sample and the rest for nothing
SHORTFALL = 0.10  # check images accepted this far below --unknown-accept: the calibration photos were too familiar


def with_embedding_output(data: bytes) -> bytes:
    """``data`` with the classifier's embedding as a second output; ``data`` itself when no FULLY_CONNECTED /
    1x1 CONV_2D classifier is found (a model from elsewhere: it converts as before, without ``unknown``)."""
    model = graph.read_model(data)
    try:
        embedding = graph.find_embedding(model)
    except ModelError as e:
        log.info("no embedding found for 'unknown' (%s): the variants will not say it", e)
        return data
    if embedding.classifier is None:
        return data
    return rewrite.with_output(model, embedding)


def attach(variant: Variant, train: list, val: list, test: list, config, threads: int,
           field_val: list = (), field_train: list = ()) -> dict | None:
    """Compute, check and embed the reference set of one written variant; returns its report (``None`` when the
    variant has no embedding output). ``train``/``val``/``test``: ``(path, class index)`` items; ``field_val``:
    held-out field photos (a run trained with ``--field``), which the threshold must accept at the same rate;
    ``field_train``: its field training photos, taken into the reference set first."""
    path = Path(variant.path)
    artifact = read_artifact(path, keep_bytes=True)
    model = graph.read_model(artifact.data)
    outputs = model.subgraphs[0].outputs
    if len(outputs) < 2:
        return None
    name = graph.tensor_name(model.subgraphs[0], int(outputs[1]))
    placeholder = {**artifact.metadata, novelty.KEY: novelty.spec(0.0, config.unknown_accept, name, 0, "")}
    clf = ImageClassifier(ModelArtifact(path, placeholder, artifact.labels, artifact.edgetpu, artifact.data),
                          num_threads=threads, unknown=False)
    first = np.array([False] * len(train) + [True] * len(field_train))
    train = [*train, *field_train]
    pool = novelty.sample(np.array([label for _, label in train]), POOL_PER_CLASS, config.seed, first)
    train, first = [train[i] for i in pool], first[pool]
    kept: list[int] = []
    _, train_raw, train_y = _run(clf, train, f"{path.name}: reference set", kept)
    first = first[kept]
    if len(train_raw) < 2:
        raise DataError(f"{path.name}: fewer than two readable training photos to make its reference set from")
    parts = [_run(clf, items, f"{path.name}: calibration{' (field)' * bool(i)}")
             for i, items in enumerate((val, field_val)) if items]
    val_p = np.concatenate([p for p, _, _ in parts]) if parts else None
    val_raw = np.concatenate([r for _, r, _ in parts]) if parts else None
    is_field = np.concatenate([np.full(len(r), bool(field_val) and i == len(parts) - 1)
                               for i, (_, r, _) in enumerate(parts)]) if parts else None
    unit_train = novelty.unit_rows(_float(clf, train_raw))
    fitted = novelty.fit(unit_train, train_y, train_raw.itemsize * train_raw.shape[1],
                         len(flatbuffer_part(artifact.data)), config.unknown_accept,
                         None if val_raw is None else novelty.unit_rows(_float(clf, val_raw)), val_p, config.seed,
                         first=first, field=is_field)
    reference = unit_train[fitted.chosen]

    def scores(probabilities, raw):
        return novelty.reference_novelty(reference, fitted.labels, novelty.unit_rows(_float(clf, raw)), fitted.k,
                                         probabilities)

    report: dict = {"enabled": True, "accept": config.unknown_accept, "threshold": round(fitted.threshold, 6),
                    "references": int(len(fitted.chosen)), "k": fitted.k, "calibrated_on": fitted.calibrated_on}
    known = None
    if test:
        test_p, test_raw, test_y = _run(clf, test, f"{path.name}: check")
        known = scores(test_p, test_raw)
        report["test"] = novelty.acceptance(known, fitted.threshold, test_p.argmax(1) == test_y)
        if report["test"]["known_accepted"] < config.unknown_accept - SHORTFALL:
            warning = (
                f"'unknown' accepts {100 * report['test']['known_accepted']:.0f}% of the check images, set for "
                f"{100 * config.unknown_accept:.0f}% on {fitted.calibrated_on}: those look more like the training "
                "photos than the check images do (carved from the same photos?). New photos will be called unknown "
                "more often than planned: give val/ photos taken apart from train/, or train with --val-from test")
            variant.warnings.append(warning)
            log.warning("%s: %s", variant.quant, warning)
    if config.unknown_check is not None and known is not None:
        items = [(p, -1) for p in list_images(config.unknown_check, recursive=True)]
        if not items:
            raise DataError(f"--unknown-check {config.unknown_check} holds no images (jpg, png, bmp, webp)")
        other_p, other_raw, _ = _run(clf, items, f"{path.name}: --unknown-check")
        ours = scores(other_p, other_raw)
        report["check"] = {"folder": str(config.unknown_check),
                           **novelty.compare_with_max_softmax(known, ours, fitted.threshold, test_p, other_p,
                                                              config.unknown_accept)}
    member = novelty.pack(train_raw[fitted.chosen], train_y[fitted.chosen])
    report["reference_bytes"] = len(member)
    metadata = {**artifact.metadata, novelty.KEY: novelty.spec(fitted.threshold, config.unknown_accept, name,
                                                               len(fitted.chosen), fitted.calibrated_on, fitted.k,
                                                               fitted.per_class)}
    write_bytes(path, embed_metadata(artifact.data, metadata, artifact.labels, {novelty.MEMBER: member}))
    write_json(path.with_suffix(".json"), {**metadata, "labels": artifact.labels})
    variant.size_bytes = path.stat().st_size
    variant.size_breakdown = size_breakdown(path.read_bytes())
    log.info("%s: 'unknown' above novelty %.3f (%d reference photos, %.0f kB; accepts %.0f%% of %s)%s", path.name,
             fitted.threshold, len(fitted.chosen), len(member) / 1e3, 100 * config.unknown_accept,
             fitted.calibrated_on, "" if "check" not in report else
             f"; --unknown-check: {100 * report['check']['knn']['unknown_rejected']:.0f}% called unknown "
             f"(max softmax: {100 * report['check']['max_softmax']['unknown_rejected']:.0f}%)")
    return report


def _run(clf: ImageClassifier, items: list, desc: str,
         kept: list | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(probabilities [N, C], raw embeddings [N, D], labels [N])`` of the readable images, as the device runs them;
    ``kept`` (when given) gets the index in ``items`` of each row."""
    scores, embeddings, labels = [], [], []
    for i, (path, label) in enumerate(progress(items, desc=desc, unit="img", leave=False, disable=len(items) < 50)):
        try:
            clf.set_input(clf.read_image(path))
        except ImageError as e:
            log.warning("skipping %s", e)
            continue
        if kept is not None:
            kept.append(i)
        clf.invoke()
        scores.append(clf.scores().copy())
        embeddings.append(clf.embedding(raw=True).copy())
        labels.append(label)
    width = int(np.prod(clf.embedding_detail["shape"]))
    return (np.array(scores, np.float32).reshape(-1, clf.num_classes),
            np.array(embeddings).reshape(-1, width).astype(clf.embedding_detail["dtype"]), np.array(labels, np.int64))


def _float(clf: ImageClassifier, raw: np.ndarray) -> np.ndarray:
    return dequantize(raw, *clf.embedding_detail["quantization"])

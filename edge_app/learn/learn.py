"""``learn(LearnConfig)``: teach a TFLite classifier new classes on the device, from a folder of photos, without TensorFlow.

1. The base model (default: Coral's ImageNet MobileNetV2, shipped in the package) is cut at its
   embedding, the tensor that feeds its final classification layer.
2. Every photo is embedded once, exactly as the device runs the model (the runtime's decode and
   pre-processing), streamed.
3. A head is fitted in numpy on the embeddings (``heads``), checked on the validation part.
4. The output is a standalone TFLite classifier, the base graph up to the embedding plus the new
   fully connected + softmax layers, with labels and metadata embedded, and with what extending it
   later needs: per-class sums of normalised embeddings and up to ``SAMPLES_PER_CLASS`` embeddings
   per class (in the base's own tensor type: 1,280 bytes each for Coral's uint8 MobileNetV2).
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_app.learn import data as photos
from edge_app.learn import heads
from edge_app.learn import unknown as unknown_set
from edge_app.learn.embed import MAX_SIZE, MIN_SIZE, Embedder, at_input_size
from edge_app.learn.report import evaluate, write_reports
from edge_app.learn.state import STATE, read_state, state_bytes
from edge_app.runtime import cards, graph, novelty, rewrite
from edge_app.runtime.artifact import (
    embed_metadata,
    flatbuffer_part,
    read_artifact,
)
from edge_app.runtime.dataset import scan
from edge_app.runtime.errors import (
    ConfigError,
    DataError,
    LabelsError,
    ModelError,
    OutputError,
    check_normalization,
    check_threads,
)
from edge_app.runtime.files import check_writable, write_bytes

log = logging.getLogger("edgecls")

MODELS = Path(__file__).parent / "models"
DEFAULT_BASE = MODELS / "mobilenet_v2_1.0_224_quant.tflite"
SAMPLES_PER_CLASS = 128
KEEP_MARGIN = 2.0  # --keep-classes: logits by which a new class beats the old ones on its own photos


@dataclass(frozen=True)
class LearnConfig:
    """One ``edgecls learn`` run.

    Attributes:
        data: folder of class sub-folders (or ``train/`` with optional ``val/`` and ``test/``).
        out: the ``.tflite`` to write; the reports go beside it (``NAME.learn.json``/``.md``).
        base: a TFLite image classifier, an embedding model, or a model ``learn`` wrote (then its classes
            are kept and extended); ``None`` = the shipped ImageNet MobileNetV2.
        head: ``auto``, ``imprint`` or ``softmax``.
        val_split: share of each class's images (classes with 5 or more) held out to check and stop on.
        keep_classes: keep a plain classifier's own classes (its final layer's weights) and add the new ones.
        embedding: the embedding tensor's name or index, when the search does not find it.
        labels: the base's label file, for ``keep_classes`` when the base carries none.
        mean, std: the base's input normalization when its metadata has none (float bases).
        compare: another classifier (the model the new one replaces) to check on the same validation
            photos; its labels are matched by name (a class it does not know counts as wrong).
        field: a folder of class folders of field photos (what the kiosk sees), matched to the classes by name
            (``field_map``: ``FOLDER=CLASS`` for the rest); they weigh ``field_weight`` of each class in the fit,
            are kept first in the reference set, and their held-out part sets the ``unknown`` threshold too.
        as_field: DATA's own photos are field photos (the kiosk's labelled frames), weighed as ``field`` photos
            against what a learned base remembers of its (lab) photos.
        input_size: run the base at this many pixels square (:func:`edge_app.runtime.rewrite.at_size`): more
            pixels keep a field photo's lesions (320 for field leaves, docs/field.md); ``None`` = the base's own.
            A learned base keeps the size its remembered photos were embedded at.
        classes: a class cards file (:mod:`edge_app.runtime.cards`) for the classes; ``None`` takes
            ``DATA/classes.yaml`` when there is one. The base's cards are kept for every class of the new model
            that has one there; the file's win, card by card (class and language).

    Example:
        >>> report = learn(LearnConfig(data=Path("leaves"), out=Path("leaves.tflite")))
        >>> report["val"]["accuracy"]
    """

    data: Path
    out: Path
    base: Path | None = None
    head: str = "auto"
    val_split: float = 0.2
    seed: int = 0
    num_threads: int | None = None
    device: str = "cpu"
    embedding: str | None = None
    keep_classes: bool = False
    labels: Path | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    compare: Path | None = None
    overwrite: bool = False
    unknown_accept: float = novelty.DEFAULT_ACCEPT
    unknown_check: Path | None = None
    field: Path | None = None
    field_map: tuple[str, ...] = ()
    field_weight: float = 0.5
    as_field: bool = False
    classes: Path | None = None
    input_size: int | None = None

    def __post_init__(self):
        set_ = object.__setattr__.__get__(self)
        for name in ("data", "out", "base", "labels", "compare", "unknown_check", "field", "classes"):
            if getattr(self, name) is not None:
                set_(name, Path(getattr(self, name)))
        if self.head not in heads.HEADS:
            raise ConfigError(f"unknown --head {self.head!r}; choose {', '.join(heads.HEADS)}")
        if not 0 <= self.val_split < 0.9:
            raise ConfigError(f"--val-split must be in [0, 0.9), got {self.val_split}")
        novelty.check_accept(self.unknown_accept, ConfigError)
        if self.unknown_check is not None and not self.unknown_check.is_dir():
            raise DataError(f"--unknown-check {self.unknown_check} is not a folder; give a folder of photos of things "
                            "that are none of the classes")
        if self.out.suffix != ".tflite":
            raise ConfigError(f"--out {self.out} must end in .tflite")
        check_threads(self.num_threads, error=ConfigError)
        check_normalization(self.mean, self.std, ConfigError)
        if not 0 < self.field_weight < 1:
            raise ConfigError(f"--field-weight must be between 0 and 1 (the share of each class's weight carried by "
                              f"its field photos), got {self.field_weight}")
        if self.field is not None and not self.field.is_dir():
            raise DataError(f"--field {self.field} is not a folder; give a folder of class sub-folders of field "
                            "photos (FIELD/<class>/*.jpg)")
        if self.field_map and self.field is None:
            raise ConfigError("--field-map needs --field FIELD")
        if self.input_size is not None and not MIN_SIZE <= self.input_size <= MAX_SIZE:
            raise ConfigError(f"--input-size must be between {MIN_SIZE} and {MAX_SIZE} pixels, got {self.input_size}")
        if self.as_field and self.field is not None:
            raise ConfigError("--as-field says DATA holds field photos; give them as DATA or as --field, not both")
        if not self.data.is_dir():
            raise DataError(f"{self.data} is not a folder; give a folder of class sub-folders (DATA/<class>/*.jpg)")
        if self.classes is None and cards.default_file(self.data) is not None:
            set_("classes", cards.default_file(self.data))
            log.info("class cards: %s (found in DATA; --classes FILE gives another)", self.classes)
        if self.out.is_dir():
            raise OutputError(f"--out {self.out} is a folder; give the .tflite file to write, e.g. {self.out / 'learned.tflite'}")
        if self.out.exists() and not self.overwrite:
            same = self.base is not None and self.base.exists() and self.out.resolve() == self.base.resolve()
            raise OutputError(f"--out {self.out} exists{' and is the --base' if same else ''}; pass --overwrite to "
                              f"replace it{' (the base is read first, then replaced atomically)' if same else ''}, "
                              "or choose another file name")
        check_writable(self.out.parent, "--out", inside=True)


def learn(config: LearnConfig) -> dict:
    """Embed, fit, check and write; returns the report (also written beside the model)."""
    started = time.monotonic()
    base_path = config.base or DEFAULT_BASE
    artifact = read_artifact(base_path, keep_bytes=True, what="--base")
    base = artifact.data
    model = graph.read_model(base, f"--base {base_path}")
    state = read_state(base, base_path)
    model = at_input_size(model, config.input_size, state, base_path)
    embedding = graph.find_embedding(model, config.embedding or (artifact.metadata.get("learn") or {}).get("embedding"))
    log.info("base %s: embedding %s %s (%s, %d values)%s", base_path.name, embedding.name, list(embedding.shape),
             embedding.dtype, embedding.width,
             f", feeding its {embedding.num_classes}-class {embedding.classifier}" if embedding.classifier else "")

    old_labels, old_head = [], None
    if state is not None:
        old_labels = list(state["labels"])
    elif config.keep_classes:
        if embedding.classifier is None:
            raise ModelError(f"--keep-classes: {base_path} has no classification layer after its embedding "
                             f"{embedding.name}; it is an embedding model, learn new classes without --keep-classes")
        old_labels = photos.base_labels(artifact, base_path, config.labels, embedding.num_classes)
        old_head = graph.classifier_weights(model, embedding)

    root = config.data / "train" if (config.data / "train").is_dir() else config.data
    dataset = scan(root, val_split=0.0, test_split=0.0, seed=config.seed, min_classes=1 if old_labels else 2,
                   verify=False)
    labels = photos.merge_labels(old_labels, dataset.labels, root)
    # the base's cards for the classes it keeps, the file's over them; a bad file fails here, before embedding
    class_cards = photos.class_cards(artifact.metadata, base_path, labels, config.classes)
    # --keep-classes with photos of the base's own classes only: nothing to add to its head, but what it needs
    # to say "unknown" (any TFLite classifier gains the embedding output and a reference set this way).
    reference_only = old_head is not None and len(labels) == len(old_labels)
    if reference_only:
        log.info("--keep-classes: every class of %s is already one of %s's: its classes stay as they are, and "
                 "these photos become its reference set for 'unknown'", root, base_path.name)
    photos.warn_imbalance(dataset, root)
    embedder = Embedder(rewrite.cut_at(model, embedding), artifact.metadata, config.device, config.num_threads,
                        config.mean, config.std, base_path.name)
    parts = photos.split_parts(dataset, labels, config.data, config.val_split, config.seed)
    if config.as_field:  # the kiosk's labelled frames: field photos, weighed against what the base remembers
        parts = {f"field_{part}" if part in ("train", "val") else part: v for part, v in parts.items()}
    if config.field is not None:
        parts |= photos.field_parts(config.field, config.field_map, labels, config.val_split, config.seed)
    raw, read, skipped = {}, {}, []
    for part, (paths, targets) in parts.items():
        if paths:
            vectors, kept, bad = embedder.embed(paths, desc=f"embedding {part}")
            raw[part] = (vectors, targets[kept])
            read[part] = [path for path, ok in zip(paths, kept, strict=True) if ok]
            skipped += bad
    photos.check_readable(dataset, raw, labels, skipped, ("field_",) if config.as_field else ("",))
    embed_s = time.monotonic() - started

    # The validation part measures a head fitted without it; the model written is then fitted on every photo
    # (with few photos per class, each one held back costs more than early stopping on a handful buys).
    every = tuple(p for p in ("train", "val", "field_train", "field_val") if p in raw)
    fitted_on = tuple(p for p in ("train", "field_train") if p in raw)
    final = _fit_parts(raw, every, state, old_labels, old_head, labels, embedder, config)
    check = final if every == fitted_on else \
        _fit_parts(raw, fitted_on, state, old_labels, old_head, labels, embedder, config)
    head, counts = final["head"], final["counts"]
    log.info("head: %s (%s), %d classes from %d images (%s per class)", head.kind,
             "chosen by images per class" if config.head == "auto" else "--head", len(labels), int(counts.sum()),
             f"{counts.min()}-{counts.max()}")
    fit_s = time.monotonic() - started - embed_s
    results = {}
    if "val" in raw:
        results["val"] = evaluate(check["head"].scores(embedder.dequantize(raw["val"][0])).argmax(1), raw["val"][1],
                                  labels)
    if "field_val" in raw:  # beside the lab figure, never pooled with it
        results["field_val"] = evaluate(check["head"].scores(embedder.dequantize(raw["field_val"][0])).argmax(1),
                                        raw["field_val"][1], labels)
    if "test" in raw:
        results["test"] = evaluate(head.scores(embedder.dequantize(raw["test"][0])).argmax(1), raw["test"][1], labels)
    compared = next((part for part in ("val", "field_val") if part in raw), None)
    if config.compare is not None and compared is not None:  # the model it replaces, on the same held-out photos
        results["val_before"] = _check_other(config.compare, read[compared], raw[compared][1], labels, config)
    sums, samples, sample_y = final["sums"], final["samples"], final["sample_labels"]
    unknown, members = unknown_set.reference_set(final, check, raw, embedder, embedding, old_head is not None and not reference_only,
                                len(flatbuffer_part(base)), config)
    if reference_only and not members:
        raise DataError(f"{root}: too few photos for a reference set (two or more are needed); add photos")
    metadata = _metadata(artifact.metadata, base_path, base, embedding, head, labels, old_labels, config, reference_only)
    if members:
        metadata[novelty.KEY] = unknown.pop("spec")
    metadata.pop(cards.KEY, None)  # the base's own (reference_only), replaced by the merged ones
    if class_cards:
        metadata[cards.KEY] = class_cards
    if reference_only:  # the base's graph as it is, plus its embedding as a second output
        data = rewrite.with_output(model, embedding)
    else:
        data = rewrite.with_head(model, embedding, head.weights, head.bias, embedding_output=bool(members))
        members[STATE] = state_bytes(labels, sums, counts, samples, sample_y, embedding, final["sample_field"])
    write_bytes(config.out, embed_metadata(data, metadata, labels, members))
    report = {
        "schema": "edgecls.learn/1", "model": str(config.out), "base": str(base_path), "data": str(config.data),
        "embedding": {"name": embedding.name, "width": embedding.width, "dtype": embedding.dtype},
        "input_size": [embedder.spec.height, embedder.spec.width],
        "head": head.kind, "labels": labels, "new_labels": [label for label in labels if label not in old_labels],
        "kept_labels": old_labels, "images": {part: int(len(t)) for part, (_, t) in raw.items()},
        "images_per_class": {label: int(n) for label, n in zip(labels, counts, strict=True)},
        "skipped": skipped, **results, "unknown": unknown, "seconds": {"embedding": round(embed_s, 2), "fit": round(fit_s, 2)},
        "embedding_rate_img_s": round(sum(len(t) for _, t in raw.values()) / max(embed_s, 1e-9), 1),
        "size_bytes": config.out.stat().st_size, "created": metadata["learn"]["created"],
    }
    report["latency_p50_ms"] = _latency(config.out, base_path, config)
    write_reports(config.out, report)
    return report


def _latency(model: Path, base: Path, config: LearnConfig) -> dict:
    """p50 of the learned model and of its base on this machine (the runtime's one timer): the new head's cost."""
    from edge_app.runtime import ImageClassifier
    from edge_app.runtime.timing import latency_stats, time_invokes

    out = {}
    for name, path in (("learned", model), ("base", base)):
        try:
            classifier = ImageClassifier(path, device=config.device, num_threads=config.num_threads)
        except (ModelError, LabelsError) as e:  # e.g. an embedding model: no classifier output to time
            log.debug("not timing %s: %s", path, e)
            continue
        out[name] = round(latency_stats(time_invokes(classifier, runs=50, warmup=5)[1])["p50"], 3)
    return out


def _check_other(model: Path, paths: list[Path], truth: np.ndarray, labels: list[str], config: LearnConfig) -> dict:
    """``evaluate`` of another classifier on the same photos, its labels matched to ``labels`` by name."""
    from edge_app.runtime import ImageClassifier

    # Without embedded labels it is taken to share the base's label file (the kiosk compares with its running model).
    other = ImageClassifier(model, labels=config.labels, device=config.device, num_threads=config.num_threads,
                            mean=config.mean, std=config.std, embedded_labels_first=True)
    index = {label: i for i, label in enumerate(labels)}
    unknown = len(labels)  # one extra column: "a class this model does not know"
    predicted = [index.get(other.classify(other.read_image(path), top_k=1)[0].label, unknown) for path in paths]
    result = evaluate(np.array(predicted, np.int64), truth, [*labels, "(not a class of this model)"])
    result["model"] = str(model)
    return result


def _fit_parts(raw: dict, parts: tuple[str, ...], state: dict | None, old_labels: list[str], old_head,
               labels: list[str], embedder: Embedder, config: LearnConfig) -> dict:
    """The head fitted on the photos of ``parts`` (plus what a learned base remembers), and the state to store."""
    raw_x = np.concatenate([raw[p][0] for p in parts])
    raw_y = np.concatenate([raw[p][1] for p in parts])
    is_field = np.concatenate([np.full(len(raw[p][1]), p.startswith("field_")) for p in parts])
    sums = heads.class_means(embedder.dequantize(raw_x), raw_y, len(labels))
    counts = np.bincount(raw_y, minlength=len(labels))
    if state is not None:  # what the learned base remembers of its classes: exact sums, a sample of embeddings
        k = len(old_labels)
        sums[:k] += state["sums"]
        counts[:k] += state["counts"]
        raw_x = np.concatenate([state["samples"].astype(raw_x.dtype), raw_x])
        raw_y = np.concatenate([state["sample_labels"], raw_y])
        remembered = state.get("sample_field", np.zeros(len(state["sample_labels"]), bool))
        is_field = np.concatenate([remembered.astype(bool), is_field])
    # Up to SAMPLES_PER_CLASS embeddings per class, kept in the model for refitting when it is extended.
    kept = novelty.sample(raw_y, SAMPLES_PER_CLASS, config.seed, first=is_field)
    samples, sample_labels = raw_x[kept], raw_y[kept]
    weights = field_weights(raw_y, is_field, config.field_weight) if is_field.any() else None
    if old_head is not None and len(labels) == len(old_labels):  # --keep-classes, no new class: the head as it is
        head = heads.Head(f"{len(labels)} classes kept as they are", *old_head)
    else:
        kind = heads.choose(config.head, counts if old_head is None else counts[len(old_labels):])
        x = embedder.dequantize(raw_x)
        fit_sums = sums if weights is None else heads.class_means(x, raw_y, len(labels), weights)
        head = _fit(kind, x, raw_y, fit_sums, labels, old_head, config.seed, weights)
    return {"head": head, "sums": sums, "counts": counts, "samples": samples, "sample_labels": sample_labels,
            "sample_field": is_field[kept], "raw_x": raw_x, "raw_y": raw_y, "is_field": is_field}


def field_weights(y: np.ndarray, is_field: np.ndarray, share: float) -> np.ndarray:
    """Per photo: 1 for lab photos; within a class that has both, field photos weighted so they carry ``share``
    of the class's weight (a class with field photos only keeps them at 1)."""
    weights = np.ones(len(y))
    for c in np.unique(y[is_field]):
        lab, field = int(np.sum((y == c) & ~is_field)), int(np.sum((y == c) & is_field))
        if lab:
            weights[(y == c) & is_field] = share / (1 - share) * lab / field
    return weights


def _fit(kind: str, x: np.ndarray, y: np.ndarray, sums: np.ndarray, labels: list[str], old_head,
         seed: int, weights: np.ndarray | None = None) -> heads.Head:
    if old_head is None:
        if kind == "imprint":  # from the exact per-class sums: old classes keep every image they ever saw
            return heads.imprint(x, y, len(labels), sums=sums)
        return heads.softmax(x, y, len(labels), seed=seed, weights=weights)
    # --keep-classes on a plain classifier: its rows stay as they are. A new row is the class's imprinted
    # direction with the old rows' mean norm; its bias is set so the new class outscores every old class on
    # 95% of its own photos, by KEEP_MARGIN logits (a tie is not a win: frames of one scene are near-identical),
    # and no more (pooled embeddings are all positive, so an uncalibrated new row, close to every image, would
    # win everywhere).
    weights, bias = old_head
    k, norm = len(weights), float(np.linalg.norm(weights, axis=1).mean())
    rows, offsets = [], []
    for c in range(k, len(labels)):
        own = x[y == c]
        direction = heads.imprint(own, np.zeros(len(own), np.int64), 1).weights[0]
        direction /= max(float(np.linalg.norm(direction)), 1e-12)
        best_old = (own @ weights.T + bias).max(axis=1)
        rows.append(direction * norm)
        offsets.append(float(np.quantile(best_old - own @ rows[-1], 0.95)) + KEEP_MARGIN)
    return heads.Head(f"imprint, {k} classes kept", np.concatenate([weights, np.array(rows)]).astype(np.float32),
                      np.concatenate([bias, offsets]).astype(np.float32))


def _metadata(base_metadata: dict, base_path: Path, base: bytes, embedding, head, labels, old_labels, config,
              reference_only: bool = False) -> dict:
    from edge_app import __version__

    created = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if reference_only:  # the base's model as it is: its own metadata, and where its reference set came from
        return {**base_metadata, "num_classes": len(labels), "edgecls_version": __version__,
                "learn": {"embedding": embedding.name, "reference_only": True,
                          "base_sha256": hashlib.sha256(base).hexdigest(), "created": created}}

    keep = {k: base_metadata[k] for k in ("input_size", "mean", "std", "channel_order", "center_crop")
            if k in base_metadata}
    if config.mean is not None:
        keep.update(mean=list(config.mean), std=list(config.std))
    if config.input_size is not None:
        keep["input_size"] = [config.input_size, config.input_size]
    return {"format": "edgecls/1", **keep, "output": "probabilities", "num_classes": len(labels), "quant": "learned",
            "source_model": base_path.name, "edgecls_version": __version__,
            "learn": {"embedding": embedding.name, "head": head.kind, "base_sha256": hashlib.sha256(base).hexdigest(),
                      "kept_classes": len(old_labels), "samples_per_class": SAMPLES_PER_CLASS, "created": created}}

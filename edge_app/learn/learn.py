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
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_app.learn import graph, heads, rewrite
from edge_app.learn.embed import Embedder
from edge_app.learn.report import evaluate, write_reports
from edge_app.runtime import novelty
from edge_app.runtime.artifact import (
    MAX_MEMBER_BYTES,
    embed_metadata,
    flatbuffer_part,
    read_artifact,
    read_member,
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
from edge_app.runtime.labels import match_labels, read_labels

log = logging.getLogger("edgecls")

MODELS = Path(__file__).parent / "models"
DEFAULT_BASE = MODELS / "mobilenet_v2_1.0_224_quant.tflite"
STATE = "learn.npz"  # the archive member a learned model carries for extending it
SAMPLES_PER_CLASS = 128
MIN_VAL_CLASS = 5  # a class with fewer images gives none to the validation part
IMBALANCE = 10  # most/least photos per class from which learn warns
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

    def __post_init__(self):
        set_ = object.__setattr__.__get__(self)
        for name in ("data", "out", "base", "labels", "compare", "unknown_check"):
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
        if not self.data.is_dir():
            raise DataError(f"{self.data} is not a folder; give a folder of class sub-folders (DATA/<class>/*.jpg)")
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
    state = _read_state(base, base_path)
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
        old_labels = _base_labels(artifact, base_path, config.labels, embedding.num_classes)
        old_head = graph.classifier_weights(model, embedding)

    root = config.data / "train" if (config.data / "train").is_dir() else config.data
    dataset = scan(root, val_split=0.0, test_split=0.0, seed=config.seed, min_classes=1 if old_labels else 2,
                   verify=False)
    labels = _merge_labels(old_labels, dataset.labels, root)
    # --keep-classes with photos of the base's own classes only: nothing to add to its head, but what it needs
    # to say "unknown" (any TFLite classifier gains the embedding output and a reference set this way).
    reference_only = old_head is not None and len(labels) == len(old_labels)
    if reference_only:
        log.info("--keep-classes: every class of %s is already one of %s's: its classes stay as they are, and "
                 "these photos become its reference set for 'unknown'", root, base_path.name)
    _warn_imbalance(dataset, root)
    embedder = Embedder(rewrite.cut_at(model, embedding), artifact.metadata, config.device, config.num_threads,
                        config.mean, config.std, base_path.name)
    parts = _split(dataset, labels, config.data, config.val_split, config.seed)
    raw, read, skipped = {}, {}, []
    for part, (paths, targets) in parts.items():
        if paths:
            vectors, kept, bad = embedder.embed(paths, desc=f"embedding {part}")
            raw[part] = (vectors, targets[kept])
            read[part] = [path for path, ok in zip(paths, kept, strict=True) if ok]
            skipped += bad
    _check_readable(dataset, raw, labels, skipped)
    embed_s = time.monotonic() - started

    # The validation part measures a head fitted without it; the model written is then fitted on every photo
    # (with few photos per class, each one held back costs more than early stopping on a handful buys).
    every = tuple(p for p in ("train", "val") if p in raw)
    final = _fit_parts(raw, every, state, old_labels, old_head, labels, embedder, config)
    check = final if every == ("train",) else \
        _fit_parts(raw, ("train",), state, old_labels, old_head, labels, embedder, config)
    head, counts = final["head"], final["counts"]
    log.info("head: %s (%s), %d classes from %d images (%s per class)", head.kind,
             "chosen by images per class" if config.head == "auto" else "--head", len(labels), int(counts.sum()),
             f"{counts.min()}-{counts.max()}")
    fit_s = time.monotonic() - started - embed_s
    results = {}
    if "val" in raw:
        results["val"] = evaluate(check["head"].scores(embedder.dequantize(raw["val"][0])).argmax(1), raw["val"][1],
                                  labels)
    if "test" in raw:
        results["test"] = evaluate(head.scores(embedder.dequantize(raw["test"][0])).argmax(1), raw["test"][1], labels)
    if config.compare is not None and "val" in raw:
        results["val_before"] = _check_other(config.compare, read["val"], raw["val"][1], labels, config)
    sums, samples, sample_y = final["sums"], final["samples"], final["sample_labels"]
    unknown, members = _unknown(final, check, raw, embedder, embedding, old_head is not None and not reference_only,
                                len(flatbuffer_part(base)), config)
    if reference_only and not members:
        raise DataError(f"{root}: too few photos for a reference set (two or more are needed); add photos")
    metadata = _metadata(artifact.metadata, base_path, base, embedding, head, labels, old_labels, config, reference_only)
    if members:
        metadata[novelty.KEY] = unknown.pop("spec")
    if reference_only:  # the base's graph as it is, plus its embedding as a second output
        data = rewrite.with_output(model, embedding)
    else:
        data = rewrite.with_head(model, embedding, head.weights, head.bias, embedding_output=bool(members))
        members[STATE] = _state_bytes(labels, sums, counts, samples, sample_y, embedding)
    write_bytes(config.out, embed_metadata(data, metadata, labels, members))
    report = {
        "schema": "edgecls.learn/1", "model": str(config.out), "base": str(base_path), "data": str(config.data),
        "embedding": {"name": embedding.name, "width": embedding.width, "dtype": embedding.dtype},
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


def _unknown(final: dict, check: dict, raw: dict, embedder: Embedder, embedding, kept_classes: bool,
             model_bytes: int, config: LearnConfig) -> tuple[dict, dict[str, bytes]]:
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
    if "val" in raw:
        train = novelty.unit_rows(embedder.dequantize(check["raw_x"]))
        val = embedder.dequantize(raw["val"][0])
        fitted = novelty.fit(train, check["raw_y"], row_bytes, model_bytes, config.unknown_accept,
                             novelty.unit_rows(val), check["head"].scores(val), config.seed)
    else:
        fitted = novelty.fit(x, final["raw_y"], row_bytes, model_bytes, config.unknown_accept, seed=config.seed)
    threshold, k, known = fitted.threshold, fitted.k, fitted.known
    # The model keeps a reference set sampled from every photo it was fitted on; the threshold stands as found with
    # the validation photos held out (against the final set, which includes them, they would look more familiar
    # than any new photo).
    chosen = novelty.sample(final["raw_y"], fitted.per_class, config.seed)
    reference, reference_y = x[chosen], final["raw_y"][chosen]
    report: dict = {"enabled": True, "accept": config.unknown_accept, "references": int(len(chosen)), "k": k}
    if "val" in raw:
        report["val"] = _acceptance(known, threshold, check["head"], embedder.dequantize(raw["val"][0]), raw["val"][1])
        if config.unknown_check is not None:
            report["check"] = _unknown_check(config, embedder, check["head"], train[fitted.chosen], fitted.labels,
                                             known, threshold, k, raw["val"][0])
    elif config.unknown_check is not None:
        log.warning("--unknown-check needs a validation part (classes of 5 photos or more): not measured")
    calibrated_on = fitted.calibrated_on
    if "test" in raw:
        test = embedder.dequantize(raw["test"][0])
        scores = novelty.reference_novelty(reference, reference_y, novelty.unit_rows(test), k,
                                           final["head"].scores(test))
        report["test"] = _acceptance(scores, threshold, final["head"], test, raw["test"][1])
    member = novelty.pack(final["raw_x"][chosen], final["raw_y"][chosen])
    report.update(threshold=round(threshold, 6), calibrated_on=calibrated_on, reference_bytes=len(member),
                  spec=novelty.spec(threshold, config.unknown_accept, embedding.name, len(chosen), calibrated_on, k,
                                    fitted.per_class))
    log.info("unknown: %d reference photos (%.0f kB), threshold %.3f accepts %.0f%% of %s", len(chosen),
             len(member) / 1e3, threshold, 100 * config.unknown_accept, calibrated_on)
    return report, {novelty.MEMBER: member}


def _acceptance(novelty_scores: np.ndarray, threshold: float, head, x: np.ndarray, truth: np.ndarray) -> dict:
    return novelty.acceptance(novelty_scores, threshold, head.scores(x).argmax(1) == truth)


def _unknown_check(config: LearnConfig, embedder: Embedder, head, reference: np.ndarray, reference_y: np.ndarray,
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


def _read_state(base: bytes, path: Path) -> dict | None:
    try:
        blob = read_member(base, STATE)
        if blob is None:
            return None
        with np.load(io.BytesIO(blob)) as state:
            if any(i.file_size > MAX_MEMBER_BYTES for i in state.zip.infolist()):
                raise ValueError("an array would inflate past the member cap")
            return {k: state[k] for k in state.files} | {"labels": [str(v) for v in state["labels"]]}
    except (ValueError, KeyError, OSError) as e:
        raise ModelError(f"{path} carries a damaged {STATE}; learn from the photos again") from e


def _base_labels(artifact, path: Path, labels_file: Path | None, num_classes: int) -> list[str]:
    if labels_file is not None:
        return match_labels(read_labels(labels_file), num_classes, str(labels_file))
    if artifact.labels:
        return match_labels(artifact.labels, num_classes, f"the labels embedded in {path.name}")
    beside = path.parent / "labels.txt"
    if beside.is_file():
        return match_labels(read_labels(beside), num_classes, str(beside))
    raise LabelsError(f"--keep-classes needs the labels of {path}: it carries none and there is no labels.txt "
                      "beside it; pass --labels FILE")


def _merge_labels(old: list[str], new: list[str], data: Path) -> list[str]:
    """Old labels first, then new ones; a folder that differs from an old label only in case is an error."""
    folded = {label.casefold(): label for label in old}
    for label in new:
        if label not in old and label.casefold() in folded:
            raise LabelsError(f"class folder {data / label} differs only in case from the model's class "
                              f"{folded[label.casefold()]!r}; rename the folder to {folded[label.casefold()]!r} "
                              "to add examples to it, or give it a clearly different name")
    return old + [label for label in new if label not in old]


def _warn_imbalance(dataset, root: Path) -> None:
    """A head fitted on 500 photos of one class and 1 of another leans to the first: say so (train says it too)."""
    counts = dataset.class_counts()["train"]
    most, least = max(counts, key=counts.get), min(counts, key=counts.get)
    if len(counts) > 1 and counts[most] >= IMBALANCE * max(counts[least], 1):
        log.warning("classes are imbalanced: %s has %d photos, %s %d (%d:1); the head will lean towards %s. Add "
                    "photos of %s, or use fewer of %s", root / most, counts[most], root / least, counts[least],
                    counts[most] // max(counts[least], 1), most, least, most)


def _split(dataset, labels: list[str], data: Path, val_split: float, seed: int) -> dict[str, tuple[list[Path], np.ndarray]]:
    """The train part, a validation part (``val/`` when given, else carved per class from classes of 5 photos or
    more), and ``test/`` when given; ``val/`` and ``test/`` may hold any class the model will know."""
    rng = np.random.default_rng(seed)
    parts: dict[str, tuple[list, list]] = {"train": ([], []), "val": ([], [])}
    given = {part: data / part for part in ("val", "test") if (data / "train").is_dir() and (data / part).is_dir()}
    by_class: dict[int, list[str]] = {}
    for rel, i in dataset.splits["train"]:
        by_class.setdefault(i, []).append(rel)
    for i, files in sorted(by_class.items()):
        order = rng.permutation(len(files))
        carve = val_split and "val" not in given and len(files) >= MIN_VAL_CLASS
        n_val = max(1, round(len(files) * val_split)) if carve else 0
        for j, k in enumerate(order):
            part = "val" if j < n_val else "train"
            parts[part][0].append(dataset.data_dir / files[k])
            parts[part][1].append(labels.index(dataset.labels[i]))
    for part, folder in given.items():
        found = scan(folder, 0.0, 0.0, seed, min_classes=1, verify=False)
        for label in found.labels:
            if label not in labels:
                raise DataError(f"{folder / label} is a class the model will not know; rename it to one of "
                                f"{labels} or add it to {data / 'train'}")
        parts[part] = ([found.data_dir / rel for rel, _ in found.splits["train"]],
                       [labels.index(found.labels[i]) for _, i in found.splits["train"]])
    return {part: (paths, np.array(targets, np.int64)) for part, (paths, targets) in parts.items()}


def _check_readable(dataset, raw: dict, labels: list[str], skipped: list[dict]) -> None:
    present = set()
    for part in ("train", "val"):
        if part in raw:
            present |= set(raw[part][1].tolist())
    for label in dataset.labels:
        if labels.index(label) not in present:
            raise DataError(f"class folder {dataset.data_dir / label} has no readable images; replace them or "
                            "remove the folder")
    if skipped:
        log.warning("skipped %d unreadable image(s)", len(skipped))


def _sample(raw: np.ndarray, y: np.ndarray, num_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Up to ``SAMPLES_PER_CLASS`` embeddings per class, kept in the model for refitting when it is extended."""
    rng = np.random.default_rng(seed)
    chosen = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:SAMPLES_PER_CLASS] for c in range(num_classes)]
                            or [np.zeros(0, np.int64)]).astype(np.int64)
    return raw[chosen], y[chosen]


def _fit_parts(raw: dict, parts: tuple[str, ...], state: dict | None, old_labels: list[str], old_head,
               labels: list[str], embedder: Embedder, config: LearnConfig) -> dict:
    """The head fitted on the photos of ``parts`` (plus what a learned base remembers), and the state to store."""
    raw_x = np.concatenate([raw[p][0] for p in parts])
    raw_y = np.concatenate([raw[p][1] for p in parts])
    sums = heads.class_means(embedder.dequantize(raw_x), raw_y, len(labels))
    counts = np.bincount(raw_y, minlength=len(labels))
    if state is not None:  # what the learned base remembers of its classes: exact sums, a sample of embeddings
        k = len(old_labels)
        sums[:k] += state["sums"]
        counts[:k] += state["counts"]
        raw_x = np.concatenate([state["samples"].astype(raw_x.dtype), raw_x])
        raw_y = np.concatenate([state["sample_labels"], raw_y])
    samples, sample_labels = _sample(raw_x, raw_y, len(labels), config.seed)
    if old_head is not None and len(labels) == len(old_labels):  # --keep-classes, no new class: the head as it is
        head = heads.Head(f"{len(labels)} classes kept as they are", *old_head)
    else:
        kind = heads.choose(config.head, counts if old_head is None else counts[len(old_labels):])
        head = _fit(kind, embedder.dequantize(raw_x), raw_y, sums, labels, old_head, config.seed)
    return {"head": head, "sums": sums, "counts": counts, "samples": samples, "sample_labels": sample_labels,
            "raw_x": raw_x, "raw_y": raw_y}


def _fit(kind: str, x: np.ndarray, y: np.ndarray, sums: np.ndarray, labels: list[str], old_head,
         seed: int) -> heads.Head:
    if old_head is None:
        if kind == "imprint":  # from the exact per-class sums: old classes keep every image they ever saw
            return heads.imprint(x, y, len(labels), sums=sums)
        return heads.softmax(x, y, len(labels), seed=seed)
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
    return {"format": "edgecls/1", **keep, "output": "probabilities", "num_classes": len(labels), "quant": "learned",
            "source_model": base_path.name, "edgecls_version": __version__,
            "learn": {"embedding": embedding.name, "head": head.kind, "base_sha256": hashlib.sha256(base).hexdigest(),
                      "kept_classes": len(old_labels), "samples_per_class": SAMPLES_PER_CLASS, "created": created}}


def _state_bytes(labels, sums, counts, samples, sample_y, embedding) -> bytes:
    out = io.BytesIO()
    np.savez_compressed(out, labels=np.array(labels), sums=sums.astype(np.float32), counts=counts.astype(np.int64),
                        samples=samples, sample_labels=sample_y.astype(np.int64),
                        embedding=np.array([embedding.name]))
    return out.getvalue()

"""Saying ``unknown``: how far a frame's embedding lies from the photos the model was taught with.

A model edgecls writes carries a *reference set* in its metadata archive (``novelty.npz``): embeddings of
its training photos, a random sample per class sized to ``BUDGET`` of the model file, in the
embedding tensor's own type (1,280 bytes each for a uint8 MobileNetV2), and, in ``edgecls.json``, a
threshold calibrated on held-out photos of its classes (accepting ``accept`` of them, 95% by default).
The graph's second output is the embedding, so one invoke gives the class scores and the novelty.

The score is k-NN (Sun et al., ICML 2022): 1 − the mean cosine similarity to the ``k`` nearest reference
embeddings. On plantvillage-potato with Coral's ImageNet embedding (``scripts/unknown_scores.py``), photos
that are not leaves were accepted 0% of the time at 95% of known leaves accepted, against 48% for the max
softmax probability that ``--threshold`` uses; docs/unknown.md has the near-unknown figures. A frame costs
one [M, D] × [D] product: where it can, :class:`~edge_app.runtime.classifier.ImageClassifier` runs it inside
the graph (:func:`edge_app.runtime.rewrite.with_knn`), else :meth:`Reference.score` does it here, the same score
(the one learn and convert calibrate with). A set of more than ``MAX_SCANNED`` references (a 1000-class base)
is searched among the references of the ``CANDIDATES`` classes the model scores highest, so the cost stays
bounded (in numpy).

Example:
    >>> reference = read_reference(artifact.reference, artifact.metadata, "leaves.tflite", np.dtype("uint8"), 1280)
    >>> novelty = reference.score(embedding, scores)    # 0 = like a taught photo, up to 2
    >>> novelty > reference.threshold                   # "unknown"
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from edge_app.runtime.artifact import REFERENCE_NAME as MEMBER  # the reference set's archive member
from edge_app.runtime.errors import EdgeclsError, ModelError
from edge_app.runtime.quant import dequantize

KEY = "novelty"  # its entry in edgecls.json: score, k, threshold, accept, output, count
SCORE = "knn-cosine"
K = 5
# A random sample of each class's photos, as many as fit in BUDGET of the model file, up to PER_CLASS: on a
# potato int8 model trained without late blight, the unseen disease was still accepted 77% of the time with 32
# references per class, 48% with 64, 31% with 256 and 22% with all ~400 (AUROC 0.76 -> 0.95); a k-center choice
# of the same sizes did worse (85% with 16, 57% with 64: it keeps a class's outliers, which lean towards what the
# class is not).
PER_CLASS = 256
BUDGET = 0.15  # of the model file's bytes, for the reference embeddings
# A 1000-class base keeps one embedding per class whatever the budget (and scores by the nearest one).
MAX_REFERENCES = 4096
# More references than this are not all scanned per frame: only those of the CANDIDATES classes scored highest
# (a nearest neighbour of another class is rarely among them), so a frame costs at most ~0.03 ms here.
MAX_SCANNED = 256
CANDIDATES = 8
DEFAULT_ACCEPT = 0.95
_DTYPES = ("uint8", "int8", "float16", "float32")


@dataclass(frozen=True)
class Reference:
    """A model's reference set, ready to score embeddings.

    Attributes:
        vectors: ``float32 [M, D]``, unit rows (dequantized with the embedding output's own quantization).
        labels: ``int [M]``, the class of each row.
        threshold: novelty above this is ``unknown``.
        k: neighbours averaged.
        accept: the share of held-out known photos the threshold was set to accept.
        output: the name of the model output that carries the embedding.
    """

    vectors: np.ndarray
    labels: np.ndarray
    threshold: float
    k: int = K
    accept: float = DEFAULT_ACCEPT
    output: str = ""

    def __post_init__(self):
        # Each class's rows, contiguous: a large set is searched among a few classes' rows only.
        order = np.argsort(self.labels, kind="stable")
        object.__setattr__(self, "vectors", np.ascontiguousarray(self.vectors[order]))
        object.__setattr__(self, "labels", self.labels[order])
        classes, starts = np.unique(self.labels, return_index=True)
        ends = [*starts[1:], len(self.labels)]
        object.__setattr__(self, "_rows", {int(c): self.vectors[a:b] for c, a, b in zip(classes, starts, ends,
                                                                                         strict=True)})

    @property
    def scans_all(self) -> bool:
        """Whether every frame is compared with every row (else: the rows of a few candidate classes)."""
        return len(self.vectors) <= MAX_SCANNED or len(self._rows) <= CANDIDATES

    def score(self, embedding: np.ndarray, scores: np.ndarray | None = None) -> float:
        """Novelty of one float embedding (0 to 2): 1 − mean cosine to its ``k`` nearest references. ``scores``:
        the model's class scores for it, which pick the classes searched in a large set."""
        vector = np.asarray(embedding, np.float32).reshape(-1)
        norm = float(np.sqrt(vector @ vector))
        if norm == 0.0:
            return 1.0  # orthogonal to everything: as knn_novelty scores a zero row
        rows = self.candidates(scores) if scores is not None else self.vectors
        if not len(rows):
            return 2.0
        similarity = rows @ vector
        k = min(self.k, len(similarity))
        nearest = np.partition(similarity, len(similarity) - k)[-k:] if k < len(similarity) else similarity
        return 1.0 - float(nearest.sum()) / (k * norm)

    def candidates(self, scores: np.ndarray) -> np.ndarray:
        """The rows a frame with class ``scores`` is compared with: all of a small set; of a large one, those of the
        ``CANDIDATES`` classes scored highest."""
        if self.scans_all:
            return self.vectors
        scores = np.asarray(scores).reshape(-1)
        top = np.argpartition(scores, -CANDIDATES)[-CANDIDATES:] if len(scores) > CANDIDATES else range(len(scores))
        rows = [self._rows[int(c)] for c in top if int(c) in self._rows]
        return np.concatenate(rows) if rows else self.vectors[:0]

    def is_unknown(self, novelty: float) -> bool:
        return novelty > self.threshold


def unit_rows(x: np.ndarray) -> np.ndarray:
    """``x`` (float) with every row scaled to length 1 (a zero row stays zero: as far from everything as can be)."""
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn_novelty(reference: np.ndarray, queries: np.ndarray, k: int, exclude_self: bool = False) -> np.ndarray:
    """1 − mean cosine of each unit query row to its ``k`` nearest unit reference rows.

    ``exclude_self``: the queries are the reference rows themselves (leave-one-out calibration).
    """
    if not len(queries):
        return np.zeros(0, np.float32)
    similarity = queries @ reference.T
    if exclude_self:
        np.fill_diagonal(similarity, -np.inf)
    k = max(1, min(k, similarity.shape[1] - (1 if exclude_self else 0)))
    nearest = np.partition(similarity, similarity.shape[1] - k, axis=1)[:, -k:]
    return (1.0 - nearest.mean(axis=1)).astype(np.float32)


def sizes(num_classes: int, row_bytes: int, model_bytes: int) -> tuple[int, int]:
    """``(per_class, k)``: as many references per class as fit in ``BUDGET`` of a ``model_bytes`` model (rows of
    ``row_bytes``), at least 1 and at most ``PER_CLASS`` (and ``MAX_REFERENCES`` in all)."""
    fit_in = int(BUDGET * model_bytes) // max(1, num_classes * row_bytes)
    per_class = max(1, min(PER_CLASS, fit_in, MAX_REFERENCES // max(1, num_classes)))
    return per_class, min(K, per_class)


def sample(labels: np.ndarray, per_class: int, seed: int = 0, first: np.ndarray | None = None) -> np.ndarray:
    """Indices of a seeded random sample of up to ``per_class`` rows of each class (sorted).

    Random, not chosen to spread out: it keeps each class's density, which is what a near neighbour reads.
    ``first``: rows taken before the others of their class (field photos: a few of them among hundreds of lab
    photos would rarely be drawn, and a field leaf then has no near neighbour to be accepted by).
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        if first is not None:
            rows = rows[np.argsort(~np.asarray(first, bool)[rows], kind="stable")]
        chosen.append(rows[:per_class])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def reference_novelty(reference: np.ndarray, labels: np.ndarray, queries: np.ndarray, k: int,
                      scores: np.ndarray | None = None) -> np.ndarray:
    """:meth:`Reference.score` for many unit query rows at once (``scores``: the model's class scores of each)."""
    if len(reference) <= MAX_SCANNED or len(np.unique(labels)) <= CANDIDATES or scores is None:
        return knn_novelty(reference, queries, k)
    ref = Reference(reference, np.asarray(labels), 0.0, k)
    return np.array([ref.score(q, s) for q, s in zip(queries, scores, strict=True)], np.float32)


def check_accept(accept: float, error: type[EdgeclsError] = ModelError) -> float:
    """``--unknown-accept``: a share of known photos from 0.5 to below 1."""
    if not 0.5 <= accept < 1.0:
        raise error(f"--unknown-accept must be from 0.5 to below 1 (the share of photos of the classes to accept), "
                    f"got {accept}")
    return accept


def calibrate(novelty: np.ndarray, accept: float = DEFAULT_ACCEPT) -> float:
    """The threshold that accepts ``accept`` of the known photos whose novelty is given."""
    check_accept(accept)
    if len(novelty) == 0:
        raise ModelError("no held-out photos to calibrate the unknown threshold on")
    # "higher": with few photos the threshold still accepts at least that share (never rounds it down).
    return float(np.quantile(np.asarray(novelty, np.float64), accept, method="higher"))


@dataclass(frozen=True)
class Fitted:
    """A reference set chosen from photos of the classes, and its calibrated threshold (see :func:`fit`)."""

    chosen: np.ndarray  # indices of the reference rows among the photos given
    labels: np.ndarray  # their classes
    k: int
    per_class: int
    threshold: float
    known: np.ndarray  # the novelty of the held-out photos the threshold was set on
    calibrated_on: str


def fit(x: np.ndarray, y: np.ndarray, row_bytes: int, model_bytes: int, accept: float = DEFAULT_ACCEPT,
        held_out: np.ndarray | None = None, held_out_scores: np.ndarray | None = None, seed: int = 0,
        first: np.ndarray | None = None, field: np.ndarray | None = None) -> Fitted:
    """Choose a reference set from unit rows ``x`` (classes ``y``; stored as ``row_bytes`` each, for a model of
    ``model_bytes``) and set the threshold that accepts ``accept``
    of ``held_out`` (unit rows of other photos of the classes; ``held_out_scores``: the model's class scores of
    them); without them, of the reference photos each left out of its own neighbours. ``first``: rows of ``x``
    the sample takes first (field photos). ``field``: which held-out photos are field photos; then the threshold
    accepts ``accept`` of the lab ones *and* of the field ones (the looser of the two), so the few field photos
    are not outvoted by many lab ones when it is set.

    Example:
        >>> fitted = fit(unit_rows(train), train_labels, 1280, len(model), 0.95, unit_rows(val), head.scores(val))
        >>> reference, threshold = train[fitted.chosen], fitted.threshold
    """
    per_class, k = sizes(len(np.unique(y)), row_bytes, model_bytes)
    chosen = sample(y, per_class, seed, first)
    if held_out is not None and len(held_out):
        known = reference_novelty(x[chosen], y[chosen], held_out, k, held_out_scores)
        on = f"{len(held_out)} held-out photos"
        if field is not None and np.any(field):
            field = np.asarray(field, bool)
            groups = [known[field]] + ([known[~field]] if (~field).any() else [])
            on = f"{int(field.sum())} held-out field photos and {int((~field).sum())} lab photos, each group"
            return Fitted(chosen, y[chosen], k, per_class, max(calibrate(g, accept) for g in groups), known, on)
    else:
        known = knn_novelty(x[chosen], x[chosen], k, exclude_self=True)
        on = f"{len(chosen)} reference photos, each left out"
    return Fitted(chosen, y[chosen], k, per_class, calibrate(known, accept), known, on)


def auroc(known: np.ndarray, unknown: np.ndarray) -> float | None:
    """How well a score ranks unknown above known (1 = perfectly, 0.5 = chance): the Mann-Whitney statistic."""
    known, unknown = np.asarray(known, np.float64), np.asarray(unknown, np.float64)
    if not len(known) or not len(unknown):
        return None
    _, inverse, counts = np.unique(np.concatenate([known, unknown]), return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    ranks = ((ends - counts + 1 + ends) / 2)[inverse]  # tied values share their average rank
    return float((ranks[len(known):].sum() - len(unknown) * (len(unknown) + 1) / 2) / (len(known) * len(unknown)))


def acceptance(novelty: np.ndarray, threshold: float, correct: np.ndarray) -> dict:
    """Known photos accepted at ``threshold``, and the accuracy on all of them and on those accepted (``correct``:
    whether each photo's top-1 was right)."""
    accepted = np.asarray(novelty) <= threshold
    correct = np.asarray(correct, bool)
    return {"num_images": int(len(correct)), "known_accepted": round(float(accepted.mean()), 4),
            "accuracy": round(float(correct.mean()), 4),
            "accuracy_accepted": round(float(correct[accepted].mean()), 4) if accepted.any() else None}


def compare_with_max_softmax(known: np.ndarray, unknown: np.ndarray, threshold: float, known_probabilities: np.ndarray,
                             unknown_probabilities: np.ndarray, accept: float) -> dict:
    """``--unknown-check``: photos of things outside the classes (``unknown``), scored by our novelty at its
    threshold and by the max softmax probability thresholded to accept the same share of known photos."""
    msp_known = 1 - np.asarray(known_probabilities).max(axis=1)
    msp_unknown = 1 - np.asarray(unknown_probabilities).max(axis=1)
    msp_threshold = calibrate(msp_known, accept)

    def rounded(x):
        return None if x is None else round(x, 4)

    return {"num_images": int(len(unknown)),
            "knn": {"unknown_rejected": round(float((np.asarray(unknown) > threshold).mean()), 4),
                    "auroc": rounded(auroc(known, unknown))},
            "max_softmax": {"unknown_rejected": round(float((msp_unknown > msp_threshold).mean()), 4),
                            "auroc": rounded(auroc(msp_known, msp_unknown))}}


def pack(raw: np.ndarray, labels: np.ndarray) -> bytes:
    """The ``novelty.npz`` member: ``embeddings`` in the tensor's own type, ``labels``."""
    out = io.BytesIO()
    np.savez_compressed(out, embeddings=np.ascontiguousarray(raw), labels=np.asarray(labels, np.int32))
    return out.getvalue()


def spec(threshold: float, accept: float, output: str, count: int, calibrated_on: str, k: int = K,
         per_class: int = PER_CLASS) -> dict:
    """The ``novelty`` entry of ``edgecls.json``."""
    return {"score": SCORE, "k": k, "threshold": round(float(threshold), 6), "accept": accept, "output": output,
            "count": int(count), "per_class": per_class, "calibrated_on": calibrated_on}


def read_reference(blob: bytes | None, metadata: dict, source: str, dtype: np.dtype, width: int,
                   quantization: tuple[float, int] = (0.0, 0)) -> Reference | None:
    """A model's reference set, checked against its embedding output; ``None`` for a model without one.

    Raises:
        ModelError: a reference set that is damaged or does not fit the model (one line, exit 2).
    """
    info = metadata.get(KEY)
    if info is None:
        return None
    problem = _check_spec(info)
    embeddings = labels = None
    if problem is None:
        try:
            if blob is None:
                problem = f"no {MEMBER} in its archive"
            else:
                with np.load(io.BytesIO(blob), allow_pickle=False) as arrays:
                    embeddings, labels = arrays["embeddings"], arrays["labels"]
        except (ValueError, KeyError, OSError, EOFError) as e:
            problem = f"{MEMBER} cannot be read ({e})"
    if problem is None:
        problem = _check_arrays(embeddings, labels, np.dtype(dtype), width, info)
    if problem is not None:
        raise ModelError(f"{source} carries a damaged reference set for 'unknown' ({problem}); run it with "
                         "--unknown off, or learn or convert it again")
    vectors = dequantize(embeddings, *quantization) if embeddings.dtype.kind in "ui" else embeddings
    return Reference(unit_rows(vectors), labels.astype(np.int64), float(info["threshold"]), int(info["k"]),
                     float(info.get("accept", DEFAULT_ACCEPT)), str(info["output"]))


def _check_spec(info) -> str | None:
    if not isinstance(info, dict):
        return f"'{KEY}' in its metadata is not an object"
    if info.get("score") != SCORE:
        return f"score {info.get('score')!r} is not one this runtime computes ({SCORE})"
    k, threshold = info.get("k"), info.get("threshold")
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= 100:
        return f"k must be a whole number from 1 to 100, got {k!r}"
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not 0 <= threshold <= 2:
        return f"the threshold must be a number from 0 to 2, got {threshold!r}"
    if not isinstance(info.get("output"), str):
        return "it does not name the embedding output"
    return None


def _check_arrays(embeddings, labels, dtype: np.dtype, width: int, info: dict) -> str | None:
    if embeddings.ndim != 2 or embeddings.shape[0] < 1:
        return f"embeddings of shape {list(embeddings.shape)}, expected [count, {width}]"
    if embeddings.shape[1] != width:
        return f"embeddings of {embeddings.shape[1]} values, but the model's embedding has {width}"
    if embeddings.dtype.name not in _DTYPES or (embeddings.dtype != dtype and dtype.kind in "ui"):
        return f"embeddings stored as {embeddings.dtype.name}, but the model's embedding is {dtype.name}"
    if labels.shape != (embeddings.shape[0],) or labels.dtype.kind not in "iu":
        return f"labels of shape {list(labels.shape)}, expected [{embeddings.shape[0]}] integers"
    if embeddings.dtype.kind == "f" and not np.isfinite(embeddings).all():
        return "embeddings that are not finite"
    if info.get("count") not in (None, embeddings.shape[0]):
        return f"{embeddings.shape[0]} embeddings, but its metadata says {info['count']}"
    return None

"""One model ready to classify images: the piece the CLI, live app, converter checks and benchmarks share."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

from edge_app.runtime.artifact import ModelArtifact, read_artifact, read_model_bytes
from edge_app.runtime.errors import ModelError, first_line
from edge_app.runtime.images import read_image
from edge_app.runtime.interpreter import (
    applied_kernels,
    default_num_threads,
    load_runtime,
    make_interpreter,
    parse_device,
)
from edge_app.runtime.labels import match_labels, read_labels
from edge_app.runtime.novelty import KEY, Reference, read_reference
from edge_app.runtime.postprocess import Classification, output_scores
from edge_app.runtime.postprocess import top_k as best_classes
from edge_app.runtime.preprocess import InputSpec, preprocess
from edge_app.runtime.quant import dequantize
from edge_app.runtime.rundir import LABELS, resolve_model

log = logging.getLogger("edgecls")


class ImageClassifier:
    """An interpreter, its input spec, its labels and a preallocated input tensor.

    Labels come from, in order: ``labels`` (a file), labels embedded in the model,
    ``labels.txt`` beside the model; without any, labels are the class indices.

    Example:
        >>> clf = ImageClassifier("mobilenet_v2_1.0_224_quant.tflite", num_threads=2)
        >>> clf.classify(read_image("parrot.jpg"), top_k=1)[0].label
        'macaw'

    Args:
        model: a ``.tflite`` file, a run directory, or a :class:`ModelArtifact` already read (with its bytes:
            it then runs from them).
        in_memory: run the model from its bytes read once (``artifact.data``), not from the file: a
            long-running app whose model file may be rewritten in place (the live swap) needs it.
        embedded_labels_first: labels embedded in the model win over ``labels`` (a model swapped in
            brings its own classes).
        unknown: use the model's reference set, when it carries one, for :meth:`novelty` (``--unknown off``: no).

    Attributes:
        labels_source: where the labels came from (a file path, ``embedded``, or ``indices``).
        similarity_detail: the output the graph computes the novelty in (see :meth:`_score_in_graph`); ``None``
            when numpy computes it from the embedding output.
    """

    def __init__(self, model: str | Path | ModelArtifact, labels: str | Path | None = None, device: str = "cpu",
                 num_threads: int | None = None, mean=None, std=None, center_crop: float | None = None,
                 in_memory: bool = False, embedded_labels_first: bool = False, unknown: bool = True):
        if isinstance(model, ModelArtifact):  # already read and checked (the live swap reads once, then decides)
            self.path, self.artifact = model.path, model
            data = model.data
        else:
            self.path = resolve_model(model, device)
            artifact = read_artifact(self.path, keep_bytes=True)  # read whole anyway; kept for the k-NN rewrite
            data, self.artifact = artifact.data, artifact if in_memory else replace(artifact, data=None)
        self.device = device
        self.num_threads = num_threads or default_num_threads()
        self.interpreter = make_interpreter(self.artifact, device, self.num_threads)
        self.runtime = load_runtime()
        self.kernels = applied_kernels(self.interpreter, device)  # read back: XNNPACK may be missing, silently
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1:
            raise ModelError(f"{self.path} has {len(inputs)} inputs; an image classifier has one")
        self.embedding_detail = self._embedding_output(outputs, strict=unknown)
        self.input_detail = inputs[0]
        self.output_detail = next(d for d in outputs if d is not self.embedding_detail)
        out_shape = [int(d) for d in self.output_detail["shape"]]
        if len(out_shape) != 2 or out_shape[0] != 1:
            raise ModelError(f"{self.path} outputs shape {out_shape}; a classifier outputs [1, num_classes]. "
                             "Detection or embedding models are not classifiers")
        self.num_classes = out_shape[1]
        self.spec = InputSpec.from_details(self.input_detail, self.artifact.metadata, mean, std, center_crop)
        if not self.spec.quantized and not self.spec.normalization_known:
            log.warning("%s carries no input normalization: feeding raw 0-255 pixels. If it expects [0, 1] "
                        "pass --std 255, for [-1, 1] pass --mean 127.5 --std 127.5", self.path.name)
        self.labels_source = "indices"
        self.labels = self._labels(labels, embedded_labels_first)
        self.probabilities = self.artifact.metadata.get("output") == "probabilities" or None
        self._input = self.spec.new_buffer()
        self.reference: Reference | None = None
        if unknown and self.embedding_detail is not None:
            detail = self.embedding_detail
            self.reference = read_reference(self.artifact.reference, self.artifact.metadata, self.path.name,
                                            np.dtype(detail["dtype"]), int(np.prod(detail["shape"])),
                                            tuple(detail["quantization"]))
        self.similarity_detail: dict | None = None
        if self.reference is not None and self.reference.scans_all and parse_device(device)[0] == "cpu":
            self._score_in_graph(data)

    def _embedding_output(self, outputs: list[dict], strict: bool) -> dict | None:
        """The output carrying the embedding, for a model with a reference set (its metadata names it).
        ``strict``: a reference set whose output is missing is an error (not with ``--unknown off``)."""
        info = self.artifact.metadata.get(KEY)
        if info is None:
            return None
        name = info.get("output") if isinstance(info, dict) else None
        named = [d for d in outputs if d["name"] == name]
        if (len(outputs) < 2 or not named) and not strict:
            return None
        if len(outputs) < 2 or not named:
            raise ModelError(f"{self.path} carries a damaged reference set for 'unknown' (no output named "
                             f"{name!r} among its {len(outputs)}); run it with --unknown off, or learn or convert "
                             "it again")
        return named[0]

    def _score_in_graph(self, data: bytes | None) -> None:
        """Run the model with the k-NN product inside its graph (:func:`edge_app.runtime.rewrite.with_knn`): XNNPACK
        does it in a few µs where numpy took ~20 beside a 0.2 ms invoke. numpy stays the fallback (tflite-runtime
        has no flatbuffer schema to edit with; an Edge TPU model keeps its graph as compiled). ``data``: the bytes
        the metadata and reference set were read from (``None``: the file is read again, as any model is)."""
        # graph editing: ai-edge-litert's schema and numpy, no TensorFlow
        from edge_app.runtime.rewrite import SIMILARITY_NAME, with_knn

        reference = self.reference
        try:
            data = read_model_bytes(self.path) if data is None else data
            data = with_knn(data, reference.output, reference.vectors, min(reference.k, len(reference.vectors)))
            interpreter = make_interpreter(replace(self.artifact, data=data), self.device, self.num_threads)
        except Exception as e:  # noqa: BLE001 - a speed-up: whatever stops it, numpy gives the same score
            log.info("%s: 'unknown' scored in numpy (%s)", self.path.name, first_line(e))
            return
        # Only tensors were appended: the input, scores and embedding keep their indices.
        self.interpreter, self.kernels = interpreter, applied_kernels(interpreter, self.device)
        self.similarity_detail = next(d for d in interpreter.get_output_details()
                                      if d["name"] == SIMILARITY_NAME)

    def _labels(self, labels: str | Path | None, embedded_first: bool) -> list[str]:
        if labels is not None and not (embedded_first and self.artifact.labels):
            self.labels_source = str(labels)
            return match_labels(read_labels(labels), self.num_classes, str(labels))
        if self.artifact.labels:
            self.labels_source = "embedded"
            return match_labels(self.artifact.labels, self.num_classes, f"the labels embedded in {self.path.name}")
        beside = self.path.parent / LABELS
        if beside.is_file():
            self.labels_source = str(beside)
            return match_labels(read_labels(beside), self.num_classes, str(beside))
        log.warning("no labels for %s: showing class indices. Pass --labels FILE", self.path.name)
        return [str(i) for i in range(self.num_classes)]

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)`` the model takes."""
        return self.spec.height, self.spec.width

    def read_image(self, path: str | Path, max_pixels: int | None = None) -> np.ndarray:
        """Decode an image file for this model: a large JPEG at the smallest scale that still covers its input."""
        return read_image(path, self.spec.decode_size, max_pixels)

    def set_input(self, image: np.ndarray, image_order: str = "RGB") -> None:
        """Pre-process ``image`` (uint8 ``(H, W, 3)``) into the interpreter's input."""
        preprocess(image, self.spec, out=self._input, image_order=image_order)
        self.set_tensor(self._input)

    def set_tensor(self, tensor: np.ndarray) -> None:
        """Set an already pre-processed input tensor (``spec.new_buffer()``-shaped)."""
        self.interpreter.set_tensor(self.input_detail["index"], tensor)

    def invoke(self) -> None:
        self.interpreter.invoke()

    def scores(self) -> np.ndarray:
        """Class probabilities (float32, 1-D) of the last invoke."""
        raw = self.interpreter.get_tensor(self.output_detail["index"])
        return output_scores(raw, self.output_detail, self.probabilities)

    def embedding(self, raw: bool = False) -> np.ndarray | None:
        """The last invoke's embedding output as float32 (``raw``: in the tensor's own type, what a reference set
        stores), flattened; ``None`` for a model whose metadata names no embedding output."""
        if self.embedding_detail is None:
            return None
        values = self.interpreter.get_tensor(self.embedding_detail["index"]).reshape(-1)
        return values if raw else dequantize(values, *self.embedding_detail["quantization"])

    def novelty(self) -> float | None:
        """How unlike the model's reference photos the last invoke's image is (see :mod:`~edge_app.runtime.novelty`);
        ``None`` for a model without a reference set (or with ``unknown=False``)."""
        if self.reference is None:
            return None
        if self.similarity_detail is not None:
            return min(2.0, max(0.0, 1.0 - float(self.interpreter.get_tensor(self.similarity_detail["index"])[0])))
        scores = self.interpreter.get_tensor(self.output_detail["index"]).reshape(-1)  # raw: only their order counts
        return self.reference.score(self.embedding(), scores)

    def is_unknown(self, novelty: float | None) -> bool:
        """Whether ``novelty`` (from :meth:`novelty`) says the image is none of the model's classes."""
        return novelty is not None and self.reference.is_unknown(novelty)

    def top(self, scores: np.ndarray, top_k: int = 5, score_threshold: float = 0.0) -> list[Classification]:
        """The best ``top_k`` classes of ``scores``, ties to the lower class index (see :func:`top_k`)."""
        return [Classification(i, s, self.labels[i]) for i, s in best_classes(scores, top_k, score_threshold)]

    def classify(self, image: np.ndarray, top_k: int = 5, score_threshold: float = 0.0,
                 image_order: str = "RGB") -> list[Classification]:
        """The best ``top_k`` classes of one image, best first."""
        self.set_input(image, image_order)
        self.invoke()
        return self.top(self.scores(), top_k, score_threshold)

    def describe(self) -> dict:
        """Facts for logs and reports: runtime, delegate, threads, model and its input."""
        return {
            "model": str(self.path),
            "runtime": self.runtime.name,
            "runtime_version": self.runtime.version,
            "device": self.device,
            "num_threads": self.num_threads,
            "kernels": None if self.kernels is None else self.kernels.to_dict(),
            "input": {"size": [self.spec.height, self.spec.width, self.spec.channels],
                      "dtype": np.dtype(self.spec.dtype).name},
            "num_classes": self.num_classes,
            "unknown": None if self.reference is None else
            {"threshold": self.reference.threshold, "references": len(self.reference.labels), "k": self.reference.k,
             "accept": self.reference.accept, "scored_in": "numpy" if self.similarity_detail is None else "graph"},
        }

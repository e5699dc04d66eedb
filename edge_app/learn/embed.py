"""The embedding pass: the base model cut at its embedding, run on image files exactly as the device runs it.

Decode and pre-processing are the runtime's (``read_image`` at the input's decode size, then
``preprocess`` with the base's normalization), so an embedding here is the one the learned model
computes on the device (:func:`at_input_size`: the base at ``--input-size``). Decoding runs in a small
thread pool a few images ahead of the interpreter (OpenCV releases the GIL), as the live pipeline overlaps
capture with inference. Memory holds the embeddings and a window of decoded images, never the dataset.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from edge_app.runtime import InputSpec, make_interpreter, preprocess, read_image, rewrite
from edge_app.runtime.errors import ConfigError, ImageError, ModelError
from edge_app.runtime.progress import progress

log = logging.getLogger("edgecls")

WINDOW = 8  # decoded images in flight ahead of the interpreter
MIN_SIZE, MAX_SIZE = 32, 1024  # --input-size: a backbone's stride (32) up to what a frame holds


def at_input_size(model, size: int | None, state: dict | None, base_path: Path):
    """The base's graph at ``--input-size`` (as it is without one): a learned base stays at the size its
    remembered photos were embedded at."""
    if size is None:
        return model
    own = [int(d) for d in model.subgraphs[0].tensors[model.subgraphs[0].inputs[0]].shape[1:3]]
    if own == [size, size]:
        return model
    if state is not None:
        raise ConfigError(f"--input-size {size}: {base_path} was learned at {own[0]}×{own[1]} and remembers its "
                          f"photos at that size; learn at {own[0]} (leave out --input-size), or learn again on its "
                          f"own base")
    try:
        resized = rewrite.at_size(model, size)
    except ModelError as e:
        raise ModelError(f"--input-size {size}: {base_path}: {e}") from e
    log.info("base %s at %d×%d pixels (was %d×%d)", base_path.name, size, size, *own)
    return resized


class Embedder:
    """An interpreter on the cut model (its one output is the embedding) and the base's input spec.

    Example:
        >>> embedder = Embedder(cut_bytes, metadata, num_threads=2)
        >>> vectors, skipped = embedder.embed(paths)
    """

    def __init__(self, cut_model: bytes, metadata: dict, device: str = "cpu", num_threads: int | None = None,
                 mean=None, std=None, name: str = "base model"):
        # The runtime loads models from files (and checks them there): a private temporary copy.
        handle, self._path = tempfile.mkstemp(prefix="edgecls-embedder-", suffix=".tflite")
        with os.fdopen(handle, "wb") as f:
            f.write(cut_model)
        try:
            self.interpreter = make_interpreter(self._path, device, num_threads)
        finally:
            os.unlink(self._path)  # the interpreter holds what it needs
        detail = self.interpreter.get_input_details()[0]
        self.spec = InputSpec.from_details(detail, metadata, mean, std)
        if not self.spec.quantized and not self.spec.normalization_known:
            log.warning("%s carries no input normalization: feeding raw 0-255 pixels. If it expects [0, 1] "
                        "pass --std 255, for [-1, 1] pass --mean 127.5 --std 127.5", name)
        self._input = detail["index"]
        out = self.interpreter.get_output_details()[0]
        self._output = out["index"]
        self.dtype = np.dtype(out["dtype"])
        self.width = int(np.prod(out["shape"]))
        scale, zero_point = out["quantization"]
        self.scale, self.zero_point = float(scale), int(zero_point)

    def dequantize(self, raw: np.ndarray) -> np.ndarray:
        """Float32 embeddings from the tensor's own type (what the head's DEQUANTIZE computes)."""
        if self.dtype == np.float32 or not self.scale:
            return raw.astype(np.float32)
        return ((raw.astype(np.float32) - self.zero_point) * self.scale).astype(np.float32)

    def embed(self, paths: list[Path], desc: str = "embedding") -> tuple[np.ndarray, np.ndarray, list[dict]]:
        """``(embeddings [N, width] in the tensor's type, kept, skipped)``: an unreadable image is skipped (its row
        is dropped) and reported as ``{"path", "error"}``, as ``edgecls train`` reports them."""
        out = np.empty((len(paths), self.width), self.dtype)
        keep = np.ones(len(paths), bool)
        skipped = []
        spec = self.spec

        def load(path):
            try:
                return preprocess(read_image(path, spec.decode_size), spec)
            except ImageError as e:
                return e

        with ThreadPoolExecutor(max_workers=2) as pool:
            pending: deque = deque()
            upcoming = iter(paths)
            for path in upcoming:
                pending.append(pool.submit(load, path))
                if len(pending) >= WINDOW:
                    break
            for i in progress(range(len(paths)), desc=desc, unit="img", leave=False, disable=len(paths) < 50):
                pixels = pending.popleft().result()
                following = next(upcoming, None)
                if following is not None:
                    pending.append(pool.submit(load, following))
                if isinstance(pixels, ImageError):
                    keep[i] = False
                    skipped.append({"path": str(paths[i]), "error": str(pixels)})
                    log.warning("skipping %s", pixels)
                    continue
                self.interpreter.set_tensor(self._input, pixels)
                self.interpreter.invoke()
                out[i] = self.interpreter.get_tensor(self._output).reshape(-1)
        return out[keep], keep, skipped

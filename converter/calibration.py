"""Representative data for full-integer quantization, and the pixels every check shares.

Calibration images go through the same ``read_image`` + ``preprocess`` as the device and the
checks, so the activation ranges the converter measures are those the device will see.
"""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np

from converter.source import DataError, Items, stratified_sample
from edge_app.runtime import InputSpec, preprocess, read_image

log = logging.getLogger("edgecls")

MIN_CALIBRATION = 100  # fewer leaves activation ranges to chance (Google's guidance: 100-500)


def float_spec(height: int, width: int, mean, std, channel_order: str = "RGB") -> InputSpec:
    """The float32 input of the reference model: ``(pixel - mean) / std`` after the device's resize."""
    return InputSpec(height, width, dtype=np.float32, mean=tuple(mean) * (3 // len(mean)),
                     std=tuple(std) * (3 // len(std)), channel_order=channel_order)


def load_pixels(items: Items, spec: InputSpec, desc: str = "images") -> np.ndarray:
    """Decode and pre-process ``items`` into one float32 batch ``(N, H, W, 3)``."""
    from edge_app.runtime.progress import progress

    batch = np.empty((len(items), spec.height, spec.width, spec.channels), np.float32)
    buffer = spec.new_buffer()
    for i, (path, _) in enumerate(progress(items, desc=desc, unit="img", leave=False, disable=len(items) < 50)):
        batch[i] = preprocess(read_image(path, spec.decode_size), spec, out=buffer)[0]
    return batch


def pin_input_range(pixels: np.ndarray, spec: InputSpec) -> None:
    """Make the calibration see the whole pixel range 0..255 at the input, in place.

    Two corner pixels of the first image become 0 and 255 (normalized as the model wants), so
    the converter gives an integer input exactly one step per pixel value (uint8: scale 1/std,
    zero point mean): the device then copies resized pixels straight into the input tensor, and
    no bright or dark pixel clips because the calibration set happened not to contain it.
    """
    if not len(pixels):
        return
    a, b = spec.pixel_affine()
    pixels[0, 0, 0] = 0 * a + b
    pixels[0, 0, 1] = 255 * a + b


def choose_calibration(items: Items, size: int, seed: int, source: str, num_classes: int) -> Items:
    """A class-balanced sample of ``size`` images; refuse none, warn under :data:`MIN_CALIBRATION`."""
    if size == 0:
        raise DataError("--calibration-size 0: full-integer int8 needs representative images to measure "
                        "activation ranges; use 100-500, or --quant dynamic/fp16 which need none")
    if not items:
        raise DataError(f"no calibration images in {source}; pass --calibration-data DIR (class sub-folders), "
                        "or --quant dynamic/fp16 which need none")
    chosen = stratified_sample(items, size, seed)
    if len(chosen) < MIN_CALIBRATION:
        log.warning("calibrating int8 on only %d images from %s (fewer than %d): activation ranges may be off "
                    "and accuracy may drop; pass more with --calibration-data DIR", len(chosen), source,
                    MIN_CALIBRATION)
    missing = {c for c in range(num_classes)} - {c for _, c in chosen}
    if missing:
        log.warning("calibration images cover %d of %d classes", num_classes - len(missing), num_classes)
    return chosen


def summarize(items: Items, pixels: np.ndarray, labels: list[str], source: str) -> dict:
    """What the report says about calibration: where from, how many per class, the input range seen."""
    counts = Counter(c for _, c in items)
    return {
        "source": source,
        "num_images": len(items),
        "per_class": {labels[c]: counts.get(c, 0) for c in range(len(labels))},
        "input_range": [float(pixels.min()), float(pixels.max())] if len(pixels) else None,
        "input_mean": float(pixels.mean()) if len(pixels) else None,
    }


def representative_dataset(pixels: np.ndarray):
    """The generator ``TFLiteConverter.representative_dataset`` wants: one ``[(1, H, W, C)]`` per image."""
    def generate():
        for image in pixels:
            yield [np.asarray(image[None], np.float32)]
    return generate

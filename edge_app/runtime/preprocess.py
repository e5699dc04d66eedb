"""Pre-processing driven by the model's own input details: size, channels, dtype, quantization.

Images are RGB ``uint8`` arrays ``(H, W, 3)`` everywhere in edgecls;
:func:`edge_app.runtime.images.read_image` makes them from files, sources make them from frames.
:func:`preprocess` turns one into the model's input tensor, writing into a caller's
preallocated buffer so the live loop allocates nothing for uint8 models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_app.runtime.errors import ImageError, ModelError
from edge_app.runtime.quant import quantize


@dataclass(frozen=True)
class InputSpec:
    """What a model's input wants, and how 0–255 pixels become its values.

    ``mean``/``std`` normalize pixels as ``(pixel - mean) / std`` before quantization. ``None``
    means the model carries no normalization: float models then get raw 0–255 pixels, and
    quantized models get pixels as their quantized values (uint8 as is, int8 shifted by -128),
    the convention of Coral's and TensorFlow's hosted quantized models.
    """

    height: int
    width: int
    channels: int = 3
    dtype: type = np.uint8
    scale: float = 0.0
    zero_point: int = 0
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channel_order: str = "RGB"
    center_crop: float | None = None

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ModelError(f"model input has {self.channels} channels; image models take 1 (gray) or 3 (RGB)")
        if np.dtype(self.dtype) not in (np.uint8, np.int8, np.float32):
            raise ModelError(f"model input type {np.dtype(self.dtype).name} is not supported; "
                             "convert with uint8, int8 or float32 input")
        if self.channel_order not in ("RGB", "BGR"):
            raise ModelError(f"channel order {self.channel_order!r} must be RGB or BGR")
        if (self.mean is None) != (self.std is None):
            raise ModelError("give both --mean and --std, or neither")
        if self.std is not None and any(s == 0 for s in self.std):
            raise ModelError("--std must not be 0")
        if self.center_crop is not None and not 0 < self.center_crop <= 1:
            raise ModelError(f"--center-crop must be in (0, 1], got {self.center_crop}")

    @classmethod
    def from_details(cls, detail: dict, metadata: dict | None = None, mean=None, std=None,
                     center_crop: float | None = None) -> InputSpec:
        """Build the spec from ``interpreter.get_input_details()[0]`` and the model's metadata.

        Explicit ``mean``/``std`` (the CLI's ``--mean``/``--std``) win over the metadata.
        """
        shape = [int(d) for d in detail["shape"]]
        if len(shape) != 4:
            raise ModelError(f"model input has shape {shape}; an image classifier takes [1, height, width, channels]")
        metadata = metadata or {}
        if mean is None and std is None:
            mean, std = metadata.get("mean"), metadata.get("std")
        scale, zero_point = detail.get("quantization", (0.0, 0))
        return cls(
            height=shape[1], width=shape[2], channels=shape[3], dtype=np.dtype(detail["dtype"]).type,
            scale=float(scale), zero_point=int(zero_point),
            mean=_per_channel(mean, shape[3]), std=_per_channel(std, shape[3]),
            channel_order=metadata.get("channel_order", "RGB"),
            center_crop=center_crop if center_crop is not None else metadata.get("center_crop"),
        )

    @property
    def quantized(self) -> bool:
        return np.dtype(self.dtype) != np.float32

    @property
    def normalization_known(self) -> bool:
        return self.mean is not None

    @property
    def decode_size(self) -> tuple[int, int]:
        """``(height, width)`` an image must keep when decoded at reduced size, so the crop still covers the input."""
        crop = self.center_crop or 1.0
        return int(np.ceil(self.height / crop)), int(np.ceil(self.width / crop))

    def new_buffer(self) -> np.ndarray:
        """A zeroed input tensor ``(1, H, W, C)`` to pass to :func:`preprocess` as ``out``."""
        return np.zeros((1, self.height, self.width, self.channels), self.dtype)

    def pixel_affine(self) -> tuple[np.ndarray, np.ndarray]:
        """``(a, b)`` such that the input value for a 0–255 pixel is ``pixel * a + b`` (before rounding)."""
        if self.mean is None:
            a, b = np.ones(self.channels), np.zeros(self.channels)
            if self.quantized:
                b += np.iinfo(self.dtype).min
            return a.astype(np.float32), b.astype(np.float32)
        mean, std = np.array(self.mean, np.float64), np.array(self.std, np.float64)
        a, b = 1.0 / std, -mean / std
        if self.quantized:
            a, b = a / self.scale, b / self.scale + self.zero_point
        return a.astype(np.float32), b.astype(np.float32)


def _per_channel(value, channels: int) -> tuple[float, ...] | None:
    if value is None:
        return None
    values = [float(v) for v in np.atleast_1d(value)]
    if len(values) == 1:
        values *= channels
    if len(values) != channels:
        raise ModelError(f"normalization {value} has {len(values)} values; the model has {channels} channels")
    return tuple(values)


def preprocess(image: np.ndarray, spec: InputSpec, out: np.ndarray | None = None,
               image_order: str = "RGB") -> np.ndarray:
    """Turn one ``uint8`` image ``(H, W, 3)`` into the model's input tensor ``(1, h, w, c)``.

    Crops (if ``spec.center_crop``), resizes with area interpolation when shrinking (no
    aliasing) and bilinear when enlarging, matches the channel order, then normalizes and
    quantizes as ``spec`` says. Writes into ``out`` when given.

    Example:
        >>> spec = InputSpec(224, 224, dtype=np.uint8, scale=1 / 128, zero_point=128)
        >>> tensor = preprocess(read_image("parrot.jpg"), spec)
    """
    import cv2

    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"preprocess takes uint8 images of shape (H, W, 3), got {image.dtype} {image.shape}")
    if out is None:
        out = spec.new_buffer()
    image = _center_crop(image, spec)
    h, w = image.shape[:2]
    size = (spec.width, spec.height)
    interpolation = cv2.INTER_AREA if (spec.width < w and spec.height < h) else cv2.INTER_LINEAR
    a, b = spec.pixel_affine()
    direct = spec.channels == 3 and spec.dtype is np.uint8 and np.all(a == 1) and np.all(b == 0)
    target = out[0] if direct else None
    resized = image if (w, h) == size else cv2.resize(image, size, dst=target, interpolation=interpolation)
    if spec.channels == 1:
        resized = cv2.cvtColor(resized, cv2.COLOR_RGB2GRAY if image_order == "RGB" else cv2.COLOR_BGR2GRAY)[..., None]
    elif image_order != spec.channel_order:
        resized = cv2.cvtColor(resized, cv2.COLOR_RGB2BGR, dst=target)
    if direct:
        if resized is not target:
            out[0] = resized
    elif spec.dtype is np.int8 and spec.channels == 3 and np.all(a == 1) and np.all(b == -128):
        # pixel - 128 as int8 is the pixel's top bit flipped: one pass, no float temporaries.
        np.bitwise_xor(resized, 0x80, out=out[0].view(np.uint8))
    elif spec.quantized:
        # a and b already hold the input's scale and zero point, so this is quantize() at scale 1.
        quantize(resized.astype(np.float32) * a + b, 1.0, 0, spec.dtype, out=out[0])
    else:
        np.multiply(resized, a, out=out[0], casting="unsafe")
        out[0] += b
    return out


def _center_crop(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    if spec.center_crop is None:
        return image
    # The largest centered box with the model's aspect ratio, scaled by center_crop.
    h, w = image.shape[:2]
    aspect = spec.width / spec.height
    box_w, box_h = (h * aspect, h) if w / h > aspect else (w, w / aspect)
    box_w, box_h = max(1, round(box_w * spec.center_crop)), max(1, round(box_h * spec.center_crop))
    top, left = (h - box_h) // 2, (w - box_w) // 2
    return image[top:top + box_h, left:left + box_w]

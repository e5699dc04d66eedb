"""Reading image files, with memory bounded: the one decoder of the trainer, converter, benchmarks and device.

The file is checked before it is read: a regular file of at most ``EDGECLS_MAX_IMAGE_MB`` (a symlink to
``/dev/zero`` or a 1 GB sparse ``huge.jpg`` is refused in one line, never read whole). Then the pixels: a
2.7 MB PNG can hold 30000×30000 pixels (5.4 GB decoded); a Raspberry Pi Zero 2 W has 512 MB. So the header is read first (Pillow reads only the header here), a JPEG is decoded at the
smallest DCT scale (1/2, 1/4, 1/8) that still covers the model input, and an image whose decoded
size would still exceed ``max_pixels`` is refused before any pixel is decoded (as is one whose header
gives no size: OpenCV would decode it unchecked).
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np

from edge_app.runtime.errors import ImageError
from edge_app.runtime.files import FileTooLarge, NotRegularFile, read_bounded

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# Decoded pixels allowed per image (after JPEG reduction): 40 MP is 120 MB of RGB, more than any
# camera frame or phone photo needs once it is scaled to a model's input. EDGECLS_MAX_PIXELS changes it.
DEFAULT_MAX_PIXELS = 40_000_000
# Bytes read per image file: a 40 MP JPEG is 10-25 MB, so 64 MB keeps real photos and refuses what is not one before
# it is read (a 1 GB sparse file, /dev/zero). An uncompressed giant (a 40 MP BMP is 120 MB) needs EDGECLS_MAX_IMAGE_MB.
MAX_IMAGE_MB_ENV = "EDGECLS_MAX_IMAGE_MB"
DEFAULT_MAX_IMAGE_MB = 64


def max_pixels_default() -> int:
    """``EDGECLS_MAX_PIXELS`` if set (the same limit for every command), else :data:`DEFAULT_MAX_PIXELS`."""
    value = os.environ.get("EDGECLS_MAX_PIXELS")
    try:
        return int(float(value)) if value else DEFAULT_MAX_PIXELS
    except ValueError:
        raise ImageError(f"EDGECLS_MAX_PIXELS={value!r} is not a number; set it to e.g. 40000000 or unset it") from None


def max_image_bytes() -> int:
    """``EDGECLS_MAX_IMAGE_MB`` (megabytes) if set, else :data:`DEFAULT_MAX_IMAGE_MB`, in bytes."""
    value = os.environ.get(MAX_IMAGE_MB_ENV)
    try:
        return int(float(value or DEFAULT_MAX_IMAGE_MB) * 1e6)
    except ValueError:
        raise ImageError(f"{MAX_IMAGE_MB_ENV}={value!r} is not a number of megabytes; set it to e.g. "
                         f"{DEFAULT_MAX_IMAGE_MB} or unset it") from None


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an image file, checked before they are read (see :func:`edge_app.runtime.files.read_bounded`).

    Raises:
        ImageError: one line naming the file, what it is and what to do.

    Example:
        >>> data = read_image_bytes("parrot.jpg")
    """
    path = Path(path)
    cap = max_image_bytes()
    try:
        data = read_bounded(path, cap)
    except FileNotFoundError as e:
        raise ImageError(f"{path}: no such file; check the path") from e
    except NotRegularFile as e:
        raise ImageError(f"{path} is {e}, not an image file; give a photo (jpg/png/bmp/webp/tif)") from e
    except FileTooLarge as e:
        raise ImageError(f"{path} is {e.size / 1e6:.1f} MB, over the {cap / 1e6:.0f} MB an image may be; is it "
                         f"the right file? (a larger image: set {MAX_IMAGE_MB_ENV})") from e
    except PermissionError as e:
        raise ImageError(f"{path}: cannot read it ({e.strerror}); check its permissions") from e
    except OSError as e:
        raise ImageError(f"{path}: cannot read it ({e.strerror or e}); copy it again or remove it") from e
    if not data:
        raise ImageError(f"{path}: the file is empty (0 bytes); copy it again or remove it")
    return data


def reduce_factor(width: int, height: int, min_size: tuple[int, int] | None) -> int:
    """The largest JPEG DCT scale (1, 2, 4, 8) that keeps ``width × height`` at least ``min_size`` ``(h, w)``.

    libjpeg decodes at 1/2, 1/4 or 1/8 scale for a fraction of the work and memory; the
    classifier's own resize then finishes the job, as the Pi's ISP does for the camera stream.

    Example:
        >>> reduce_factor(4000, 3000, (224, 224))
        8
    """
    if not min_size or width <= 0 or height <= 0:
        return 1
    model_h, model_w = min_size
    factor = 1
    while factor < 8 and width // (factor * 2) >= model_w and height // (factor * 2) >= model_h:
        factor *= 2
    return factor


def header_size(data: bytes) -> tuple[str, int, int] | None:
    """``(format, width, height)`` from an image's header alone, or ``None`` when Pillow does not know it.

    An image too large for Pillow to describe comes back as ``("", pixels, 0)``.
    """
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Pillow's own bomb warning: our limit decides, and says so in one line.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                return image.format or "", int(image.size[0]), int(image.size[1])
    except Image.DecompressionBombError as e:
        # Beyond twice its own limit Pillow will not even describe the image; its message holds the size.
        found = re.search(r"\((\d+) pixels\)", str(e))
        return "", int(found.group(1)) if found else 1 << 40, 0
    except Exception:  # noqa: BLE001 - any header Pillow cannot parse: no size, so read_image refuses it
        return None


_REDUCED = {1: None, 2: "IMREAD_REDUCED_COLOR_2", 4: "IMREAD_REDUCED_COLOR_4", 8: "IMREAD_REDUCED_COLOR_8"}


def read_image(path: str | os.PathLike, min_size: tuple[int, int] | None = None,
               max_pixels: int | None = None) -> np.ndarray:
    """Decode an image file to RGB ``uint8``, respecting JPEG EXIF orientation, with memory bounded.

    Grayscale and RGBA images become RGB (alpha is dropped, as PIL's ``convert("RGB")`` does),
    16-bit images are scaled to 8 bits. Every failure is an :class:`ImageError` naming the file.

    Args:
        min_size: ``(height, width)`` the image must still cover after decoding (the model's
            input): a JPEG is decoded at the smallest DCT scale that does. ``None``: full size.
        max_pixels: refuse images whose decoded size is larger, before decoding; ``None``: the
            default (:func:`max_pixels_default`).

    Example:
        >>> read_image("parrot.jpg", min_size=(224, 224)).shape
        (256, 320, 3)
    """
    import cv2

    path = Path(path)
    data = read_image_bytes(path)
    limit = max_pixels_default() if max_pixels is None else max_pixels
    unreadable = (f"{path}: not a readable image (corrupt, truncated, too large or not JPEG/PNG/BMP/WebP/TIFF); "
                  "re-export it or remove it")
    header = header_size(data)
    if header is None:
        # No size to check: OpenCV would decode it unchecked (a 1 MB Radiance .hdr can declare 16 MP, ~270 MB).
        raise ImageError(unreadable)
    kind, width, height = header
    factor = reduce_factor(width, height, min_size) if kind == "JPEG" else 1
    decoded = (width // factor) * (height // factor) if height else width
    if decoded > limit:
        size = f"{width}x{height} pixels" if height else f"{width / 1e6:.0f} megapixels"
        raise ImageError(f"{path}: {size} is too large to decode safely ({decoded / 1e6:.1f} MP decoded, "
                         f"limit {limit / 1e6:.1f} MP); downscale it first, or raise the limit with "
                         "--max-pixels (or EDGECLS_MAX_PIXELS)")
    buffer = np.frombuffer(data, np.uint8)
    image = None
    try:
        if factor > 1:
            image = cv2.imdecode(buffer, getattr(cv2, _REDUCED[factor]))
            if image is not None:
                image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        elif hasattr(cv2, "IMREAD_COLOR_RGB"):
            # IMREAD_COLOR_RGB (OpenCV >= 4.11) applies EXIF orientation, expands gray, drops alpha
            # and scales 16-bit down; older OpenCV gets the same from IMREAD_COLOR plus a swap.
            image = cv2.imdecode(buffer, cv2.IMREAD_COLOR_RGB)
        else:
            image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
            if image is not None:
                image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    except cv2.error:
        image = None
    if image is None or image.size == 0:
        raise ImageError(unreadable)
    return image


def list_images(path: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files in a folder (sorted; with ``recursive``, in its sub-folders too, hidden ones left out), or the
    path itself for a file."""
    path = Path(path)
    if path.is_dir():
        found = path.rglob("*") if recursive else path.iterdir()
        return sorted(p for p in found if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                      and not any(part.startswith(".") for part in p.relative_to(path).parts))
    return [path]

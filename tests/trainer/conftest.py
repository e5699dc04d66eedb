"""Small real datasets written with OpenCV: patterned classes, mixed formats, sizes and channel counts."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

CLASSES = ("discs", "stripes", "squares")
FORMATS = (".png", ".jpg", ".bmp", ".webp")


def patterned(cls: int, rng: np.random.Generator, size: int = 48) -> np.ndarray:
    """One BGR image of class ``cls``: a class colour and shape on a noisy background."""
    image = rng.integers(0, 70, (size, size, 3), dtype=np.uint8)
    colour = [0, 0, 0]
    colour[cls % 3] = int(rng.integers(170, 256))
    colour = tuple(colour)
    if cls % 3 == 0:
        cv2.circle(
            image, tuple(int(v) for v in rng.integers(size // 3, 2 * size // 3, 2)), size // 4, colour, -1
        )
    elif cls % 3 == 1:
        for x in range(int(rng.integers(0, 6)), size, 8):
            cv2.line(image, (x, 0), (x, size - 1), colour, 3)
    else:
        x, y = (int(v) for v in rng.integers(2, size // 2, 2))
        cv2.rectangle(image, (x, y), (x + size // 2, y + size // 2), colour, -1)
    return image


def write_dataset(
    root: Path, per_class: int = 24, classes=CLASSES, seed: int = 0, mixed: bool = True
) -> Path:
    """``root/<class>/img N.<fmt>``: names with spaces; with ``mixed``, gray/RGBA images and odd sizes too."""
    rng = np.random.default_rng(seed)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            size = int(rng.choice([40, 48, 64, 80])) if mixed else 48
            image = patterned(c, rng, size)
            if mixed and i % 7 == 3:
                image = np.concatenate(
                    [image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2
                )  # BGRA
            suffix = FORMATS[i % len(FORMATS)] if mixed else ".png"
            if mixed and i % 7 == 5:
                suffix = ".png"
                image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
            if suffix in (".jpg", ".bmp") and image.ndim == 3 and image.shape[2] == 4:
                image = image[..., :3]
            assert cv2.imwrite(str(folder / f"img {i}{suffix}"), image)
    return root


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "data")

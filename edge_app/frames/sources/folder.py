"""A folder of images (or one image file) as a frame source."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from edge_app.frames.sources.base import Frame, FrameSource
from edge_app.runtime.errors import ImageError, SourceError
from edge_app.runtime.images import IMAGE_SUFFIXES, list_images, read_image

log = logging.getLogger("edgecls")


class ImageFolderSource(FrameSource):
    """Every image in a folder (or one image file), in name order; unreadable images are skipped with a warning."""

    def __init__(self, path: str | Path, loop: bool = False, min_size: tuple[int, int] | None = None,
                 max_pixels: int | None = None):
        self.path = Path(path)
        self.min_size = min_size
        self.max_pixels = max_pixels
        self.name = str(path)
        self.loop = loop
        self._files: list[Path] = []
        self._next = 0
        self._index = 0

    def open(self) -> None:
        if not self.path.exists():
            raise SourceError(f"image folder {self.path}: no such folder; check the path")
        self._files = list_images(self.path)
        if not self._files:
            raise SourceError(f"image folder {self.path} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                              "point --source at a folder of photos")
        self._next = 0

    def read(self) -> Frame | None:
        skipped = 0
        while True:
            if self._next >= len(self._files):
                if not self.loop or skipped >= len(self._files):
                    return None
                self._next = 0
            path = self._files[self._next]
            self._next += 1
            try:
                image = read_image(path, self.min_size, self.max_pixels)
            except ImageError as e:
                log.warning("skipping %s", e)
                skipped += 1
                continue
            frame = Frame(image, "RGB", self._index, time.time(), file=path.name)
            self._index += 1
            return frame

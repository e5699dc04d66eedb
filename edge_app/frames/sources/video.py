"""Video files: every frame in order; MJPEG decoded from its raw JPEG packets at a reduced scale."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from edge_app.frames.sources.base import CaptureSource, Frame, quiet_opencv
from edge_app.runtime.errors import SourceError
from edge_app.runtime.images import reduce_factor

log = logging.getLogger("edgecls")


class VideoFileSource(CaptureSource):
    """Every frame of a video file, in order, then ``None`` (or from the start again with ``loop``).

    MJPEG files (what cameras record and OpenCV writes) are read as raw JPEG packets and decoded
    at the smallest DCT scale that still covers ``input_size``: a fraction of the decode cost.
    """

    def __init__(self, path: str | Path, input_size: tuple[int, int] | None = None, loop: bool = False,
                 fast_decode: bool = True):
        self.path = Path(path)
        self.name = str(path)
        self.input_size = input_size
        self.loop = loop
        self.fast_decode = fast_decode
        self._cap = None
        self._flags = 0
        self._raw = False
        self._index = 0
        self._decode_once = False

    def open(self) -> None:
        import cv2

        if not self.path.is_file():
            raise SourceError(f"video {self.path}: no such file; check the path")
        self._raw = False
        with quiet_opencv():
            cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"video {self.path}: OpenCV cannot open it (corrupt, or a codec this "
                              "OpenCV lacks); re-encode it, e.g. ffmpeg -i IN -c:v mjpeg OUT.avi")
        fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode("latin-1").upper()
        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if self.fast_decode and fourcc in ("MJPG", "MJPA", "AVRN", "JPEG") and cap.set(cv2.CAP_PROP_FORMAT, -1):
            factor = reduce_factor(width, height, self.input_size)
            self._flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                           8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
            self._raw = True
            self._decode_once = True
            log.debug("%s: MJPEG %dx%d, decoding JPEG packets at 1/%d scale", self.path.name, width, height, factor)
        self._cap = cap
        if not self._decode_once:
            log.debug("%s: %s %dx%d, decoded by FFmpeg", self.path.name, fourcc, width, height)

    def read(self) -> Frame | None:
        import cv2

        if self._cap is None:
            raise SourceError(f"video {self.path} is not open")
        ok, data = self._cap.read()
        if not ok:
            if not self.loop or self._index == 0:
                return None
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, data = self._cap.read()
            if not ok:
                # Some containers cannot seek: reopen from the start instead.
                self.close()
                self.open()
                ok, data = self._cap.read()
                if not ok:
                    return None
        t = time.time()
        jpeg = None
        if self._raw:
            jpeg = data.tobytes()
            image = cv2.imdecode(data, self._flags)
            if image is None and self._decode_once:
                # Not plain JPEG packets after all (the first frame after open): FFmpeg decodes instead.
                log.debug("%s: raw packets are not decodable JPEG; using FFmpeg", self.path.name)
                self.fast_decode = False
                self.close()
                self.open()
                return self.read()
            self._decode_once = False
            if image is None:
                log.warning("%s: frame %d is corrupt; skipping it", self.path, self._index)
                self._index += 1
                return self.read()
        else:
            image = data
        frame = Frame(image, "BGR", self._index, t, jpeg=jpeg)
        self._index += 1
        return frame

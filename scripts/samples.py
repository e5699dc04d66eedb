"""Inputs for the README figures, made from the real photos in ``../shared/images`` (nothing downloaded).

    python -m scripts.samples labelled OUT_DIR          # macaw/parrot.jpg, military uniform/grace_hopper.bmp
    python -m scripts.samples clip OUT.mp4 --frames 150  # 640x480 video panning over the photos
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from edge_app.runtime.errors import SourceError

SHARED = Path(os.environ.get("EDGECLS_SHARED", Path(__file__).resolve().parents[2] / "shared"))
IMAGES = SHARED / "images"
# folder (an ImageNet label) → photo; the known answers of Coral's test data.
LABELLED = {"macaw": "parrot.jpg", "military uniform": "grace_hopper.bmp"}


def write_labelled(out: str | Path, images: Path = IMAGES) -> Path:
    """Copy the photos into ``out/<label>/<photo>``, a folder-per-class set for ``--data``.

    Example:
        >>> write_labelled("/tmp/labelled")  # then: edgecls bench MODEL --data /tmp/labelled
    """
    out = Path(out)
    for folder, name in LABELLED.items():
        (out / folder).mkdir(parents=True, exist_ok=True)
        shutil.copy(images / name, out / folder / name)
    return out


def write_clip(out: str | Path, frames: int = 150, size: tuple[int, int] = (640, 480), fps: int = 30,
               images: Path = IMAGES) -> Path:
    """Write a video panning slowly over the real photos (MPEG-4 in .mp4, MJPEG in .avi), like a camera would see.

    Example:
        >>> write_clip("/tmp/clip.mp4", frames=150)  # then: edgecls bench MODEL --pipeline /tmp/clip.mp4
    """
    import cv2

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fourcc = "MJPG" if out.suffix.lower() == ".avi" else "mp4v"
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise SourceError(f"OpenCV cannot write {out} ({fourcc}); try a .avi name (MJPEG)")
    w, h = size
    photos = [cv2.imread(str(images / n)) for n in ("cat_720p.jpg", "parrot.jpg", "grace_hopper.bmp")]
    photos = [cv2.resize(p, (w * 5 // 4, h * 5 // 4), interpolation=cv2.INTER_AREA) for p in photos if p is not None]
    if not photos:
        raise SourceError(f"no photos in {images}; set EDGECLS_SHARED to the folder holding images/")
    per_photo = max(1, frames // len(photos))
    for i in range(frames):
        photo = photos[min(i // per_photo, len(photos) - 1)]
        t = (i % per_photo) / per_photo
        x, y = int(t * (photo.shape[1] - w)), int(t * (photo.shape[0] - h))
        writer.write(photo[y:y + h, x:x + w])
    writer.release()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    sub.add_parser("labelled").add_argument("out")
    clip = sub.add_parser("clip")
    clip.add_argument("out")
    clip.add_argument("--frames", type=int, default=150)
    args = parser.parse_args(argv)
    path = write_labelled(args.out) if args.what == "labelled" else write_clip(args.out, args.frames)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())

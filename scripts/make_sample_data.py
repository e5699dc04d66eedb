#!/usr/bin/env python
"""Make (or check) the bundled sample dataset ``edgecls/sample_data/textures``.

Five classes of 64x64 RGB JPEG patches (brick, fur, grass, gravel, wood) cut from CC0 photos
that the scikit-image wheel ships, so ``edgecls demo`` trains offline on real pixels. Train and
test patches come from disjoint regions of each photo: overlapping random crops of one photo
would otherwise put near-copies of every test patch in the training set.

Everything is deterministic (fixed seed, fixed JPEG quality); ``--check`` regenerates into a
temporary folder and compares with the committed files, byte for byte, falling back to decoded
pixels when only the JPEG encoder differs (another OpenCV/libjpeg build).

Example:
    python scripts/make_sample_data.py             # rewrite edgecls/sample_data/
    python scripts/make_sample_data.py --check     # exit 1 if the committed data differs
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_app.runtime.errors import CheckFailed, EdgeclsError
from edge_app.runtime.files import write_bytes

log = logging.getLogger("edgecls")

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "edgecls" / "sample_data"
DATASET = "textures"
SEED = 20261122
PATCH_SIZE = 64
JPEG_QUALITY = 90
SPLITS = {"train": 160, "test": 40}
# What the committed files were encoded with; another build may differ in JPEG bytes only.
MADE_WITH = "scikit-image 0.26.0, opencv-python-headless 5.0.0, numpy 2.4"
# Decoded pixels may differ this much (0-255) when another libjpeg build re-encodes the patches.
PIXEL_TOLERANCE = 4


@dataclass(frozen=True)
class ClassSource:
    """Where one class's patches come from. Regions are ``(x, y, width, height)`` in source pixels."""

    name: str
    image: str  # function name in skimage.data
    sha256: str  # of the decoded source pixels, so a changed upstream image is caught by name
    credit: str
    licence: str
    url: str
    crop_px: tuple[int, int]  # side of the square cut before resizing to PATCH_SIZE
    train: tuple[tuple[int, int, int, int], ...]
    test: tuple[tuple[int, int, int, int], ...]


SOURCES = (
    ClassSource("brick", "brick", "664a145c5253f0d66db1a12776785f0ea35a44cc7447ffc933f6d6118dc58643",
                "CC0Textures 'Bricks25'; perspective-transformed, rotated, cropped and scaled by scikit-image", "CC0 1.0",
                "https://cc0textures.com/view.php?tex=Bricks25", (64, 96),
                train=((0, 0, 512, 360),), test=((0, 368, 512, 144),)),
    ClassSource("fur", "chelsea", "416b729128bfb2c3d1eb69bf9b1734a796293abc17939267b2dc94f8a5784031",
                "'Chelsea the cat', photo by Stefan van der Walt", "CC0 1.0",
                "https://scikit-image.org/docs/stable/api/skimage.data.html#skimage.data.chelsea", (48, 72),
                train=((50, 5, 100, 80), (240, 5, 90, 80), (25, 100, 105, 50), (205, 100, 85, 70)),
                test=((160, 5, 70, 80), (25, 160, 105, 55))),
    ClassSource("grass", "grass", "b18dae4c68bf850a7a7b28a29d1846c76be890665117b57fd125fe29c4d4ede6",
                "'Grass 01' by linolafett on DeviantArt; cropped and made gray by scikit-image", "CC0 1.0",
                "https://www.deviantart.com/linolafett/art/Grass-01-434853879", (64, 96),
                train=((0, 0, 512, 360),), test=((0, 368, 512, 144),)),
    ClassSource("gravel", "gravel", "3d51ad45f789cd8b98534b7af6bce774e499ead45421135afd757358c7230009",
                "CC0Textures 'Gravel04'; rescaled, cropped and made gray by scikit-image", "CC0 1.0",
                "https://cc0textures.com/view.php?tex=Gravel04", (64, 96),
                train=((0, 0, 512, 360),), test=((0, 368, 512, 144),)),
    ClassSource("wood", "coffee", "0ce2b51640b9c95f19617f03eabf40c3f0368589cc1ee1190b70966165ac184f",
                "'Coffee cup' (the wooden table around it), photo by Rachel Michetti, "
                "courtesy of Pikolo Espresso Bar", "CC0 1.0",
                "https://scikit-image.org/docs/stable/api/skimage.data.html#skimage.data.coffee", (48, 72),
                train=((485, 0, 115, 60), (485, 150, 115, 80), (485, 320, 115, 80), (0, 110, 70, 130), (0, 320, 70, 70)),
                test=((485, 70, 115, 70), (485, 240, 115, 70), (0, 250, 70, 60))),
)


def load_source(source: ClassSource) -> tuple[np.ndarray, bool]:
    """Return the source photo as RGB uint8 and whether it is in colour, after checking its pixels."""
    try:
        import skimage
        import skimage.data
    except ImportError as e:
        raise EdgeclsError("scikit-image is needed to cut the sample data from its bundled photos; "
                           "pip install 'scikit-image>=0.26'") from e

    pixels = np.ascontiguousarray(getattr(skimage.data, source.image)())
    digest = hashlib.sha256(pixels.tobytes()).hexdigest()
    if digest != source.sha256:
        raise EdgeclsError(
            f"skimage.data.{source.image}() in scikit-image {skimage.__version__} is not the image the "
            f"sample data was cut from (pixel sha256 {digest[:12]}, expected {source.sha256[:12]}); "
            f"install scikit-image 0.26 to regenerate it")
    if pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2), False
    return pixels, True


def cut_patch(photo: np.ndarray, source: ClassSource, regions, rng: np.random.Generator,
              colour: bool) -> np.ndarray:
    """Cut one jittered PATCH_SIZE x PATCH_SIZE RGB uint8 patch from a random spot of ``regions``."""
    import cv2

    areas = np.array([w * h for _, _, w, h in regions], dtype=np.float64)
    x0, y0, w, h = regions[rng.choice(len(regions), p=areas / areas.sum())]
    side = int(rng.integers(source.crop_px[0], min(source.crop_px[1], w, h) + 1))
    x = x0 + int(rng.integers(0, w - side + 1))
    y = y0 + int(rng.integers(0, h - side + 1))
    crop = photo[y:y + side, x:x + side]
    interpolation = cv2.INTER_AREA if side >= PATCH_SIZE else cv2.INTER_LINEAR
    patch = cv2.resize(crop, (PATCH_SIZE, PATCH_SIZE), interpolation=interpolation)
    patch = np.rot90(patch, int(rng.integers(4)))
    if rng.random() < 0.5:
        patch = patch[:, ::-1]

    pixels = patch.astype(np.float32)
    gray = pixels @ np.array([0.299, 0.587, 0.114], np.float32)
    # Colour classes are sometimes shot gray or washed out, and gray ones get a white-balance cast,
    # so colour alone cannot tell the classes apart: the texture has to.
    if colour:
        saturation = 0.0 if rng.random() < 0.1 else rng.uniform(0.6, 1.0)
        pixels = gray[..., None] + saturation * (pixels - gray[..., None])
    pixels = pixels * rng.uniform(0.93, 1.07, size=3).astype(np.float32)
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(0.8, 1.2) + mean + rng.uniform(-15, 15)
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def encode_jpeg(rgb: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".jpg", np.ascontiguousarray(rgb[:, :, ::-1]),
                            [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise EdgeclsError("OpenCV could not encode a JPEG; reinstall opencv-python-headless")
    return data.tobytes()


def render_source_md() -> str:
    """SOURCE.md: provenance, licences and how to regenerate, from the SOURCES table."""
    counts = ", ".join(f"{n} {split}" for split, n in SPLITS.items())
    rows = "\n".join(
        f"| `{s.name}` | `skimage.data.{s.image}()` | {s.credit} | {s.licence} | <{s.url}> | "
        f"{s.crop_px[0]}-{s.crop_px[1]} px | {', '.join(map(str, s.train))} | {', '.join(map(str, s.test))} |"
        for s in SOURCES)
    hashes = "\n".join(f"- `skimage.data.{s.image}()`: `{s.sha256}`" for s in SOURCES)
    return f"""# Sample data: `{DATASET}/`

A small real-image dataset bundled with edgecls so `edgecls demo` trains, converts and runs offline.
{len(SOURCES)} classes x ({counts}) = {len(SOURCES) * sum(SPLITS.values())} RGB JPEG patches of
{PATCH_SIZE}x{PATCH_SIZE} pixels (about 2 MB), laid out as the trainer reads them:
`{DATASET}/train/<class>/NNN.jpg` and `{DATASET}/test/<class>/NNN.jpg`.

## Sources and licences

Every patch is cut from a photo that the scikit-image wheel ships in `skimage/data/` (scikit-image
itself is BSD-3-Clause). The wheel's `skimage/data/README.txt` carries no licence text; the provenance
and licence of each photo below are quoted from its docstring in `skimage/data/_fetchers.py`
(scikit-image 0.26.0). All five are dedicated to the public domain under CC0 1.0, so no attribution
is required; we credit them anyway. The derived patches are offered under the same CC0 1.0 terms.

| class | photo | credit | licence | original | crop side | train regions (x, y, w, h) | test regions (x, y, w, h) |
|---|---|---|---|---|---|---|---|
{rows}

## How the patches are cut

- Train and test patches come from **disjoint regions** of each photo (table above), so the test
  accuracy measures generalisation, not recall of overlapping crops. A validation split, if the
  trainer wants one, is carved out of `train/` (it overlaps train; fine for early stopping only).
- Each patch: a random square crop (side in the class's range, in a region picked by area), resized
  to {PATCH_SIZE}x{PATCH_SIZE} (OpenCV area interpolation when shrinking), rotated by a random multiple
  of 90 degrees, flipped left-right half the time.
- Colour: the gray textures (brick, grass, gravel) become 3-channel RGB. The colour photos (fur, wood)
  are desaturated to gray 10% of the time and otherwise keep 60-100% of their saturation; every
  patch then gets a random white-balance cast (per-channel gain 0.93-1.07), contrast (0.8-1.2x) and
  brightness (+-15) jitter, so no single colour statistic separates the classes.
- Saved with OpenCV as baseline JPEG, quality {JPEG_QUALITY}. Seed {SEED}; one random stream per
  (class, split), so changing one class leaves the others' files unchanged.

The source pixels are checked before cutting (SHA-256 of the decoded array), so a changed upstream
image fails with a message instead of silently producing different data:

{hashes}

## Regenerate and verify

```bash
python scripts/make_sample_data.py            # rewrites edgecls/sample_data/{DATASET} and SHA256SUMS
python scripts/make_sample_data.py --check    # exit 0 if the committed files are reproduced, 1 if not
cd edgecls/sample_data && sha256sum -c SHA256SUMS   # integrity of the committed files alone
```

The committed files were made with {MADE_WITH}; with those the script
reproduces every file byte for byte. JPEG bytes can differ under another OpenCV/libjpeg build; `--check` then compares
the decoded pixels (at most {PIXEL_TOLERANCE} levels apart) and says so.
"""


def build() -> dict[str, bytes]:
    """Return every file of the dataset as ``{relative path: bytes}``, without writing anything."""
    files: dict[str, bytes] = {}
    for class_index, source in enumerate(SOURCES):
        photo, colour = load_source(source)
        for split_index, (split, count) in enumerate(SPLITS.items()):
            regions = getattr(source, split)
            rng = np.random.default_rng([SEED, class_index, split_index])
            for i in range(count):
                patch = cut_patch(photo, source, regions, rng, colour)
                files[f"{DATASET}/{split}/{source.name}/{i:03d}.jpg"] = encode_jpeg(patch)
    sums = "".join(f"{hashlib.sha256(data).hexdigest()}  {name}\n" for name, data in sorted(files.items()))
    files["SHA256SUMS"] = sums.encode()
    files["SOURCE.md"] = render_source_md().encode()
    return files


def write(files: dict[str, bytes], out: Path) -> None:
    """Write the dataset under ``out``, swapping the whole dataset folder in at the end."""
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DATASET}.", dir=out))
    try:
        for name, data in files.items():
            if name.startswith(f"{DATASET}/"):
                target = staging / name.removeprefix(f"{DATASET}/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
        final, old = out / DATASET, out / f".{DATASET}.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        staging.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    for name in ("SHA256SUMS", "SOURCE.md"):
        write_bytes(out / name, files[name])


def committed_files(out: Path) -> dict[str, Path]:
    found = {p.relative_to(out).as_posix(): p for p in sorted((out / DATASET).rglob("*")) if p.is_file()}
    for name in ("SHA256SUMS", "SOURCE.md"):
        if (out / name).is_file():
            found[name] = out / name
    return found


def decoded_difference(a: bytes, b: bytes) -> int | None:
    """Largest per-pixel difference between two JPEGs, or None when they cannot be compared."""
    import cv2

    images = [cv2.imdecode(np.frombuffer(x, np.uint8), cv2.IMREAD_COLOR) for x in (a, b)]
    if any(im is None for im in images) or images[0].shape != images[1].shape:
        return None
    return int(np.abs(images[0].astype(np.int16) - images[1].astype(np.int16)).max())


def checksum_problems(out: Path, expected: bytes | None) -> list[str]:
    """Check ``out/SHA256SUMS`` against the files beside it (and against ``expected`` bytes if given)."""
    sums = out / "SHA256SUMS"
    problems = [f"differs: {sums}"] if expected is not None and sums.read_bytes() != expected else []
    listed = dict(line.split("  ", 1)[::-1] for line in sums.read_text().splitlines() if "  " in line)
    images = {p.relative_to(out).as_posix() for p in (out / DATASET).rglob("*.jpg")}
    problems += [f"checksum: {out / name} is not listed in {sums}" for name in sorted(images - listed.keys())]
    for name in sorted(listed.keys() & images):
        if hashlib.sha256((out / name).read_bytes()).hexdigest() != listed[name]:
            problems.append(f"checksum: {out / name} does not match {sums}")
    return problems


def check(files: dict[str, bytes], out: Path) -> None:
    """Compare freshly made ``files`` with those under ``out``; raise CheckFailed naming differences."""
    if not (out / DATASET).is_dir():
        raise EdgeclsError(f"{out / DATASET} does not exist, so there is nothing to check; "
                           f"pass the folder that holds {DATASET}/ with --out, or run without --check to make it")
    committed = committed_files(out)
    problems = [f"missing: {out / name}" for name in sorted(files.keys() - committed.keys())]
    problems += [f"unexpected: {committed[name]}" for name in sorted(committed.keys() - files.keys())]
    re_encoded = []
    for name in sorted(files.keys() & committed.keys() - {"SHA256SUMS"}):
        data = committed[name].read_bytes()
        if data == files[name]:
            continue
        if name.endswith(".jpg"):
            diff = decoded_difference(data, files[name])
            if diff is not None and diff <= PIXEL_TOLERANCE:
                re_encoded.append(name)
                continue
            problems.append(f"differs: {committed[name]} (max pixel difference {diff})")
        else:
            problems.append(f"differs: {committed[name]}")
    if "SHA256SUMS" in committed:
        problems += checksum_problems(out, expected=None if re_encoded else files["SHA256SUMS"])
    for problem in problems:
        print(problem)
    if problems:
        raise CheckFailed(f"{len(problems)} file(s) under {out} differ from what "
                          f"scripts/make_sample_data.py makes; run it without --check to rewrite them")
    if re_encoded:
        import cv2

        log.warning("%d JPEG(s) differ in bytes but decode to the same pixels (within %d levels): this "
                    "OpenCV %s encodes differently from the one that made them (%s)",
                    len(re_encoded), PIXEL_TOLERANCE, cv2.__version__, MADE_WITH)
    print(f"ok: {len(files)} files under {out} reproduced "
          + ("byte for byte" if not re_encoded else f"({len(re_encoded)} by decoded pixels)"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python scripts/make_sample_data.py\n"
               "  python scripts/make_sample_data.py --check\n"
               "  python scripts/make_sample_data.py --out /tmp/sample",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder that holds {DATASET}/, SHA256SUMS and SOURCE.md (default: %(default)s)")
    parser.add_argument("--check", action="store_true",
                        help="regenerate in memory and compare with --out; exit 1 on any difference")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        files = build()
        if args.check:
            check(files, args.out)
        else:
            write(files, args.out)
            size = sum(len(d) for n, d in files.items() if n.endswith(".jpg"))
            print(f"wrote {len(files) - 2} patches ({size / 1e6:.2f} MB) to {args.out / DATASET}")
    except EdgeclsError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        print(f"error: cannot write the sample data to {args.out} ({e}); pick a writable --out", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Reading images with memory bounded: headers first, reduced JPEG decode, a pixel limit before decoding."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib

import cv2
import numpy as np
import pytest
from support import IMAGENET_MODEL, IMAGES, REPO

from edge_app.runtime.errors import ImageError
from edge_app.runtime.images import read_image, reduce_factor


def write_png_bomb(path, side: int = 20000) -> None:
    """A real single-colour grey PNG of ``side``² pixels, streamed (a few MB on disk, never in memory)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    packer = zlib.compressobj(1)
    row = bytes(side + 1)  # filter byte 0, then black pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def peak_rss_mb(*args: str) -> tuple[subprocess.CompletedProcess, float]:
    """Run ``python -m edgecls ARGS`` under a fresh parent that reports its child's peak memory (MiB)."""
    code = ("import resource, subprocess, sys\n"
            "done = subprocess.run([sys.executable, '-m', 'edgecls', *sys.argv[1:]])\n"
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr)\n"
            "sys.exit(done.returncode)\n")
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=REPO,
                            timeout=300)
    return result, int(result.stderr.strip().splitlines()[-1]) / 1024


def test_reduce_factor_keeps_the_model_input_covered():
    assert reduce_factor(4000, 3000, (224, 224)) == 8
    assert reduce_factor(1000, 500, (224, 224)) == 2
    assert reduce_factor(300, 300, (224, 224)) == 1
    assert reduce_factor(4000, 3000, None) == 1


def test_a_large_jpeg_decodes_at_the_smallest_scale_covering_the_model(tmp_path):
    image = np.zeros((3000, 4000, 3), np.uint8)
    image[:, 2000:] = (0, 0, 255)  # right half red (BGR on disk)
    cv2.imwrite(str(tmp_path / "big.jpg"), image)
    small = read_image(tmp_path / "big.jpg", min_size=(224, 224))
    assert small.shape == (375, 500, 3)
    assert small[100, 400, 0] > 200 and small[100, 100, 0] < 30, "RGB order after the reduced decode"
    assert read_image(tmp_path / "big.jpg").shape == (3000, 4000, 3)
    # PNG has no reduced decode: full size, inside the limit.
    cv2.imwrite(str(tmp_path / "big.png"), image[:300, :400])
    assert read_image(tmp_path / "big.png", min_size=(224, 224)).shape == (300, 400, 3)


def test_the_pixel_limit_refuses_before_decoding(tmp_path, monkeypatch):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((100, 200, 3), np.uint8))
    with pytest.raises(ImageError, match=r"a.png: 200x100 pixels is too large.*--max-pixels"):
        read_image(tmp_path / "a.png", max_pixels=10_000)
    monkeypatch.setenv("EDGECLS_MAX_PIXELS", "100")
    with pytest.raises(ImageError, match="too large"):
        read_image(tmp_path / "a.png")


def test_a_png_bomb_is_refused_in_little_memory(tmp_path, shared):
    bomb = tmp_path / "bomb.png"
    write_png_bomb(bomb)
    assert bomb.stat().st_size < 5_000_000
    result, peak = peak_rss_mb("classify", str(IMAGENET_MODEL), str(bomb), "--json")
    assert result.returncode == 2, result.stderr  # every image failed
    line = json.loads(result.stdout)
    assert line["image"] == str(bomb) and "400 megapixels is too large" in line["error"]
    assert peak < 300, f"{peak:.0f} MiB"


def test_a_huge_jpeg_is_classified_within_the_service_memory_limit(tmp_path, shared):
    big = tmp_path / "huge.jpg"
    photo = cv2.resize(cv2.imread(str(IMAGES / "parrot.jpg")), (12000, 12000))
    assert cv2.imwrite(str(big), photo, [cv2.IMWRITE_JPEG_QUALITY, 70])
    del photo
    result, peak = peak_rss_mb("classify", str(IMAGENET_MODEL), str(big), "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["top_k"][0]["label"] == "macaw"
    assert peak < 300, f"classify peaked at {peak:.0f} MiB (the systemd unit allows 300)"
    folder = tmp_path / "folder"
    folder.mkdir()
    big.rename(folder / big.name)
    result, peak = peak_rss_mb("run", str(IMAGENET_MODEL), "--source", str(folder), "--log", str(tmp_path / "l.jsonl"))
    assert result.returncode == 0, result.stderr
    frames = [json.loads(x) for x in (tmp_path / "l.jsonl").read_text().splitlines() if '"frame"' in x]
    assert [f["label"] for f in frames] == ["macaw"] and frames[0]["file"] == "huge.jpg"
    assert peak < 300, f"run peaked at {peak:.0f} MiB"

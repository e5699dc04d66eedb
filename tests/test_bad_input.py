"""The smaller bad-input cases of issue 10: each gets one line on stderr naming the file and the fix."""

from __future__ import annotations

import pytest
from support import IMAGENET_MODEL, IMAGES, run_cli


def _only_line(result, command: str, code: int = 2) -> str:
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"edgecls {command}: error:"), result.stderr
    return lines[0]


def test_a_truncated_tflite_is_called_damaged_not_too_new(tmp_path, shared):
    cut = tmp_path / "cut.tflite"
    cut.write_bytes(IMAGENET_MODEL.read_bytes()[:1_000_000])
    line = _only_line(run_cli("classify", cut, IMAGES / "parrot.jpg"), "classify")
    assert "cut.tflite is damaged" in line and "copy it again" in line and "newer" not in line


def test_a_random_file_named_model_keras_is_not_reported_missing(tmp_path):
    (tmp_path / "model.keras").write_bytes(b"\x00not a zip" * 100)
    (tmp_path / "labels.txt").write_text("a\nb\n")
    for name in ("a", "b"):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "x.jpg").write_bytes((IMAGES / "parrot.jpg").read_bytes())
    result = run_cli("convert", tmp_path / "model.keras", "--data", tmp_path / "data", "--mean", "0", "--std", "1")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "not a Keras model file" in result.stderr and "not found" not in result.stderr.lower()


@pytest.mark.parametrize("source", ["bad.mp4", "rtsp://127.0.0.1:9/stream"])
def test_ffmpeg_says_nothing_of_its_own_unless_asked(tmp_path, shared, source):
    """FFmpeg's own lines ('moov atom not found', '[tcp @ ...] Connection refused') go to the -v log."""
    if "://" not in source:
        source = tmp_path / source
        source.write_bytes(b"not a video at all")
    line = _only_line(run_cli("run", IMAGENET_MODEL, "--source", source, "--max-frames", "1"), "run")
    assert "could not open" in line or "cannot open" in line


def test_argparse_mistakes_are_one_line_with_where_the_help_is():
    line = _only_line(run_cli("convert", "run", "--quant", "bogus"), "convert")
    assert "--quant" in line and "'bogus'" in line and "fp32" in line and "--help" in line


def test_classify_threshold_is_now_min_score(shared):
    line = _only_line(run_cli("classify", IMAGENET_MODEL, IMAGES / "parrot.jpg", "--threshold", "0.5"), "classify")
    assert "--min-score 0.5" in line
    ok = run_cli("classify", IMAGENET_MODEL, IMAGES / "parrot.jpg", "--min-score", "0.5", "--top-k", "5")
    assert ok.returncode == 0 and ok.stdout.count(",") == 0, ok.stdout  # one class above 0.5: the macaw

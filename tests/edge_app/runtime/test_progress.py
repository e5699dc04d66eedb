"""Progress where nobody watches a terminal: a few plain lines, never hundreds of carriage returns."""

from __future__ import annotations

import logging
import subprocess
import sys

from support import REPO, potato_subset

from edge_app.runtime import progress as progress_module


def test_off_a_terminal_progress_is_four_plain_lines(monkeypatch, caplog):
    monkeypatch.setattr(progress_module, "PLAIN_MIN_S", 0.0)
    with caplog.at_level(logging.INFO, logger="edgecls"):
        assert list(progress_module.progress(range(1000), desc="embedding", unit="img")) == list(range(1000))
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4 and lines[-1].startswith("embedding: 1000/1000 img (100%"), lines


def test_a_command_piped_to_a_file_writes_no_carriage_returns(tmp_path):
    data = potato_subset(tmp_path / "data", per_class=25)  # 60 train photos: tqdm would draw a bar
    proc = subprocess.run([sys.executable, "-m", "edgecls", "learn", str(data), "--out", str(tmp_path / "m.tflite"),
                           "--threads", "2"], capture_output=True, cwd=REPO, timeout=300)  # bytes: \r stays \r
    assert proc.returncode == 0, proc.stderr
    assert b"\r" not in proc.stderr

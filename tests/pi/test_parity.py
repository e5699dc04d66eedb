"""The parity report on the demo's models: x86-64 against the emulated arm64 root (``scripts/parity.py``).

Host side (it trains the quick demo with TensorFlow), run by ``make test-pi`` after the arm64 suite has built
the root; elsewhere it skips with the reason.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from support import REPO, run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def arm64_root():
    if not os.environ.get("EDGECLS_TEST_PI"):
        pytest.skip("runs in make test-pi (EDGECLS_TEST_PI=1): it needs the emulated arm64 root")
    probe = subprocess.run([str(REPO / "pi" / "pi_root.sh"), "exec", "true"], capture_output=True, text=True)
    if probe.returncode:
        pytest.skip(f"no arm64 root: {probe.stderr.strip().splitlines()[-1] if probe.stderr.strip() else probe.returncode}")


def test_the_demo_int8_model_agrees_on_arm64(arm64_root, tmp_path):
    if importlib.util.find_spec("tensorflow") is None:  # found, not imported: the demo imports it in its process
        pytest.skip("the demo trains a model: pip install -e '.[train]'")
    demo = tmp_path / "demo"
    made = run_cli("demo", "--quick", "--out", demo, timeout=900)
    assert made.returncode == 0, made.stderr[-3000:]
    out = tmp_path / "parity"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "parity.py"), "--demo", str(demo), "--out", str(out),
                           "--images", "6"], capture_output=True, text=True, timeout=1800, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "bit-identical" in done.stdout
    report = json.loads((out / "parity.json").read_text())
    rows = {r["model"]: r for r in report["results"]}
    int8 = rows["demo/int8"]
    print(f"demo int8 on arm64: bit-identical images {100 * int8['bit_identical_images']:.1f}%, "
          f"max {int8['max_diff']:g} steps, top-1 agreement {100 * int8['top1_agreement']:.1f}%")
    assert int8["top1_agreement"] >= 0.99
    assert int8["kernels"]["arm64"]["delegate"] == "XNNPACK" and report["sides"]["arm64"]["machine"] == "aarch64"
    # the host side reproduces the converter's own check exactly: same images, same pre-processing
    assert int8["accuracy"]["x86_64"] == int8["accuracy"]["converter"]
    assert abs(int8["accuracy"]["arm64"] - int8["accuracy"]["x86_64"]) <= 0.01
    checked_on = json.loads((demo / "conversion.json").read_text())["checked_on"]
    assert checked_on[0].startswith(f"{os.uname().machine} (XNNPACK, Python ")
    assert checked_on[1].startswith("aarch64 (XNNPACK, Python 3.13") and ", emulated)" in checked_on[1]
    assert "Checked on: " in (demo / "conversion.md").read_text()

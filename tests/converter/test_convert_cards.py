"""Class cards through the converter: every variant and the Edge TPU copy carry them (the run's, or --classes)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import sys
import textwrap

import pytest
from convert_fixtures import LABELS, fixture_data_dir, fixture_run_dir, run_cli  # noqa: F401
from test_convert_inputs import FAKE_COMPILER

from edge_app.runtime import read_artifact
from edge_app.runtime.cards import KEY

pytestmark = pytest.mark.slow
FAST = ("--runs", "2", "--warmup", "1", "--threads", "1", "--max-accuracy-drop", "20")
RUN_CARDS = {"circles": {"en": {"name": "Circles"}, "sw": {"name": "Duara"}}}


@pytest.fixture
def carded_run(run_dir, tmp_path):
    """The shared run, copied, with cards in its config.json as `edgecls train --classes` keeps them."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("model_*", "conversion.*"))
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, KEY: RUN_CARDS}))
    return run


def test_the_run_s_cards_reach_every_variant_and_the_edge_tpu_copy(carded_run, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    compiler = bin_dir / "edgetpu_compiler"
    compiler.write_text(textwrap.dedent(FAKE_COMPILER.format(python=sys.executable)))
    compiler.chmod(compiler.stat().st_mode | stat.S_IEXEC)
    env = {"PATH": os.pathsep.join([str(bin_dir), os.environ["PATH"]])}
    proc = run_cli("convert", carded_run, "--quant", "fp32", "int8", "--edgetpu", "--calibration-size", "60", *FAST,
                   env=env)
    assert proc.returncode == 0, proc.stderr
    assert "class cards for 1 of 3 classes (en, sw): embedded in every variant" in proc.stderr
    for name in ("model_fp32.tflite", "model_int8.tflite", "model_int8_edgetpu.tflite"):
        artifact = read_artifact(carded_run / name)
        assert artifact.metadata[KEY] == RUN_CARDS, name
        assert artifact.labels == LABELS
    assert json.loads((carded_run / "model_int8.json").read_text())[KEY] == RUN_CARDS  # the sidecar too
    assert read_artifact(carded_run / "model_int8_edgetpu.tflite").metadata["edgetpu"] is True


def test_classes_on_convert_wins_and_a_bad_file_fails_first(carded_run, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("Circles:\n  en: {name: Circles}\n")
    proc = run_cli("convert", carded_run, "--quant", "fp32", "--classes", bad, *FAST)
    assert proc.returncode == 2, proc.stderr
    assert f"edgecls convert: error: --classes {bad}: class 'Circles' is not one of the classes; did you mean " \
           "'circles'?" in proc.stderr
    assert not (carded_run / "model_fp32.tflite").exists()
    given = tmp_path / "classes.yaml"
    given.write_text("horizontal stripes:\n  en: {name: Stripes, advice: Count them.}\n")
    proc = run_cli("convert", carded_run, "--quant", "fp32", "--classes", given, "--unknown", "off", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert read_artifact(carded_run / "model_fp32.tflite").metadata[KEY] == {
        "horizontal stripes": {"en": {"name": "Stripes", "advice": "Count them."}}}


def test_a_run_without_cards_converts_as_before(run_dir, tmp_path):
    proc = run_cli("convert", run_dir, "--quant", "fp32", "--out", tmp_path, "--unknown", "off", *FAST)
    assert proc.returncode == 0, proc.stderr
    assert KEY not in read_artifact(tmp_path / "model_fp32.tflite").metadata
    assert "class cards" not in proc.stderr

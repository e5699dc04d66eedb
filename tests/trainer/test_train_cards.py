"""Class cards through `edgecls train`: DATA/classes.yaml checked before training, kept in config.json, converted."""

from __future__ import annotations

import json

import pytest
from support import run_cli

from edge_app.runtime import read_artifact
from edge_app.runtime.cards import KEY
from tests.trainer.conftest import write_dataset

FAST = ("--backbone", "simple_cnn", "--image-size", "16", "--epochs", "1", "--batch-size", "16", "--gradcam-images", "1")

CARDS = "discs:\n  en: {name: Discs, advice: Roll them.}\n  sw: {name: Sahani}\nstripes:\n  en: {name: Stripes}\n"
EXPECTED = {"discs": {"en": {"name": "Discs", "advice": "Roll them."}, "sw": {"name": "Sahani"}},
            "stripes": {"en": {"name": "Stripes"}}}


def test_a_bad_cards_file_fails_before_training(tmp_path):
    data = write_dataset(tmp_path / "data", per_class=6, mixed=False)
    (data / "classes.yaml").write_text("discs:\n  en: {name: Discs}\nsquare:\n  en: {name: Square}\n")
    result = run_cli("train", data, "--out", tmp_path / "run", *FAST, timeout=300)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("edgecls train: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in (f"--classes {data / 'classes.yaml'}", "'square' is not one of the classes", "did you mean 'squares'?"):
        assert needle in errors[0]
    assert "Epoch" not in result.stderr and not (tmp_path / "run").exists()


@pytest.mark.slow
def test_cards_go_from_data_classes_yaml_through_train_and_convert(tmp_path):
    data = write_dataset(tmp_path / "data", per_class=12, mixed=False)
    (data / "classes.yaml").write_text(CARDS)
    run = tmp_path / "run"
    result = run_cli("train", data, "--out", run, *FAST)
    assert result.returncode in (0, 1), result.stderr  # 1: one epoch may not learn; the run is written either way
    assert f"class cards: {data / 'classes.yaml'} (found in DATA" in result.stderr
    config = json.loads((run / "config.json").read_text())
    assert config[KEY] == EXPECTED and config["classes"] == str(data / "classes.yaml")
    assert sorted(config["labels"]) == ["discs", "squares", "stripes"]  # the cards file is not a class
    result = run_cli("convert", run, "--quant", "fp32", "--runs", "2", "--warmup", "1", "--threads", "1",
                     "--max-accuracy-drop", "100", "--unknown", "off")
    assert result.returncode in (0, 1), result.stderr
    assert read_artifact(run / "model_fp32.tflite").metadata[KEY] == EXPECTED

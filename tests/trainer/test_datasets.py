"""Scanning, stratified seeded splits and load_split: no TensorFlow, fast."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from edge_app.runtime.errors import ModelError, OutputError
from edge_app.runtime.rundir import load_split
from tests.trainer.conftest import write_dataset
from trainer.config import TrainConfig, TrainError
from trainer.datasets import load_pixels, scan


def test_split_is_stratified_disjoint_and_complete(dataset):
    ds = scan(dataset, val_split=0.2, test_split=0.2, seed=3)
    assert ds.labels == ["discs", "squares", "stripes"]
    every = [s for split in ds.splits.values() for s in split]
    assert len(every) == len(set(every)) == 3 * 24
    counts = ds.class_counts()
    for label in ds.labels:
        # 24 per class: 20% is 4.8 -> 5 in val and in test, 14 left to train, in every class.
        assert (counts["train"][label], counts["val"][label], counts["test"][label]) == (14, 5, 5)
    assert "carved" in ds.split_source["val"] and "seed 3" in ds.split_source["test"]


def test_same_seed_same_split_other_seed_other_split(dataset):
    a, b, c = (scan(dataset, seed=s).splits for s in (7, 7, 8))
    assert a == b
    assert a["test"] != c["test"]


def test_train_val_test_folders_are_used_and_missing_test_is_carved(tmp_path):
    write_dataset(tmp_path / "d" / "train", per_class=20, mixed=False)
    write_dataset(tmp_path / "d" / "val", per_class=4, mixed=False, seed=1)
    ds = scan(tmp_path / "d", test_split=0.25, seed=0)
    assert ds.split_source["val"] == "val/" and ds.split_source["train"] == "train/, less the carved test"
    assert "carved from train/" in ds.split_source["test"]
    assert all(rel.startswith("val/") for rel, _ in ds.splits["val"])
    assert len(ds.splits["val"]) == 12 and len(ds.splits["test"]) == 15 and len(ds.splits["train"]) == 45


def test_val_from_test_carves_val_out_of_test_and_leaves_train_whole(tmp_path):
    """--val-from test: train/'s near-copies stay out of val (what chooses the epoch and calibrates 'unknown')."""
    write_dataset(tmp_path / "d" / "train", per_class=20, mixed=False)
    write_dataset(tmp_path / "d" / "test", per_class=8, mixed=False, seed=1)
    ds = scan(tmp_path / "d", val_split=0.5, seed=0, val_from="test")
    assert all(rel.startswith("train/") for rel, _ in ds.splits["train"]) and len(ds.splits["train"]) == 60
    assert all(rel.startswith("test/") for rel, _ in ds.splits["val"] + ds.splits["test"])
    assert len(ds.splits["val"]) == len(ds.splits["test"]) == 12
    assert not {rel for rel, _ in ds.splits["val"]} & {rel for rel, _ in ds.splits["test"]}
    assert ds.split_source["val"].startswith("carved from test/") and ds.split_source["train"] == "train/"
    assert scan(tmp_path / "d", val_split=0.5, seed=0, val_from="test").splits == ds.splits  # seeded
    write_dataset(tmp_path / "flat", per_class=10, mixed=False)
    with pytest.raises(TrainError, match="needs a test/ folder and no val/ folder"):
        scan(tmp_path / "flat", val_from="test")
    with pytest.raises(TrainError, match="--val-from must be train or test"):
        TrainConfig(tmp_path / "d", tmp_path / "r", val_from="val")
    assert TrainConfig(tmp_path / "d", tmp_path / "r", val_from="test", val_split=0.5).val_split == 0.5
    with pytest.raises(TrainError, match="--val-split must be between 0 and 0.5"):
        TrainConfig(tmp_path / "d", tmp_path / "r", val_split=0.5)


def test_val_class_unknown_to_train_is_an_error(tmp_path):
    write_dataset(tmp_path / "d" / "train", per_class=5, mixed=False)
    write_dataset(tmp_path / "d" / "val", per_class=2, classes=("discs", "weeds"), mixed=False)
    with pytest.raises(TrainError, match="weeds.*train/ does not have"):
        scan(tmp_path / "d")


def test_corrupt_images_are_skipped_and_listed(dataset):
    bad = dataset / "discs" / "broken photo.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    empty = dataset / "stripes" / "empty.png"
    empty.write_bytes(b"")
    ds = scan(dataset)
    assert sorted(s["path"] for s in ds.skipped) == sorted([str(bad), str(empty)])
    listed = {rel for split in ds.splits.values() for rel, _ in split}
    assert "discs/broken photo.jpg" not in listed and len(listed) == 72


def test_too_small_class_to_carve_says_how_many(tmp_path):
    write_dataset(tmp_path / "d", per_class=2, mixed=False)
    with pytest.raises(TrainError, match="too few to carve"):
        scan(tmp_path / "d")


def test_load_split_reads_config_json_without_tensorflow(tmp_path, dataset):
    ds = scan(dataset)
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(
        json.dumps(
            {
                "data_dir": str(ds.data_dir),
                "splits": {s: [[rel, i] for rel, i in ds.splits[s]] for s in ds.splits},
            }
        )
    )
    test = load_split(run, "test")
    assert all(p.is_absolute() and p.is_file() for p, _ in test)
    assert [i for _, i in test] == [i for _, i in ds.splits["test"]]
    # The converter and the benchmarks read splits without TensorFlow.
    code = (
        "import sys; sys.modules['tensorflow'] = sys.modules['keras'] = None; "
        f"from edge_app.runtime.rundir import load_split; print(len(load_split({str(run)!r}, 'train')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert int(out.stdout) == len(ds.splits["train"])
    with pytest.raises(ModelError, match="no such file"):
        load_split(tmp_path, "test")


def test_pixels_are_the_devices_pixels(dataset):
    from edge_app.runtime import InputSpec, preprocess, read_image

    path = next((dataset / "discs").glob("*.webp"))
    expected = preprocess(read_image(path), InputSpec(32, 32))[0]
    got = load_pixels(str(path), 32)
    assert got.dtype == np.uint8 and got.shape == (32, 32, 3)
    np.testing.assert_array_equal(got, expected)


def test_config_rejects_bad_settings(tmp_path, dataset):
    with pytest.raises(TrainError, match="unknown backbone 'resnet50'.*mobilenet_v2"):
        TrainConfig(dataset, tmp_path / "r", backbone="resnet50")
    with pytest.raises(TrainError, match="ImageNet weights only for --alpha"):
        TrainConfig(dataset, tmp_path / "r", backbone="mobilenet_v2", alpha=0.6)
    with pytest.raises(TrainError, match="simple_cnn has no pretrained weights"):
        TrainConfig(dataset, tmp_path / "r", backbone="simple_cnn", weights="imagenet")
    with pytest.raises(OutputError, match="inside the dataset"):
        TrainConfig(dataset, dataset / "run")
    assert TrainConfig(dataset, tmp_path / "r", backbone="simple_cnn").weights == "none"
    assert TrainConfig(dataset, tmp_path / "r").image_size == 224

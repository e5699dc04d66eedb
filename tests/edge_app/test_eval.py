"""``edgecls eval`` and ``learn --field``: lab and field figures apart, on real models and real field photos."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from support import IMAGES, SHARED, run_cli, running_kiosk

POTATO = SHARED / "datasets" / "plantvillage-potato"
FIELD = SHARED / "datasets" / "plantdoc-field"
CLASSES = ("Potato___Early_blight", "Potato___Late_blight", "Potato___healthy")
FIELD_CLASSES = ("potato_early_blight", "potato_late_blight")


def _link(root: Path, source: Path, names: dict[str, str], count: int, offset: int = 0) -> Path:
    """``root/<name>/`` holding ``count`` photos of ``source/<folder>`` each (symlinks: nothing is copied)."""
    for name, folder in names.items():
        (root / name).mkdir(parents=True)
        for photo in sorted((source / folder).iterdir())[offset:offset + count]:
            (root / name / photo.name).symlink_to(photo)
    return root


@pytest.fixture(scope="module")
def lab_model(tmp_path_factory) -> Path:
    """A model learned from 15 lab photos per class on the shipped ImageNet base, with 'unknown'."""
    root = tmp_path_factory.mktemp("lab")
    data = _link(root / "data", POTATO, {c: c for c in CLASSES}, 15)
    out = root / "lab.tflite"
    done = run_cli("learn", data, "--out", out, "--threads", "2")
    assert done.returncode == 0, done.stderr
    return out


def test_eval_counts_match_classify_photo_by_photo(lab_model, tmp_path):
    """Folders named the field's way (potato_early_blight) are matched; every count agrees with classify's answers."""
    data = _link(tmp_path / "photos", POTATO, {"potato_early_blight": CLASSES[0], "potato late-blight": CLASSES[1]},
                 6, offset=100)
    (tmp_path / "photos" / "potato_early_blight" / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    done = run_cli("eval", lab_model, data, "--json", "--md", tmp_path / "e.md", "--plot", tmp_path / "e.png")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    answers = [json.loads(line) for line in run_cli("classify", lab_model, data, "-r", "--json").stdout.splitlines()]
    answers = [a for a in answers if "error" not in a]
    assert result["num_images"] == len(answers) == 12
    truth = {"potato_early_blight": CLASSES[0], "potato late-blight": CLASSES[1]}
    right = sum(a["top_k"][0]["label"] == truth[Path(a["image"]).parent.name] for a in answers)
    unknown = sum(a["unknown"] for a in answers)
    assert round(result["accuracy"] * 12) == right
    assert round(result["unknown_rate"] * 12) == unknown
    rows = dict(zip(result["confusion_matrix"]["labels"], result["confusion_matrix"]["rows"], strict=True))
    assert sum(rows[CLASSES[0]]) == sum(rows[CLASSES[1]]) == 6
    assert result["folders"] == truth
    assert [s["path"] for s in result["skipped"]] == [str(data / "potato_early_blight" / "broken.jpg")]
    assert 0 <= result["calibration"]["ece"] <= 1 and sum(b["count"] for b in result["calibration"]["bins"]) == 12
    assert "| class | precision |" in (tmp_path / "e.md").read_text()
    assert cv2.imread(str(tmp_path / "e.png")) is not None


def test_eval_says_when_field_accuracy_is_far_below_the_lab(lab_model):
    done = run_cli("eval", lab_model, FIELD, *[a for c in FIELD.iterdir() if c.is_dir() and c.name.startswith("tomato")
                                               for a in ("--map", f"{c.name}={CLASSES[2]}")])
    assert done.returncode == 0, done.stderr
    # A lab-only model on field photos: measured, and the gap said out loud when it is large.
    line = done.stdout.strip()
    assert "top-1" in line and "unknown" in line and "lab accuracy" in line
    top1 = float(line.split("top-1 ")[1].split("%")[0])
    lab = float(line.split("lab accuracy ")[1].split("%")[0])
    assert ("points below its lab accuracy" in done.stderr) == (lab - top1 >= 15)


def test_eval_bad_input_is_one_line_exit_2(lab_model, tmp_path):
    unmatched = _link(tmp_path / "a", FIELD, {"potato_early_blight": "potato_early_blight",
                                              "tomato_leaf_mold": "tomato_leaf_mold"}, 2)
    empty = _link(tmp_path / "b", FIELD, {"potato_early_blight": "potato_early_blight"}, 2)
    (empty / "potato_late_blight").mkdir()
    (tmp_path / "notes.txt").write_text("not photos")
    cases = {
        "matches none of the model's classes": [unmatched],
        "=Potato___Tomato": [unmatched, "--map", "tomato_leaf_mold=Potato___Tomato"],
        "has no images": [empty],
        "is not a folder": [tmp_path / "notes.txt"],
        "expected FOLDER=CLASS": [unmatched, "--map", "tomato_leaf_mold"],
    }
    for expected, args in cases.items():
        done = run_cli("eval", lab_model, *args)
        assert done.returncode == 2, (expected, done.stderr)
        assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    mapped = run_cli("eval", lab_model, unmatched, "--map", f"tomato_leaf_mold={CLASSES[2]}", "--json")
    assert mapped.returncode == 0 and json.loads(mapped.stdout)["num_images"] == 4


def _unknown_share(model: Path, photos: list[Path]) -> float:
    done = run_cli("classify", model, *photos, "--json")
    answers = [json.loads(line) for line in done.stdout.splitlines()]
    return sum(a["unknown"] for a in answers) / len(answers)


@pytest.mark.slow
def test_learn_field_accepts_field_leaves_and_still_refuses_non_leaves(tmp_path):
    """Without --field, a lab model calls real field leaves 'unknown'; with it, held-out field photos are accepted
    at the planned rate, its field figures stand apart from the lab ones, and non-leaf photos stay unknown."""
    data = _link(tmp_path / "lab", POTATO, {c: c for c in CLASSES}, 15)
    field = _link(tmp_path / "field", FIELD, {c: c for c in FIELD_CLASSES}, 12)
    unseen = [p for c in FIELD_CLASSES for p in sorted((FIELD / c).iterdir())[12:20]]
    rng = np.random.default_rng(0)
    others = list(IMAGES.iterdir())
    for i in range(6):  # flat colour and noise: nothing like a leaf
        path = tmp_path / f"other{i}.png"
        cv2.imwrite(str(path), rng.integers(0, 256, (120, 160, 3), dtype=np.uint8) if i % 2 else
                    np.full((120, 160, 3), (40 * i, 200 - 30 * i, 90), np.uint8))
        others.append(path)

    plain, with_field = tmp_path / "plain.tflite", tmp_path / "field.tflite"
    assert run_cli("learn", data, "--out", plain, "--threads", "2").returncode == 0
    done = run_cli("learn", data, "--out", with_field, "--threads", "2", "--field", field, "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["images"]["field_train"] + report["images"]["field_val"] == 24
    assert report["field_val"]["num_images"] == report["images"]["field_val"] >= 4
    assert report["val"]["num_images"] == report["images"]["val"]  # the lab figure is the lab photos' alone
    unknown = report["unknown"]
    assert unknown["field_val"]["known_accepted"] >= unknown["accept"]  # the threshold took the field photos in
    assert unknown["val"]["known_accepted"] >= unknown["accept"]
    assert "field photos" in unknown["calibrated_on"]

    before, after = _unknown_share(plain, unseen), _unknown_share(with_field, unseen)
    assert after < before, (before, after)
    assert after <= 0.5
    assert _unknown_share(with_field, others) >= 0.9


def test_learn_field_bad_input_is_one_line_exit_2(tmp_path):
    data = _link(tmp_path / "lab", POTATO, {c: c for c in CLASSES}, 3)
    field = _link(tmp_path / "field", FIELD, {"tomato_leaf_mold": "tomato_leaf_mold"}, 2)
    done = run_cli("learn", data, "--out", tmp_path / "m.tflite", "--field", field)
    assert done.returncode == 2 and "matches none of the model's classes" in done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "--field-map tomato_leaf_mold=CLASS" in errors[0] and "Traceback" not in done.stderr
    assert not (tmp_path / "m.tflite").exists()
    done = run_cli("learn", data, "--out", tmp_path / "m.tflite", "--field", tmp_path / "nowhere")
    assert done.returncode == 2 and "--field" in done.stderr


@pytest.mark.slow
def test_the_kiosk_loop_on_real_field_photos_raises_field_accuracy_on_photos_it_never_saw(tmp_path):
    """``edgecls run`` on a folder of field photos with --collect --learn: every frame is kept, labelled through the
    kiosk's HTTP API (truth from the file each frame came from), applied; the model now running is measured on
    field photos it never saw, against the one before, with ``eval``."""
    names = {"Potato___Early_blight": "potato_early_blight", "Potato___Late_blight": "potato_late_blight"}
    lab = _link(tmp_path / "lab", POTATO, {c: c for c in names}, 20)
    shown = tmp_path / "shown"  # what the kiosk's camera sees: one folder, each file named after its truth
    shown.mkdir()
    for truth, folder in names.items():
        for photo in sorted((FIELD / folder).iterdir())[:10]:
            (shown / f"{truth}--{photo.name}").symlink_to(photo)
    unseen = _link(tmp_path / "unseen", FIELD, names, 12, offset=10)  # what judges it
    model = tmp_path / "model.tflite"
    assert run_cli("learn", lab, "--out", model, "--threads", "2").returncode == 0
    before = json.loads(run_cli("eval", model, unseen, "--json").stdout)

    with running_kiosk(tmp_path, source=shown, collected=1, collect_every=0.05, collect_max=40) as client:
        labelled: set[str] = set()
        deadline = time.monotonic() + 180
        while len(labelled) < 20 and time.monotonic() < deadline:  # label as an operator would, as frames come
            for item in client.call("/api/collected")[1]["items"]:
                if item["file"] in labelled:  # the camera saw this photo again: one label per photo is enough
                    assert client.call("/api/discard", {"id": item["id"]})[0] == 200
                    continue
                truth = item["file"].split("--")[0]
                assert client.call("/api/label", {"id": item["id"], "label": truth})[0] == 200
                labelled.add(item["file"])
            time.sleep(0.2)
        assert len(labelled) == 20
        assert client.call("/api/apply", {})[0] == 202
        job = client.until("/api/job", lambda j: j["state"] not in ("learning", "swapping"), timeout=300)
        assert job["state"] == "applied", job
    after = json.loads(run_cli("eval", model, unseen, "--json").stdout)  # the file the kiosk swapped in
    assert after["num_images"] == before["num_images"] == 24
    # Right and shown as a class (not "unknown"): what a farmer at the kiosk gets.
    assert after["accuracy_shown"] > before["accuracy_shown"], (before, after)
    assert after["unknown_rate"] < before["unknown_rate"]


def test_a_folder_named_like_a_class_the_other_way_is_refused_not_made_a_second_class(lab_model, tmp_path):
    """``potato_early_blight`` photos added to a model that has ``Potato___Early_blight`` became a fifth class (one
    disease, two classes, each with half the examples); now one line saying which folder and which class."""
    field = _link(tmp_path / "field", FIELD, {"potato_early_blight": "potato_early_blight"}, 5)
    done = run_cli("learn", field, "--base", lab_model, "--as-field", "--out", tmp_path / "m.tflite")
    errors = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 2 and len(errors) == 1, done.stderr
    assert "named like the model's class 'Potato___Early_blight'" in errors[0] and not (tmp_path / "m.tflite").exists()

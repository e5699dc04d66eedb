"""Class cards on real models: ``edgecls meta`` sets and shows them, and learn and a live swap carry them."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from support import IMAGENET_MODEL, IMAGES, POTATO_CLASSES, potato_subset, run_cli

from edge_app.runtime import ImageClassifier, embed_metadata, read_artifact, read_image
from edge_app.runtime.artifact import flatbuffer_part, read_member
from edge_app.runtime.cards import KEY, card

CARDS = """\
macaw:
  en: {name: Macaw, description: A large parrot of the Americas., advice: Admire it from a distance.}
  sw: {name: Kasuku mkubwa}
military uniform:
  en: {name: Uniform}
"""
EXPECTED = {"macaw": {"en": {"name": "Macaw", "description": "A large parrot of the Americas.",
                             "advice": "Admire it from a distance."},
                      "sw": {"name": "Kasuku mkubwa"}},
            "military uniform": {"en": {"name": "Uniform"}}}


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def model(tmp_path) -> Path:
    """Coral's ImageNet MobileNetV2 (labels embedded by Coral) with edgecls metadata and one more archive member."""
    data = IMAGENET_MODEL.read_bytes()
    labels = read_artifact(IMAGENET_MODEL).labels
    path = tmp_path / "model.tflite"
    path.write_bytes(embed_metadata(data, {"format": "edgecls/1", "quant": "int8", "accuracy": {"accuracy": 0.7}},
                                    labels, {"extra.bin": b"kept as it is"}))
    return path


@pytest.fixture
def carded(model, tmp_path) -> Path:
    proc = run_cli("meta", model, "--classes", write(tmp_path / "cards.yaml", CARDS))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"{model}: class cards for 2 of 1001 classes (en, sw) embedded"
    return model


def test_meta_embeds_the_cards_and_keeps_everything_else(model, carded):
    before, after = read_artifact(IMAGENET_MODEL, keep_bytes=True), read_artifact(carded, keep_bytes=True)
    assert after.metadata == {"format": "edgecls/1", "quant": "int8", "accuracy": {"accuracy": 0.7},
                              "labels_file": "labels.txt", KEY: EXPECTED}
    assert after.labels == before.labels
    assert flatbuffer_part(after.data) == flatbuffer_part(before.data)  # the graph, byte for byte
    assert read_member(after.data, "extra.bin") == b"kept as it is"
    assert not [p for p in carded.parent.iterdir() if p.name.startswith(".")]  # no temporary file left
    clf = ImageClassifier(carded, num_threads=1)
    assert clf.classify(read_image(IMAGES / "parrot.jpg"), top_k=1)[0].label == "macaw"
    assert card(clf.artifact.metadata[KEY], "macaw", "sw_TZ")["name"] == "Kasuku mkubwa"


def test_meta_replaces_the_cards_and_an_empty_file_removes_them(carded, tmp_path):
    proc = run_cli("meta", carded, "--classes", write(tmp_path / "new.yaml", "macaw:\n  en: {name: Ara}\n"))
    assert proc.returncode == 0, proc.stderr
    assert read_artifact(carded).metadata[KEY] == {"macaw": {"en": {"name": "Ara"}}}
    proc = run_cli("meta", carded, "--classes", write(tmp_path / "none.yaml", "{}\n"))
    assert proc.returncode == 0 and "none, removed" in proc.stdout, proc.stderr
    assert KEY not in read_artifact(carded).metadata and read_artifact(carded).metadata["quant"] == "int8"


def test_meta_show_and_json(carded):
    proc = run_cli("meta", carded)  # --show is the default without --classes
    assert proc.returncode == 0, proc.stderr
    shown = proc.stdout
    assert "1001 labels embedded" in shown and "quant: int8" in shown
    assert "class cards: 2 of 1001 classes, languages en, sw" in shown
    for text in ("Macaw", "A large parrot of the Americas.", "advice: Admire it from a distance.", "sw",
                 "Kasuku mkubwa", "Uniform", "no card (998"):
        assert text in shown, shown
    proc = run_cli("meta", carded, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["metadata"][KEY] == EXPECTED and len(out["labels"]) == 1001 and out["edgetpu"] is False
    proc = run_cli("meta", IMAGENET_MODEL, "--show")
    assert proc.returncode == 0 and "class cards: none" in proc.stdout and "metadata: none" in proc.stdout


def test_meta_help_has_examples():
    proc = run_cli("meta", "--help")
    assert proc.returncode == 0 and "examples:" in proc.stdout and "--classes FILE" in proc.stdout


@pytest.mark.parametrize("text, needle", [
    ("macaw:\n  en: {name: Macaw}\nMacaw:\n  en: {name: M}\n", "'Macaw' is not one of the classes; did you mean 'macaw'?"),
    ("macaw:\n  sw: {name: Kasuku}\n", "has no 'en' card (missing language)"),
    ("macaw: [en, {name: Macaw}\n", "is not valid YAML"),
    ("macaw:\n  en: {name: Macaw}\n  klingon: {name: x}\n", "'klingon' is not a valid language"),
])
def test_bad_cards_are_one_line_and_leave_the_model_as_it_was(carded, tmp_path, text, needle):
    before = carded.read_bytes()
    cards_file = write(tmp_path / "bad.yaml", text)
    proc = run_cli("meta", carded, "--classes", cards_file)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edgecls meta: error: --classes {cards_file}"), proc.stderr
    assert needle in lines[0]
    assert carded.read_bytes() == before
    assert sorted(p.name for p in carded.parent.iterdir()) == sorted(["model.tflite", "cards.yaml", "bad.yaml"])


def test_a_model_without_labels_or_a_folder_is_refused(tmp_path):
    bare = tmp_path / "bare.tflite"
    bare.write_bytes(flatbuffer_part(IMAGENET_MODEL.read_bytes()))
    cards_file = write(tmp_path / "cards.yaml", CARDS)
    proc = run_cli("meta", bare, "--classes", cards_file)
    assert proc.returncode == 2 and "carries no labels" in proc.stderr, proc.stderr
    assert bare.read_bytes() == flatbuffer_part(IMAGENET_MODEL.read_bytes())
    proc = run_cli("meta", tmp_path, "--classes", cards_file)
    assert proc.returncode == 2 and "is a folder" in proc.stderr and "edgecls convert RUN --classes" in proc.stderr


def test_a_swapped_in_model_brings_its_cards(carded, tmp_path):
    """What the kiosk's apply and a fleet deploy do: install the bytes; the classifier the loop takes has the cards."""
    from edge_app.live.swap import ModelSwapper

    running = tmp_path / "running.tflite"
    shutil.copy(IMAGENET_MODEL, running)
    clf = ImageClassifier(running, in_memory=True, num_threads=1)
    assert KEY not in clf.artifact.metadata
    swapper = ModelSwapper(clf, load=lambda artifact: ImageClassifier(artifact, in_memory=True, num_threads=1),
                           watch=False)
    stop = threading.Event()

    def loop():  # the live loop's part: take a validated candidate between two frames
        while not stop.is_set():
            candidate = swapper.take()
            if candidate is not None:
                swapper.swapped(candidate)
            time.sleep(0.005)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        outcome = swapper.install(carded.read_bytes(), "test deploy")
    finally:
        stop.set()
        thread.join(5)
    assert outcome.accepted, outcome.reason
    assert swapper.clf is not clf and swapper.clf.artifact.metadata[KEY] == EXPECTED
    assert read_artifact(running).metadata[KEY] == EXPECTED


# --- learn ------------------------------------------------------------------------------------------------------------

def test_learn_keep_classes_keeps_the_base_cards_and_takes_the_file_s(carded, tmp_path):
    data = potato_subset(tmp_path / "data", classes=("Potato___healthy",), per_class=8)
    write(data / "classes.yaml", "Potato___healthy:\n  en: {name: Healthy leaf}\nmacaw:\n  en: {name: Ara}\n")
    out = tmp_path / "imagenet+leaf.tflite"
    proc = run_cli("learn", data, "--base", carded, "--keep-classes", "--out", out, "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    assert "classes.yaml (found in DATA" in proc.stderr  # the default file is said
    learned = read_artifact(out).metadata[KEY]
    assert learned == {"macaw": {"en": {"name": "Ara"}, "sw": {"name": "Kasuku mkubwa"}},  # the file wins, card by card
                       "military uniform": {"en": {"name": "Uniform"}},
                       "Potato___healthy": {"en": {"name": "Healthy leaf"}}}
    assert list(learned)[-1] == "Potato___healthy"


def test_learn_with_data_classes_yaml_and_a_learned_base_keeps_them(tmp_path):
    """The kiosk's apply: learn on the labelled folder with the running (learned) model as --base."""
    data = potato_subset(tmp_path / "data", per_class=5)
    cards_text = "".join(f"{label}:\n  en: {{name: {label[9:].replace('_', ' ')}}}\n  sw: {{name: Jani {i}}}\n"
                         for i, label in enumerate(POTATO_CLASSES))
    write(data / "classes.yaml", cards_text)
    first = tmp_path / "leaves.tflite"
    proc = run_cli("learn", data, "--out", first, "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    cards = read_artifact(first).metadata[KEY]
    assert list(cards) == list(POTATO_CLASSES) and cards["Potato___Late_blight"]["en"] == {"name": "Late blight"}
    labelled = potato_subset(tmp_path / "labelled", classes=("Potato___Late_blight",), per_class=4, offset=20)
    (labelled / "Tomato_mold").mkdir()
    for photo in sorted((labelled / "Potato___Late_blight").iterdir())[:3]:  # any photos: a new class
        (labelled / "Tomato_mold" / photo.name).symlink_to(photo.resolve())
    second = tmp_path / "v0001.tflite"
    proc = run_cli("learn", labelled, "--base", first, "--out", second, "--as-field", "--seed", "0", "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    again = read_artifact(second)
    assert again.labels == [*POTATO_CLASSES, "Tomato_mold"]
    assert again.metadata[KEY] == cards  # every kept class keeps its cards; the new one has none
    assert card(again.metadata[KEY], "Tomato_mold", "sw") is None


def test_learn_refuses_a_bad_cards_file_before_embedding(tmp_path):
    data = potato_subset(tmp_path / "data", per_class=2)
    write(data / "classes.yaml", "Potato___healthy:\n  sw: {name: Jani zima}\n")
    out = tmp_path / "m.tflite"
    proc = run_cli("learn", data, "--out", out)
    assert proc.returncode == 2, proc.stderr
    assert "edgecls learn: error: --classes" in proc.stderr and "missing language" in proc.stderr
    assert not out.exists()
    other = write(tmp_path / "other.yaml", "Potato___Healthy:\n  en: {name: Healthy}\n")
    proc = run_cli("learn", data, "--out", out, "--classes", other)
    assert proc.returncode == 2 and "did you mean 'Potato___healthy'" in proc.stderr, proc.stderr
    assert not out.exists()

"""``unknown``: a learned potato model says it for textures and the shipped photos, and keeps its own leaves."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from support import (
    IMAGENET_MODEL,
    IMAGES,
    POTATO,
    POTATO_CLASSES,
    REPO,
    potato_subset,
    read_log,
    run_cli,
    write_video,
)

from edge_app.runtime import ImageClassifier, read_artifact, read_image
from edge_app.runtime.artifact import embed_metadata, flatbuffer_part
from edge_app.runtime.novelty import KEY, MEMBER

TEXTURES = REPO / "edgecls" / "sample_data" / "textures" / "test"


@pytest.fixture(scope="module")
def potato(tmp_path_factory):
    """A potato model learned from 15 photos per class (the shipped Coral base), with its report."""
    root = tmp_path_factory.mktemp("unknown")
    out = root / "potato.tflite"
    proc = run_cli("learn", potato_subset(root / "data", per_class=15), "--out", out, "--threads", "2")
    assert proc.returncode == 0, proc.stderr
    return out, json.loads(out.with_suffix(".learn.json").read_text())


def test_textures_and_photos_are_unknown_and_held_out_leaves_are_not(potato):
    model, report = potato
    clf = ImageClassifier(model, num_threads=2)
    assert clf.reference is not None and report["unknown"]["enabled"]
    assert report["unknown"]["references"] == 45 and report["unknown"]["reference_bytes"] < 0.15 * model.stat().st_size

    def unknown(path) -> bool:
        clf.classify(clf.read_image(path), top_k=1)
        return clf.is_unknown(clf.novelty())

    far = [*sorted(TEXTURES.rglob("*.jpg"))[::8], *sorted(IMAGES.iterdir())]
    assert all(unknown(p) for p in far), [p.name for p in far if not unknown(p)]
    leaves = [p for label in POTATO_CLASSES for p in sorted((POTATO / label).iterdir())[100:115]]  # never seen by learn
    kept = sum(not unknown(p) for p in leaves)
    assert kept >= 0.85 * len(leaves), f"only {kept} of {len(leaves)} held-out leaves were accepted"


def test_the_graph_computes_the_same_novelty_as_numpy(potato):
    """The k-NN product runs inside the graph (XNNPACK), the same score as numpy's up to the int8 rows."""
    model, _ = potato
    clf = ImageClassifier(model, num_threads=2)
    assert clf.similarity_detail is not None and clf.describe()["unknown"]["scored_in"] == "graph"
    assert clf.kernels.builtin_ops.get("TOPK_V2") == 1  # the k-NN's ops are in the graph that runs
    paths = [*sorted(TEXTURES.rglob("*.jpg"))[::16], *sorted(IMAGES.iterdir()),
             *[p for label in POTATO_CLASSES for p in sorted((POTATO / label).iterdir())[100:105]]]
    for path in paths:
        clf.classify(clf.read_image(path), top_k=1)
        numpy_novelty = clf.reference.score(clf.embedding())
        assert clf.novelty() == pytest.approx(numpy_novelty, abs=0.004), path.name
    reader = ImageClassifier(read_artifact(model, keep_bytes=True), num_threads=2)  # from bytes: the live swap
    assert reader.similarity_detail is not None


def test_classify_says_unknown_and_a_model_without_a_reference_set_does_not(potato, tmp_path):
    model, _ = potato
    proc = run_cli("classify", model, IMAGES / "parrot.jpg", "--json")
    result = json.loads(proc.stdout)
    assert proc.returncode == 0 and result["unknown"] is True and result["novelty"] > 0.3
    assert [c["label"] for c in result["top_k"]][0] in POTATO_CLASSES  # top-k is kept beside the verdict
    assert "unknown: not something it knows" in run_cli("classify", model, IMAGES / "parrot.jpg").stdout
    off = json.loads(run_cli("classify", model, IMAGES / "parrot.jpg", "--json", "--unknown", "off").stdout)
    assert "unknown" not in off and "novelty" not in off
    coral = json.loads(run_cli("classify", IMAGENET_MODEL, IMAGES / "parrot.jpg", "--json").stdout)
    assert "unknown" not in coral and "novelty" not in coral


def test_the_threshold_follows_unknown_accept(tmp_path):
    data = potato_subset(tmp_path / "data", per_class=10)
    thresholds = {}
    for accept in (0.8, 0.99):
        out = tmp_path / f"m{accept}.tflite"
        proc = run_cli("learn", data, "--out", out, "--unknown-accept", accept, "--head", "imprint")
        assert proc.returncode == 0, proc.stderr
        thresholds[accept] = read_artifact(out).metadata[KEY]["threshold"]
        assert ImageClassifier(out).reference.threshold == thresholds[accept]
    assert thresholds[0.8] < thresholds[0.99]
    proc = run_cli("learn", data, "--out", tmp_path / "x.tflite", "--unknown-accept", "1.5")
    assert proc.returncode == 2 and "--unknown-accept must be from 0.5" in proc.stderr


def test_run_logs_unknown_and_collects_those_frames_first(potato, tmp_path):
    model, _ = potato
    video = write_video(tmp_path / "parrot.avi", [("parrot.jpg", 40)], size=(320, 240))
    log, collect = tmp_path / "run.jsonl", tmp_path / "field"
    proc = run_cli("run", model, "--source", video, "--log", log, "--collect", collect, "--collect-every", "0",
                   "--threads", "1", "--smooth", "3")
    assert proc.returncode == 0, proc.stderr
    _, frames, _ = read_log(log)
    assert len(frames) == 40 and all(f["label"] == "unknown" and f["novelty"] > 0 for f in frames)
    kept = [json.loads(p.read_text()) for p in (collect / "inbox").glob("*.json")]
    assert kept and all(k["why"] == "novel" and k["label"] == "unknown" for k in kept)


def test_a_damaged_reference_set_is_one_clear_error(potato, tmp_path):
    model, _ = potato
    artifact = read_artifact(model, keep_bytes=True)
    cases = {"garbage": (artifact.metadata, {MEMBER: b"not an npz"}),
             "threshold": ({**artifact.metadata, KEY: {**artifact.metadata[KEY], "threshold": "high"}}, {}),
             "width": (artifact.metadata, {MEMBER: _npz(np.zeros((3, 7), np.uint8), np.zeros(3, np.int32))})}
    for name, (metadata, members) in cases.items():
        bad = tmp_path / f"{name}.tflite"
        bad.write_bytes(embed_metadata(artifact.data, metadata, artifact.labels, members))
        proc = run_cli("classify", bad, IMAGES / "parrot.jpg")
        assert proc.returncode == 2, (name, proc.stderr)
        line = proc.stderr.strip().splitlines()[-1]
        assert "damaged reference set" in line and "--unknown off" in line, (name, line)
        assert run_cli("classify", bad, IMAGES / "parrot.jpg", "--unknown", "off").returncode == 0
    stripped = tmp_path / "stripped.tflite"  # the graph's second output without the metadata: runs as a classifier
    shutil.copy(model, stripped)
    stripped.write_bytes(flatbuffer_part(model.read_bytes()))
    clf = ImageClassifier(stripped, labels=None)
    assert clf.reference is None and clf.num_classes == 3
    assert clf.classify(read_image(IMAGES / "parrot.jpg"), top_k=1)[0].index in range(3)


def _npz(embeddings, labels) -> bytes:
    import io

    out = io.BytesIO()
    np.savez(out, embeddings=embeddings, labels=labels)
    return out.getvalue()


def test_any_classifier_gains_unknown_from_photos_of_its_own_classes(potato, tmp_path):
    """``learn --keep-classes`` with photos of the base's own classes only: the same classifier, plus a reference set."""
    model, _ = potato
    plain = tmp_path / "plain.tflite"  # a plain 3-class classifier: no learn state, no reference set
    artifact = read_artifact(model, keep_bytes=True)
    plain.write_bytes(embed_metadata(flatbuffer_part(artifact.data), {"input_size": [224, 224]}, artifact.labels))
    assert ImageClassifier(plain).reference is None
    out = tmp_path / "plain+unknown.tflite"
    data = potato_subset(tmp_path / "photos", per_class=12, offset=40)
    proc = run_cli("learn", data, "--base", plain, "--keep-classes", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert "become its reference set" in proc.stderr
    report = json.loads(out.with_suffix(".learn.json").read_text())
    assert report["new_labels"] == [] and report["unknown"]["enabled"] and report["unknown"]["references"] == 36
    before, after = ImageClassifier(plain), ImageClassifier(out)
    for path in (IMAGES / "parrot.jpg", sorted((POTATO / POTATO_CLASSES[2]).iterdir())[-1]):
        image = read_image(path)
        assert [c.label for c in before.classify(image)] == [c.label for c in after.classify(image)]
        assert np.allclose(before.scores(), after.scores())  # the classifier itself is unchanged
    after.classify(read_image(IMAGES / "parrot.jpg"))
    assert after.is_unknown(after.novelty())


def test_unknown_frames_are_saved_when_asked_and_the_kiosk_page_says_so(potato, tmp_path):
    import urllib.request

    from support import free_port

    from edge_app.frames.sinks import Result
    from edge_app.kiosk.server import WebView

    model, _ = potato
    video = write_video(tmp_path / "mixed.avi", [("parrot.jpg", 10)], size=(320, 240))
    saved = tmp_path / "evidence"
    proc = run_cli("run", model, "--source", video, "--save-frames", saved, "--save-when", "unknown",
                   "--save-every", "0", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert len(list(saved.glob("*_unknown_*.jpg"))) == 10
    proc = run_cli("run", model, "--source", video, "--save-frames", saved, "--save-when", "unknwn")
    assert proc.returncode == 2 and "'unknown' for none of its classes" in proc.stderr

    web = WebView("127.0.0.1", free_port())
    web.start({"model": str(model)})
    try:
        web.update(None, Result(1, 0.0, "unknown", 0.55, top_k=[("Potato___healthy", 0.55)], novelty=0.61))
        status = json.loads(urllib.request.urlopen(f"{web.url}status", timeout=10).read())
        assert status["unknown"] is True and status["novelty"] == 0.61 and status["label"] == "unknown"
        page = urllib.request.urlopen(web.url, timeout=10).read().decode()
        assert "Not something I know" in page
    finally:
        web.close()

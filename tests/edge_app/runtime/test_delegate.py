"""Which kernels run a model is read back from the interpreter, not assumed: XNNPACK applied, or not.

XNNPACK is turned off through the interpreter's own option (LiteRT's BUILTIN_WITHOUT_DEFAULT_DELEGATES),
the way a container without /sys loses it by accident; the report, ``run``'s log header and its warning
must all notice.
"""

from __future__ import annotations

import logging

import pytest
from support import BIRD_MODEL, IMAGENET_MODEL, IMAGES, read_log

from edge_app.live.app import AppConfig, run
from edge_app.runtime import ImageClassifier, make_interpreter
from edge_app.runtime.errors import ModelError
from edge_app.runtime.interpreter import XNNPACK_ENV, applied_kernels, missing_xnnpack


def test_xnnpack_is_reported_when_applied_and_when_disabled(shared):
    on = applied_kernels(make_interpreter(IMAGENET_MODEL, num_threads=1))
    off = applied_kernels(make_interpreter(IMAGENET_MODEL, num_threads=1, xnnpack=False))
    assert on.delegate == "XNNPACK" and on.partitions >= 1 and on.total_ops == off.total_ops
    # Coral's uint8 MobileNetV2: all but the uint8 average pool and softmax run in XNNPACK
    assert on.delegated_ops >= on.total_ops - 2 and on.summary().startswith("XNNPACK (")
    assert sum(on.builtin_ops.values()) == on.total_ops - on.delegated_ops
    assert off.delegate is None and off.partitions == 0 and off.delegated_ops == 0
    assert sum(off.builtin_ops.values()) == off.total_ops and off.builtin_ops["CONV_2D"] > 30
    assert off.summary() == "no delegate: built-in kernels only"
    assert missing_xnnpack(on) is None
    assert "XNNPACK is not applied" in missing_xnnpack(off) and "/sys" in missing_xnnpack(off)
    assert missing_xnnpack(off, "edgetpu") is None  # on a Coral, XNNPACK is not what is expected


def test_the_environment_turns_xnnpack_off_on_purpose(shared, monkeypatch):
    monkeypatch.setenv(XNNPACK_ENV, "off")
    clf = ImageClassifier(IMAGENET_MODEL, num_threads=1)
    assert clf.kernels.delegate is None and clf.describe()["kernels"]["delegated_ops"] == 0
    assert missing_xnnpack(clf.kernels) is None  # asked for: no warning
    assert clf.classify(clf.read_image(IMAGES / "parrot.jpg"), top_k=1)[0].label == "macaw"
    monkeypatch.setenv(XNNPACK_ENV, "maybe")
    with pytest.raises(ModelError, match="EDGECLS_XNNPACK='maybe': use on or off"):
        ImageClassifier(IMAGENET_MODEL, num_threads=1)


def test_run_logs_the_applied_delegate_and_warns_once_when_it_is_missing(shared, tmp_path, monkeypatch, caplog):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("parrot.jpg", "grace_hopper.bmp"):
        (folder / name).write_bytes((IMAGES / name).read_bytes())
    log = tmp_path / "on.jsonl"
    run(AppConfig(str(IMAGENET_MODEL), source=str(folder), log=str(log), num_threads=1))
    header, _, _ = read_log(log)
    assert header["kernels"]["delegate"] == "XNNPACK" and header["delegate"].startswith("XNNPACK (")

    # XNNPACK lost by accident (what a chroot without /sys does), for the first model and for a swapped-in one
    import edge_app.runtime.classifier as classifier

    monkeypatch.setattr(classifier, "make_interpreter",
                        lambda *args, **kwargs: make_interpreter(*args, **{**kwargs, "xnnpack": False}))
    log = tmp_path / "off.jsonl"
    with caplog.at_level(logging.WARNING, logger="edgecls"):
        run(AppConfig(str(IMAGENET_MODEL), source=str(folder), log=str(log), num_threads=1, loop=True, max_frames=6))
        ImageClassifier(BIRD_MODEL, num_threads=1)  # a second model: the classifier itself never warns
    header, frames, _ = read_log(log)
    assert header["kernels"]["delegate"] is None and header["delegate"] == "no delegate: built-in kernels only"
    assert {f["file"].split("/")[-1]: f["label"] for f in frames} == {"parrot.jpg": "macaw",
                                                                     "grace_hopper.bmp": "military uniform"}
    warnings = [r.getMessage() for r in caplog.records if "XNNPACK is not applied" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith(IMAGENET_MODEL.name)


def test_bench_rows_show_the_kernels_column():
    from benchmarks.report import COLUMNS

    get = dict(COLUMNS)["kernels"]
    kernels = {"delegate": "XNNPACK", "partitions": 2, "delegated_ops": 64, "total_ops": 66, "builtin_ops": {}}
    assert get({"kernels": kernels}) == "XNNPACK 64/66"
    assert get({"kernels": {**kernels, "delegate": None, "delegated_ops": 0}}) == "builtin 0/66"
    assert get({}) is None  # a report from before the column

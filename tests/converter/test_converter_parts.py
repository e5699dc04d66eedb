"""The converter's small parts, without TensorFlow: config validation, sampling, messages, the target table."""

from __future__ import annotations

from pathlib import Path

import pytest

from converter.config import ConfigError, ConvertConfig
from converter.source import stratified_sample
from converter.targets import TARGETS, explain_failure, target_table


def test_recipes_and_validation():
    config = ConvertConfig.int8("run", io="int8")
    assert config.quants == ("int8",) and config.io == "int8" and config.model == Path("run")
    assert ConvertConfig("run").quants == ("fp32", "fp16", "dynamic", "int8")
    assert ConvertConfig.fp16("run", edgetpu=True).quants == ("fp16", "int8")  # Edge TPU builds on int8
    assert ConvertConfig("run", mean=127.5, std=(127.5,)).mean == (127.5,)
    for bad, message in [
        (dict(quants=("int4",)), "unknown --quant int4"),
        (dict(io="int16"), "unknown --io"),
        (dict(edgetpu=True, io="float32"), "--edgetpu needs integer"),
        (dict(mean=(1.0,)), "both --mean and --std"),
        (dict(mean=0, std=0), "--std must not be 0"),
        (dict(max_accuracy_drop=-1), "--max-accuracy-drop"),
        (dict(calibration_size=-5), "--calibration-size"),
        (dict(num_threads=0), "--threads"),
        (dict(repair_budget=0), "--repair-budget"),
    ]:
        with pytest.raises(ConfigError, match=message.replace("-", r"\-")):
            ConvertConfig("run", **bad)


def test_stratified_sample_keeps_small_classes():
    items = [(Path(f"a{i}"), 0) for i in range(1000)] + [(Path(f"b{i}"), 1) for i in range(1000)] + \
            [(Path(f"c{i}"), 2) for i in range(30)]
    chosen = stratified_sample(items, 300, seed=0)
    counts = [sum(1 for _, c in chosen if c == k) for k in range(3)]
    assert counts == [135, 135, 30]
    assert stratified_sample(items, 300, seed=0) == chosen  # reproducible
    assert len(stratified_sample(items, None, seed=0)) == len(items)


def test_conversion_failure_names_the_op_and_the_fix():
    message = ("<unknown>:0: error: loc(\"x\"): 'tf.Svd' op is neither a custom op nor a flex op\n"
               "<unknown>:0: note: see current operation")
    text = explain_failure(message, "fp32", Path("m.keras"))
    assert "op tf.Svd" in text and "m.keras" in text and "--quant dynamic" in text
    text = explain_failure("Quantization not yet supported for op: 'CUMSUM'.", "int8", Path("m.keras"))
    assert "op CUMSUM" in text and "--quant dynamic" in text and "no int8 kernel" in text


def test_target_table_is_the_one_source_of_targets():
    rows = target_table()
    assert [r["quant"] for r in rows] == list(TARGETS) == ["fp32", "fp16", "dynamic", "int8"]
    assert [r["quant"] for r in rows if r["calibration"]] == ["int8"]
    assert [r["quant"] for r in rows if r["edgetpu_ready"]] == ["int8"]
    assert all(r["file"] == f"model_{r['quant']}.tflite" for r in rows)


def test_the_gate_does_not_hinge_on_a_few_images():
    """McNemar on the paired disagreements: 3 lost vs 0 gained of 200 is noise, 15 vs 2 is a real loss."""
    from converter.checks import accuracy_fails, gate, paired_drop

    noise = paired_drop(3, 0, 200)
    assert noise.drop_pp == 1.5 and noise.p_value == 0.125 and not noise.significant
    assert noise.ci95_pp[0] < 0 < noise.ci95_pp[1]
    real = paired_drop(15, 2, 200)
    assert real.drop_pp == 6.5 and real.significant and real.p_value == pytest.approx(154 / 2 ** 17, abs=1e-5)
    assert real.ci95_pp[0] > 1.0
    assert paired_drop(0, 0, 200).to_dict() == {"lost": 0, "gained": 0, "num_images": 200, "drop_pp": 0.0,
                                                "ci95_pp": [0.0, 0.0], "p_value": 1.0, "significant": False}
    assert paired_drop(2, 5, 200).drop_pp == -1.5 and not paired_drop(2, 5, 200).significant

    # gate(drop, its test, p50 ms, --max-accuracy-drop, --max-latency-ms)
    assert gate(noise.drop_pp, noise, 1.0, 1.0, None) == [] and not accuracy_fails(noise.drop_pp, noise, 1.0)
    failures = gate(real.drop_pp, real, 1.0, 1.0, None)
    assert len(failures) == 1 and "15 images lost, 2 gained" in failures[0]
    assert gate(real.drop_pp, real, 1.0, 10.0, None) == []  # significant, but within the limit
    assert gate(noise.drop_pp, noise, 1.0, 1.0, 0.5) == ["p50 latency 1.00 ms > --max-latency-ms 0.5 ms"]

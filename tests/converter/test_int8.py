"""int8 for the CPU: ops XNNPACK cannot run in int8 stay float (one partition), the Edge TPU's model stays
full integer, and the repair keeps a damaged layer in float; through the real CLI."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from convert_fixtures import LABELS, SIZE, fixture_data_dir, fixture_run_dir, run_cli  # noqa: F401

from converter.graph import delegate_partitions, inspect_flatbuffer
from edge_app.runtime import ImageClassifier

pytestmark = pytest.mark.slow
FAST = ("--runs", "3", "--warmup", "1", "--threads", "1")


def _ops_with_float_input(data: bytes, op: str) -> int:
    """How many ``op`` nodes of a flatbuffer read a float32 tensor."""
    from converter.graph import _names, _schema

    schema = _schema()
    model = schema.Model.GetRootAsModel(bytearray(data), 0)
    names = _names(schema.BuiltinOperator)
    codes = [names.get(max(model.OperatorCodes(i).BuiltinCode(), model.OperatorCodes(i).DeprecatedBuiltinCode()))
             for i in range(model.OperatorCodesLength())]
    graph = model.Subgraphs(0)
    count = 0
    for i in range(graph.OperatorsLength()):
        node = graph.Operators(i)
        if codes[node.OpcodeIndex()] == op and graph.Tensors(node.Inputs(0)).Type() == schema.TensorType.FLOAT32:
            count += 1
    return count


def test_hard_swish_stays_float_for_the_cpu_and_integer_for_the_edge_tpu(tmp_path, run_dir, data_dir):
    """Naive int8 splits a hard-swish graph into several XNNPACK partitions; ours is one, and the Edge TPU
    compiler gets a full-integer copy."""
    import keras

    trained = keras.models.load_model(run_dir / "model.keras", compile=False)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="hard_swish")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="hard_swish")(x)
    x = keras.layers.Conv2D(3, 1, activation="sigmoid")(x)
    x = keras.layers.Resizing(SIZE, SIZE)(x)
    own = keras.Model(inputs, trained(keras.layers.Rescaling(255.0)(x)))  # a hard-swish stem before the trained model
    own.save(tmp_path / "hs.keras")
    out = tmp_path / "out"
    env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])}  # no edgetpu_compiler
    proc = run_cli("convert", tmp_path / "hs.keras", "--labels", run_dir / "labels.txt", "--data", data_dir,
                   "--calibration-data", data_dir / "train", "--calibration-size", "100", "--quant", "int8",
                   "--edgetpu", "--out", out, "--max-accuracy-drop", "100", *FAST, env=env)
    assert proc.returncode == 0, proc.stderr
    int8 = json.loads((out / "conversion.json").read_text())["variants"][0]
    kept = int8["kept_float"]
    assert kept["ops"] == {"HARD_SWISH": 2} and kept["partitions_full_integer"] >= 2 and kept["partitions"] == 1
    cpu = (out / "model_int8.tflite").read_bytes()
    assert delegate_partitions(cpu)[0] == 1 and delegate_partitions(cpu)[2] == {} and int8["graph"]["xnnpack_partitions"] == 1
    assert _ops_with_float_input(cpu, "HARD_SWISH") == 2 and _ops_with_float_input(cpu, "CONV_2D") == 0
    full = (out / "model_int8_full.tflite").read_bytes()
    assert inspect_flatbuffer(full).full_integer and inspect_flatbuffer(full).op_counts["HARD_SWISH"] == 2
    assert delegate_partitions(full)[0] >= 2
    tpu = json.loads((out / "conversion.json").read_text())["edgetpu"]
    assert tpu["status"] == "compiler_not_found" and "model_int8_full.tflite" in tpu["message"]
    assert "HARD_SWISH" in (out / "conversion.md").read_text()
    sizes = int8["size_breakdown"]  # inner names stripped (the input and two outputs keep theirs)
    assert sizes["tensor_names"] < 200 and sizes["weights_int8"] > 0 and sizes["quantization_params"] > 0
    assert sum(v for k, v in sizes.items() if k != "total") == sizes["total"] == int8["size_bytes"]
    assert ImageClassifier(out / "model_int8.tflite", num_threads=1).labels == LABELS


def test_repair_keeps_the_damaged_layer_in_float(tmp_path, run_dir, data_dir):
    """A classifier head whose int8 weights are ruined (one huge weight per output channel on an input that
    is always 0: the float model ignores it, per-channel int8 rounds every other weight to 0) fails the gate;
    the repair finds that layer and keeps it in float, and the model passes."""
    import keras

    model = keras.models.load_model(run_dir / "model.keras", compile=False)
    conv, head = model.layers[-3], model.layers[-1]
    assert isinstance(conv, keras.layers.Conv2D) and isinstance(head, keras.layers.Dense)
    kernel, bias = conv.get_weights()
    kernel[..., 0], bias[0] = 0.0, -1.0  # channel 0 is dead after ReLU
    conv.set_weights([kernel, bias])
    weights, head_bias = head.get_weights()
    weights[0, :] = 500.0
    head.set_weights([weights, head_bias])
    model.save(tmp_path / "damaged.keras")
    out = tmp_path / "out"
    common = ("--labels", run_dir / "labels.txt", "--data", data_dir, "--calibration-data", data_dir / "train",
              "--calibration-size", "100", "--quant", "int8", "--max-accuracy-drop", "2", *FAST)
    proc = run_cli("convert", tmp_path / "damaged.keras", "--no-repair", "--out", tmp_path / "plain", *common)
    assert proc.returncode == 1 and "accuracy drop" in proc.stderr.splitlines()[-1]
    proc = run_cli("convert", tmp_path / "damaged.keras", "--out", out, *common)
    assert proc.returncode == 0, proc.stderr
    int8 = json.loads((out / "conversion.json").read_text())["variants"][0]
    repair = int8["repair"]
    assert repair["result"] == "passed" and repair["steps"][0]["kept_layers"] == []
    assert not repair["steps"][0]["passed"] and repair["steps"][-1]["passed"]
    head_node = re.compile(rf"/{head.name}(_\d+)?/")  # TensorFlow's name for it: Keras may add a suffix
    assert [node for node in repair["kept_layers"] if head_node.search(node)], repair["kept_layers"]
    assert int8["accuracy_drop_pp"] <= 2 and int8["passed"]
    data = (out / "model_int8.tflite").read_bytes()
    assert _ops_with_float_input(data, "FULLY_CONNECTED") == 1 and _ops_with_float_input(data, "CONV_2D") == 0
    assert "Repair" in (out / "conversion.md").read_text()
    assert not list(out.glob(".edgecls-*")) and not list(out.glob("repair-*"))  # candidates cleaned up
    first = int8["repair"]["worst_layers"][0]
    assert head_node.search(first["node"]) and first["op"] == "FULLY_CONNECTED"
    assert np.isfinite(first["rmse_per_scale"])

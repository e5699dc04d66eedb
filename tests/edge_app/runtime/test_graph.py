"""The learn graph surgery on real Coral models: find the embedding, read the old head, cut, put a new head on."""

from __future__ import annotations

import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
from support import BIRD_MODEL, EDGETPU_MODEL, IMAGENET_MODEL, IMAGES, REPO

from edge_app.runtime import embed_metadata
from edge_app.runtime.errors import ModelError
from edge_app.runtime.graph import Embedding, classifier_weights, find_embedding, read_model
from edge_app.runtime.rewrite import at_size, cut_at, with_head

IMAGENET_EMBEDDING = "MobilenetV2/Logits/AvgPool"


def _image(name: str) -> np.ndarray:
    """[1, 224, 224, 3] uint8 RGB, as the Coral classifiers take it."""
    bgr = cv2.imread(str(IMAGES / name))
    assert bgr is not None, name
    return cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (224, 224), interpolation=cv2.INTER_AREA)[None]


def _interpreter(data: bytes, preserve: bool = False):
    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():  # preserve_all_tensors warns that it is for debugging: it is, here
        warnings.simplefilter("ignore")
        interpreter = Interpreter(model_content=bytes(data), num_threads=2,
                                  experimental_preserve_all_tensors=preserve)
    interpreter.allocate_tensors()
    return interpreter


def _run(interpreter, image: np.ndarray) -> np.ndarray:
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image)
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"])


def _ops(data: bytes) -> list[str]:
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    names = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    model = read_model(data)
    return [names[flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])]
            for op in model.subgraphs[0].operators]


@pytest.fixture(scope="module")
def imagenet(shared):
    data = IMAGENET_MODEL.read_bytes()
    model = read_model(data)
    return data, model, find_embedding(model)


@pytest.fixture(scope="module")
def extractor(shared):
    data = EDGETPU_MODEL.read_bytes()
    model = read_model(data)
    return data, model, find_embedding(model)


def test_finds_the_pooled_features_before_the_1x1_conv_classifier(imagenet):
    _, _, embedding = imagenet
    assert embedding.name == IMAGENET_EMBEDDING
    assert (embedding.width, embedding.dtype, embedding.shape) == (1280, "uint8", (1, 1, 1, 1280))
    assert (embedding.classifier, embedding.num_classes) == ("CONV_2D", 1001)
    assert embedding.scale == pytest.approx(0.0235285) and embedding.zero_point == 0


def test_finds_the_fully_connected_classifier_of_the_bird_model(shared):
    embedding = find_embedding(read_model(BIRD_MODEL.read_bytes()))
    assert (embedding.name, embedding.width) == ("AvgPool/AvgPool", 1280)
    assert (embedding.classifier, embedding.num_classes) == ("FULLY_CONNECTED", 965)


def test_an_embedding_extractors_output_is_the_embedding(extractor):
    _, _, embedding = extractor
    assert embedding.name == "MobilenetV1/Logits/AvgPool_1a/AvgPool"
    assert (embedding.index, embedding.width, embedding.dtype) == (1, 1024, "uint8")
    assert embedding.classifier is None and embedding.num_classes is None


def test_embedding_by_name_or_index(imagenet):
    _, model, found = imagenet
    assert find_embedding(model, IMAGENET_EMBEDDING) == found
    assert find_embedding(model, str(found.index)) == found


def test_unknown_or_unusable_embedding_names_the_candidates(imagenet):
    _, model, _ = imagenet
    with pytest.raises(ModelError, match="no tensor 'Logits/nope'.*MobilenetV2/Logits/AvgPool"):
        find_embedding(model, "Logits/nope")
    with pytest.raises(ModelError, match=r"\[1, 7, 7, 1280\].*one feature vector.*MobilenetV2/Logits/AvgPool"):
        find_embedding(model, "168")  # the last conv's 7x7 feature map, before pooling


def test_an_output_from_no_classifier_asks_for_embedding(shared):
    model = read_model(IMAGENET_MODEL.read_bytes())
    model.subgraphs[0].outputs = [168]  # the 7x7 feature map: neither a classifier's output nor a vector
    with pytest.raises(ModelError, match="comes from CONV_2D.*--embedding NAME"):
        find_embedding(model)


def test_read_model_skips_the_metadata_archive_and_refuses_other_files(shared):
    data = embed_metadata(IMAGENET_MODEL.read_bytes(), {"input_size": [224, 224]}, ["a", "b"])
    assert find_embedding(read_model(data)).name == IMAGENET_EMBEDDING
    with pytest.raises(ModelError, match="labels.txt is not a TFLite model"):
        read_model(b"cat\ndog\n" * 10, "labels.txt")


@pytest.mark.parametrize("model_path", [IMAGENET_MODEL, BIRD_MODEL], ids=["conv_1x1", "fully_connected"])
def test_classifier_weights_reproduce_the_original_logits(shared, model_path):
    data = model_path.read_bytes()
    model = read_model(data)
    embedding = find_embedding(model)
    weights, bias = classifier_weights(model, embedding)
    assert weights.shape == (embedding.num_classes, 1280) and bias.shape == (embedding.num_classes,)
    assert weights.dtype == bias.dtype == np.float32

    image = _image("parrot.jpg")
    original = _interpreter(data, preserve=True)
    scores = _run(original, image)
    # The original's logits: the input of its final SOFTMAX, uint8.
    assert _ops(data)[-1] == "SOFTMAX"
    softmax_input = model.subgraphs[0].operators[-1].inputs[0]
    details = next(t for t in original.get_tensor_details() if t["index"] == softmax_input)
    scale, zero_point = details["quantization"]
    logits = (original.get_tensor(softmax_input).astype(np.float32) - zero_point) * scale

    cut = _interpreter(cut_at(model, embedding))
    (output,) = cut.get_output_details()
    assert output["name"] == embedding.name and tuple(output["shape"]) == embedding.shape
    features = (_run(cut, image).astype(np.float32) - embedding.zero_point) * embedding.scale
    ours = weights @ features.reshape(-1) + bias
    assert ours.argmax() == scores.argmax() == logits.argmax()
    np.testing.assert_allclose(ours, logits.reshape(-1), atol=scale)  # within one step of the uint8 logits


def test_cut_at_drops_the_head(imagenet):
    data, model, embedding = imagenet
    cut = cut_at(model, embedding)
    assert _ops(cut)[-1] == "AVERAGE_POOL_2D"
    assert len(data) - len(cut) > 1001 * 1280  # the conv classifier's uint8 weights are gone


def test_with_the_original_weights_the_new_head_classifies_as_the_original(imagenet):
    data, model, embedding = imagenet
    weights, bias = classifier_weights(model, embedding)
    head = _interpreter(with_head(model, embedding, weights, bias))
    (output,) = head.get_output_details()
    assert output["name"] == "probabilities" and output["dtype"] == np.float32
    assert list(output["shape"]) == [1, 1001]
    original = _interpreter(data)
    for name in ("parrot.jpg", "cat_720p.jpg", "grace_hopper.bmp"):
        image = _image(name)
        probabilities = _run(head, image)
        assert probabilities.argmax() == _run(original, image).argmax(), name
        assert probabilities.sum() == pytest.approx(1.0, abs=1e-4)


def test_a_small_head_is_a_small_file_and_drops_stale_metadata(imagenet):
    data, model, embedding = imagenet
    rng = np.random.default_rng(0)
    out = with_head(model, embedding, rng.normal(size=(3, 1280)), rng.normal(size=3))
    assert len(out) < len(data) - 1001 * 1280
    probabilities = _run(_interpreter(out), _image("parrot.jpg"))
    assert probabilities.shape == (1, 3) and probabilities.sum() == pytest.approx(1.0, abs=1e-5)
    assert _ops(out)[-3:] == ["DEQUANTIZE", "FULLY_CONNECTED", "SOFTMAX"]

    written, original = read_model(out), read_model(data)
    assert written.buffers[0].data is None or len(written.buffers[0].data) == 0  # buffer 0 stays the empty one
    metadata = {m.name: bytes(written.buffers[m.buffer].data) for m in written.metadata}
    # min_runtime_version stays; TFLite Metadata, which describes the old 1001-class output, goes.
    assert metadata == {m.name: bytes(original.buffers[m.buffer].data) for m in original.metadata
                        if m.name != b"TFLITE_METADATA"}
    assert b"min_runtime_version" in metadata
    for code in written.operatorCodes:
        assert code.deprecatedBuiltinCode == min(code.builtinCode, 127)


def test_with_head_leaves_the_callers_model_alone(imagenet):
    from ai_edge_litert.tools import flatbuffer_utils

    _, model, embedding = imagenet
    before = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
    with_head(model, embedding, np.ones((2, 1280)), np.zeros(2))
    cut_at(model, embedding)
    assert bytes(flatbuffer_utils.convert_object_to_bytearray(model)) == before


def test_signature_defs_follow_the_new_output(shared):
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = read_model(IMAGENET_MODEL.read_bytes())
    graph = model.subgraphs[0]
    signature = schema.SignatureDefT()
    signature.signatureKey = "serving_default"
    signature.inputs, signature.outputs = [schema.TensorMapT()], [schema.TensorMapT()]
    signature.inputs[0].name, signature.inputs[0].tensorIndex = "image", graph.inputs[0]
    signature.outputs[0].name, signature.outputs[0].tensorIndex = "scores", graph.outputs[0]
    model.signatureDefs = [signature]
    model = read_model(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))
    embedding = find_embedding(model)

    head = _interpreter(with_head(model, embedding, np.eye(4, 1280), np.zeros(4)))
    assert head.get_signature_list() == {"serving_default": {"inputs": ["image"], "outputs": ["probabilities"]}}
    result = head.get_signature_runner("serving_default")(image=_image("parrot.jpg"))
    assert result["probabilities"].shape == (1, 4)
    cut = _interpreter(cut_at(model, embedding))
    assert cut.get_signature_list()["serving_default"]["outputs"] == ["embedding"]


def test_edgetpu_backbone_stays_a_custom_op_before_the_cpu_head(extractor):
    data, model, embedding = extractor
    classes = 5
    out = with_head(model, embedding, np.random.default_rng(1).normal(size=(classes, 1024)), np.zeros(classes))
    assert _ops(out) == ["CUSTOM", "DEQUANTIZE", "FULLY_CONNECTED", "SOFTMAX"]  # not invoked: it needs the TPU
    written, original = read_model(out), read_model(data)
    assert written.operatorCodes[0].customCode == b"edgetpu-custom-op"
    custom, source = written.subgraphs[0].operators[0], original.subgraphs[0].operators[0]
    assert bytes(custom.customOptions) == bytes(source.customOptions)  # the compiled TPU program, untouched
    graph = written.subgraphs[0]
    (output,) = graph.outputs
    assert list(graph.tensors[output].shape) == [1, classes] and graph.tensors[output].name == b"probabilities"
    assert graph.tensors[output].type == 0  # float32
    assert cut_at(model, embedding)  # the whole extractor: its output already is the embedding


def test_edgetpu_extractor_has_no_classifier_weights(extractor):
    _, model, embedding = extractor
    with pytest.raises(ModelError, match="no classification layer reads"):
        classifier_weights(model, embedding)


def test_head_shape_must_fit_the_embedding(imagenet):
    _, model, embedding = imagenet
    with pytest.raises(ModelError, match=r"must be \[classes, 1280\]"):
        with_head(model, embedding, np.zeros((3, 1024)), np.zeros(3))
    with pytest.raises(ModelError, match=r"must be \[3\]"):
        with_head(model, embedding, np.zeros((3, 1280)), np.zeros(4))
    foreign = Embedding(index=1, name="x", shape=(1, 1280), dtype="float32", scale=None, zero_point=None,
                        width=1280, classifier=None, num_classes=None)
    with pytest.raises(ModelError, match="not tensor #1 of this model"):
        cut_at(model, foreign)


@pytest.mark.slow
def test_float_and_int8_keras_models(shared):
    """TensorFlow's own converter output: MEAN pooling, FULLY_CONNECTED, signature defs, dynamic batch;
    a float32 embedding gets no DEQUANTIZE, an int8 one a version 2 DEQUANTIZE."""
    tf = pytest.importorskip("tensorflow")
    keras = tf.keras
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(8, 3, activation="relu"),
                              keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4, activation="softmax")])
    x = np.random.default_rng(0).uniform(0, 1, (8, 16, 16, 3)).astype(np.float32)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    float_model = converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x[i:i + 1]] for i in range(len(x)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    int8_model = converter.convert()
    expected = model(x[:1]).numpy()

    for data, dtype, head_ops in [(float_model, "float32", ["MEAN", "FULLY_CONNECTED", "SOFTMAX"]),
                                  (int8_model, "int8", ["MEAN", "DEQUANTIZE", "FULLY_CONNECTED", "SOFTMAX"])]:
        graph = read_model(data)
        embedding = find_embedding(graph)
        assert (embedding.dtype, embedding.width, embedding.classifier) == (dtype, 8, "FULLY_CONNECTED")
        out = with_head(graph, embedding, *classifier_weights(graph, embedding))
        assert _ops(out)[-len(head_ops):] == head_ops
        if dtype == "int8":
            codes = {c.builtinCode: c.version for c in read_model(out).operatorCodes}
            assert codes[6] == 2  # DEQUANTIZE of int8
        head = _interpreter(out)
        assert list(head.get_signature_list().values())[0]["outputs"] == ["probabilities"]
        image = x[:1]
        if dtype == "int8":
            scale, zero_point = head.get_input_details()[0]["quantization"]
            image = np.clip(np.round(image / scale + zero_point), -128, 127).astype(np.int8)
        np.testing.assert_allclose(_run(head, image), expected, atol=0.01 if dtype == "int8" else 1e-5)


def test_at_size_runs_the_backbone_on_more_pixels(imagenet):
    """The shipped MobileNetV2 at 320 px: its global pool becomes a MEAN, every stored shape is the one the
    interpreter computes, its embedding keeps its shape, and with its own classifier it still knows its photos."""
    data, model, embedding = imagenet
    assert at_size(model, 224) is model
    resized = at_size(model, 320)
    graph = resized.subgraphs[0]
    assert list(graph.tensors[graph.inputs[0]].shape) == [1, 320, 320, 3]
    assert list(model.subgraphs[0].tensors[model.subgraphs[0].inputs[0]].shape) == [1, 224, 224, 3]  # untouched
    ops = _ops(cut_at(resized, find_embedding(resized)))
    assert ops[-1] == "MEAN" and "AVERAGE_POOL_2D" not in ops
    assert find_embedding(resized).shape == embedding.shape == (1, 1, 1, 1280)
    head = with_head(resized, find_embedding(resized), *classifier_weights(model, embedding))
    interpreter = _interpreter(head, preserve=True)
    stored = read_model(head).subgraphs[0].tensors
    for detail in interpreter.get_tensor_details():
        if detail["index"] < len(stored) and len(stored[detail["index"]].shape) == len(detail["shape"]):
            assert list(stored[detail["index"]].shape) == list(detail["shape"]), detail["name"]
    original = _interpreter(data)
    for name in ("parrot.jpg", "grace_hopper.bmp"):
        bgr = cv2.imread(str(IMAGES / name))
        large = cv2.resize(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), (320, 320), interpolation=cv2.INTER_AREA)[None]
        assert _run(interpreter, large).argmax() == _run(original, _image(name)).argmax(), name


def test_at_size_refuses_graphs_that_fix_their_size(extractor):
    """An Edge TPU graph is compiled for one size; a flatten before a dense layer would run and read the wrong
    values (its reshape fails only when invoked): both are one clear error."""
    with pytest.raises(ModelError, match="Edge TPU"):
        at_size(extractor[1], 320)
    tf = pytest.importorskip("tensorflow")
    keras = tf.keras
    flat = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3), keras.layers.Flatten(),
                             keras.layers.Dense(3)])
    with pytest.raises(ModelError, match="fix the size it was built for"):
        at_size(read_model(tf.lite.TFLiteConverter.from_keras_model(flat).convert()), 32)
    pooled = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3),
                               keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(3)])
    resized = at_size(read_model(tf.lite.TFLiteConverter.from_keras_model(pooled).convert()), 32)
    assert list(resized.subgraphs[0].tensors[resized.subgraphs[0].inputs[0]].shape) == [1, 32, 32, 3]


def test_imports_no_tensorflow():
    code = "import sys; sys.modules['tensorflow'] = None; import edge_app.runtime.graph"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr

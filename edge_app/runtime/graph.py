"""A classifier's TFLite graph, seen as a backbone that computes an embedding and a head that classifies it.

This module reads: :func:`find_embedding` finds the tensor that feeds the final classification layer,
:func:`classifier_weights` reads that layer, so a new head can keep (or be checked against) it.
:mod:`edge_app.runtime.rewrite` writes the new graphs.

Only numpy and ai-edge-litert's flatbuffer schema: no TensorFlow, so it runs on the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge_app.runtime.artifact import flatbuffer_part, is_tflite
from edge_app.runtime.errors import ModelError

try:
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils
except ImportError:  # tflite-runtime (32-bit Raspberry Pi OS) ships no flatbuffer schema
    schema = flatbuffer_utils = None

# Ops between the classification layer and the model's output that do not change what it classifies.
PASS_THROUGH = ("SOFTMAX", "RESHAPE", "SQUEEZE", "QUANTIZE", "DEQUANTIZE", "LOGISTIC")
SCORES = ("SOFTMAX", "LOGISTIC")  # an output after these is class scores, never an embedding
POOLING = ("AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN")
EMBEDDING_DTYPES = ("uint8", "int8", "float32")
OUTPUT_NAME = "probabilities"
CUT_OUTPUT_NAME = "embedding"

_DTYPES = {0: "float32", 1: "float16", 2: "int32", 3: "uint8", 4: "int64", 7: "int16", 9: "int8"}
_OP_NAMES = {} if schema is None else \
    {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}


@dataclass(frozen=True)
class Embedding:
    """The tensor a new head reads: one feature vector per image, and the classification layer that read it."""

    index: int  # tensor index in subgraph 0 of the original model
    name: str
    shape: tuple[int, ...]
    dtype: str  # "uint8" | "int8" | "float32"
    scale: float | None  # quantization of the tensor (None for float)
    zero_point: int | None
    width: int  # last dimension (e.g. 1280)
    classifier: str | None  # "CONV_2D" / "FULLY_CONNECTED"; None when the model's output is the embedding
    num_classes: int | None


def read_model(data: bytes, source: str = "the model"):
    """The model object (``ModelT``) of a ``.tflite`` file's bytes; an edgecls metadata archive after the
    flatbuffer is ignored. ``source`` names the file in error messages."""
    if flatbuffer_utils is None:
        raise ModelError("edgecls learn needs ai-edge-litert to edit the model graph (tflite-runtime has no "
                         "flatbuffer schema); pip install ai-edge-litert")
    flat = flatbuffer_part(bytes(data))
    if not is_tflite(flat):
        raise ModelError(f"{source} is not a TFLite model (no 'TFL3' flatbuffer identifier); pass a .tflite file")
    try:
        # Unlike convert_bytearray_to_object alone, this also resolves buffers stored by offset and turns index
        # arrays into lists we may edit.
        model = flatbuffer_utils.read_model_from_bytearray(flat)
    except Exception as e:  # a truncated or corrupt flatbuffer fails anywhere in the generated reader
        raise ModelError(f"{source} is not a readable TFLite flatbuffer ({type(e).__name__}: {e}); "
                         "is the file complete?") from e
    if not model.subgraphs or not model.subgraphs[0].outputs:
        raise ModelError(f"{source} has no graph outputs; pass a classifier or embedding model")
    return model


def find_embedding(model, name: str | None = None) -> Embedding:
    """The embedding a new head should read.

    ``name`` (``--embedding``): a tensor name or a decimal tensor index. Otherwise walk back from output 0
    through :data:`PASS_THROUGH` ops: the input of the first FULLY_CONNECTED (or CONV_2D on a 1x1 input) is the
    embedding; a model whose output is itself one feature vector is an embedding extractor.
    """
    graph = model.subgraphs[0]
    head, stop, scores = _walk_to_classifier(model)
    if name is not None:
        index = _tensor_index(model, name)
        if head is not None and graph.operators[head].inputs[0] == index:
            return _embedding(model, index, head)
        return _embedding(model, index, None)
    if head is not None:
        return _embedding(model, graph.operators[head].inputs[0], head)
    output = int(graph.outputs[0])
    if not scores and _is_vector(_shape(graph.tensors[output])):
        return _embedding(model, output, None)
    what = f"comes from {stop}" if stop else "is a graph input"
    raise ModelError(f"output 0 '{tensor_name(graph, output)}' {list(_shape(graph.tensors[output]))} {what}, not from a "
                     f"FULLY_CONNECTED or 1x1 CONV_2D classifier; pass --embedding NAME, e.g. {_candidates(model)}")


def classifier_weights(model, embedding: Embedding) -> tuple[np.ndarray, np.ndarray]:
    """The original classification layer as float32 ``weights [classes, width]`` and ``bias [classes]``:
    dequantized, so a head fitted in float can start from it or be compared with it."""
    graph = model.subgraphs[0]
    check_belongs(model, embedding)
    head, _, _ = _walk_to_classifier(model)
    if embedding.classifier is None or head is None or graph.operators[head].inputs[0] != embedding.index:
        raise ModelError(f"no classification layer reads '{embedding.name}' (an embedding model has none); "
                         "fit a new head instead of reading the old one")
    op = graph.operators[head]
    weights = constant(model, op.inputs[1])
    if weights.ndim < 2 or weights[0].size != embedding.width:
        raise ModelError(f"classifier weights '{tensor_name(graph, op.inputs[1])}' {list(weights.shape)} do not match "
                         f"the embedding width {embedding.width}; pass --embedding with the layer's input")
    weights = weights.reshape(weights.shape[0], embedding.width)  # CONV_2D 1x1: [C, 1, 1, D] -> [C, D]
    has_bias = len(op.inputs) > 2 and op.inputs[2] >= 0
    bias = constant(model, op.inputs[2]).reshape(-1) if has_bias else np.zeros(len(weights), np.float32)
    return weights, bias


# --- reading the graph ---

def op_type(model, op) -> str:
    code = model.operatorCodes[op.opcodeIndex]
    return _OP_NAMES.get(flatbuffer_utils.get_builtin_code_from_operator_code(code), "UNKNOWN")


def tensor_name(graph, index: int) -> str:
    name = graph.tensors[index].name
    return name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name or "")


def _shape(tensor) -> tuple[int, ...]:
    return tuple(int(d) for d in (tensor.shape if tensor.shape is not None else ()))


def _dtype(tensor) -> str:
    return _DTYPES.get(tensor.type, f"type {tensor.type}")


def _is_vector(shape: tuple[int, ...]) -> bool:
    """One feature vector: every dimension 1 but the last, as [1, 1, 1, 1024] or [1, 1024]."""
    return len(shape) >= 1 and shape[-1] > 1 and all(d == 1 for d in shape[:-1])


def tensor_producers(graph) -> dict[int, int]:
    return {int(t): i for i, op in enumerate(graph.operators) for t in op.outputs if t >= 0}


def _walk_to_classifier(model) -> tuple[int | None, str | None, bool]:
    """Walk back from output 0 through pass-through ops: (the classification op's index or None, the op type
    where the walk stopped or None at a graph input, whether class scores (SOFTMAX/LOGISTIC) were passed)."""
    graph = model.subgraphs[0]
    producers = tensor_producers(graph)
    tensor, scores = int(graph.outputs[0]), False
    for _ in range(len(graph.operators)):  # bounded: a malformed graph may have a cycle
        i = producers.get(tensor)
        if i is None:
            return None, None, scores
        op = graph.operators[i]
        kind = op_type(model, op)
        if kind == "FULLY_CONNECTED" or (kind == "CONV_2D" and _is_1x1_conv(graph, op)):
            return i, kind, scores
        if kind not in PASS_THROUGH:
            return None, f"CUSTOM '{_custom_code(model, op)}'" if kind == "CUSTOM" else kind, scores
        scores = scores or kind in SCORES
        tensor = int(op.inputs[0])
    return None, None, scores


def _custom_code(model, op) -> str:
    code = model.operatorCodes[op.opcodeIndex].customCode
    return code.decode("utf-8", "replace") if isinstance(code, bytes) else str(code)


def _is_1x1_conv(graph, op) -> bool:
    """A CONV_2D that is a fully connected layer: a 1x1 kernel on a 1x1 input (MobileNet's Conv2d_1c_1x1)."""
    source, kernel = _shape(graph.tensors[op.inputs[0]]), _shape(graph.tensors[op.inputs[1]])
    return len(source) == 4 and source[1:3] == (1, 1) and len(kernel) == 4 and kernel[1:3] == (1, 1)


def _candidates(model, limit: int = 5) -> str:
    """A few tensors worth passing as --embedding: the inputs of the last FULLY_CONNECTED and CONV_2D, pooling
    outputs (closest to the output first); the graph outputs when there are none."""
    graph = model.subgraphs[0]
    found: list[int] = []
    for kind in ("FULLY_CONNECTED", "CONV_2D"):
        last = next((op for op in reversed(graph.operators) if op_type(model, op) == kind), None)
        if last is not None:
            found.append(int(last.inputs[0]))
    found += [int(op.outputs[0]) for op in reversed(graph.operators) if op_type(model, op) in POOLING]
    found = list(dict.fromkeys(found or [int(t) for t in graph.outputs]))[:limit]
    return ", ".join(f"'{tensor_name(graph, t)}' (#{t} {list(_shape(graph.tensors[t]))})" for t in found)


def _tensor_index(model, name: str) -> int:
    """The tensor called ``name`` in subgraph 0, or the one at that decimal index."""
    graph = model.subgraphs[0]
    for index in range(len(graph.tensors)):
        if tensor_name(graph, index) == name:
            return index
    if name.strip().isdigit() and int(name) < len(graph.tensors):
        return int(name)
    raise ModelError(f"no tensor '{name}' in the model (nor an index below {len(graph.tensors)}); "
                     f"pass --embedding with one of: {_candidates(model)}")


def _embedding(model, index: int, head: int | None) -> Embedding:
    graph = model.subgraphs[0]
    tensor, name = graph.tensors[index], tensor_name(graph, index)
    shape, dtype = _shape(tensor), _dtype(tensor)
    if not _is_vector(shape):
        raise ModelError(f"tensor '{name}' has shape {list(shape)}; an embedding is one feature vector (every "
                         f"dimension 1 but the last): pass --embedding with a pooled tensor, e.g. {_candidates(model)}")
    if dtype not in EMBEDDING_DTYPES:
        raise ModelError(f"tensor '{name}' is {dtype}; an embedding must be uint8, int8 or float32: pass "
                         f"--embedding with another tensor, e.g. {_candidates(model)}")
    scale = zero_point = None
    if dtype != "float32":
        q = tensor.quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            raise ModelError(f"tensor '{name}' is {dtype} without quantization parameters, so it cannot be "
                             "dequantized; pass --embedding with a quantized or float tensor")
        scale = float(q.scale[0])
        zero_point = int(q.zeroPoint[0]) if q.zeroPoint is not None and len(q.zeroPoint) else 0
    classifier = num_classes = None
    if head is not None:
        op = graph.operators[head]
        classifier = op_type(model, op)
        num_classes = _shape(graph.tensors[op.inputs[1]])[0]
    return Embedding(index=int(index), name=name, shape=shape, dtype=dtype, scale=scale, zero_point=zero_point,
                     width=shape[-1], classifier=classifier, num_classes=num_classes)


def check_belongs(model, embedding: Embedding) -> None:
    graph = model.subgraphs[0]
    if not (0 <= embedding.index < len(graph.tensors)) or tensor_name(graph, embedding.index) != embedding.name \
            or _shape(graph.tensors[embedding.index]) != embedding.shape:
        raise ModelError(f"embedding '{embedding.name}' is not tensor #{embedding.index} of this model; "
                         "call find_embedding on the same model")


def constant(model, index: int) -> np.ndarray:
    """A constant tensor as float32, dequantized (per tensor, or per channel along ``quantizedDimension``).
    Weights stored as float16 or int8 behind a DEQUANTIZE op are followed to their stored value."""
    graph = model.subgraphs[0]
    tensor, name = graph.tensors[index], tensor_name(graph, index)
    buffer = model.buffers[tensor.buffer] if tensor.buffer < len(model.buffers) else None
    if buffer is None or buffer.data is None or len(buffer.data) == 0:
        producer = tensor_producers(graph).get(int(index))
        if producer is not None and op_type(model, graph.operators[producer]) == "DEQUANTIZE":
            return constant(model, graph.operators[producer].inputs[0])
        raise ModelError(f"classifier tensor '{name}' is computed when the model runs, not stored in the file; "
                         "fit a new head instead of reading the old one")
    dtype, shape = _dtype(tensor), _shape(tensor)
    if dtype not in ("float32", "float16", "uint8", "int8", "int16", "int32", "int64"):
        raise ModelError(f"classifier tensor '{name}' is stored as {dtype}, which edgecls cannot read; "
                         "fit a new head instead of reading the old one")
    values = np.frombuffer(bytes(buffer.data), np.dtype(dtype).newbyteorder("<")).reshape(shape)
    if dtype.startswith("float"):
        return values.astype(np.float32)
    q = tensor.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        raise ModelError(f"classifier tensor '{name}' is {dtype} without quantization parameters; "
                         "fit a new head instead of reading the old one")
    scale = np.asarray(q.scale, np.float64)
    zero_point = np.asarray(q.zeroPoint if q.zeroPoint is not None else [0], np.float64)
    if scale.size > 1:  # per channel: broadcast along the quantized dimension
        axis_shape = [1] * len(shape)
        axis_shape[q.quantizedDimension] = scale.size
        scale = scale.reshape(axis_shape)
        zero_point = np.broadcast_to(zero_point, scale.size).reshape(axis_shape)
    return ((values.astype(np.float64) - zero_point) * scale).astype(np.float32)

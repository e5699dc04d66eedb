"""New flatbuffers from a classifier's graph: the backbone alone, or the backbone with a new head.

``edgecls learn`` keeps the backbone byte for byte (a Coral ``edgetpu-custom-op`` included: it keeps running on
the TPU) and swaps the head for one fitted in numpy: :func:`cut_at` gives the backbone alone, to compute
embeddings; :func:`with_head` gives the backbone followed by a float32 FULLY_CONNECTED + SOFTMAX, run on the CPU.
:func:`with_knn` (the runtime's, at load) appends the ``unknown`` score to a model that carries a reference set.
:func:`at_size` gives the graph another input size (``learn --input-size``).
Only numpy and ai-edge-litert's flatbuffer schema: no TensorFlow, so it runs on the device.
"""

from __future__ import annotations

import copy

import numpy as np

from edge_app.runtime.errors import ModelError, first_line
from edge_app.runtime.graph import (
    CUT_OUTPUT_NAME,
    OUTPUT_NAME,
    Embedding,
    check_belongs,
    flatbuffer_utils,
    op_type,
    read_model,
    schema,
    tensor_name,
    tensor_producers,
)
from edge_app.runtime.interpreter import load_runtime, without_default_delegates

KNN_PREFIX = "novelty/"  # the names of the tensors with_knn adds
SIMILARITY_NAME = KNN_PREFIX + "similarity"  # its output


def with_head(model, embedding: Embedding, weights: np.ndarray, bias: np.ndarray,
              embedding_output: bool = False) -> bytes:
    """A new standalone flatbuffer: the graph up to ``embedding``, then (DEQUANTIZE ->) FULLY_CONNECTED ->
    SOFTMAX in float32, with the output ``probabilities [1, classes]`` (and, with ``embedding_output``, the
    embedding itself as a second output: what ``unknown`` reads, from the same invoke). The backbone's ops,
    tensors and weights are kept as they are; those only the old head used are dropped, so its weights leave
    the file."""
    weights = np.asarray(weights, np.float32)
    bias = np.asarray(bias, np.float32)
    if weights.ndim != 2 or weights.shape[1] != embedding.width or weights.shape[0] < 1:
        raise ModelError(f"head weights {list(weights.shape)} do not fit the embedding '{embedding.name}': "
                         f"they must be [classes, {embedding.width}]")
    if bias.shape != (weights.shape[0],):
        raise ModelError(f"head bias {list(bias.shape)} must be [{weights.shape[0]}], one per class")
    if not (np.isfinite(weights).all() and np.isfinite(bias).all()):
        raise ModelError("the head's weights or bias are not finite (NaN or inf); fit the head again")
    out, feature = _cut(model, embedding)
    graph, classes = out.subgraphs[0], weights.shape[0]
    empty = _empty_buffer(out)
    signature = [int(d) for d in graph.tensors[feature].shapeSignature or []]
    batch = signature[:1] if signature else None  # a dynamic batch (-1) stays dynamic
    x = feature
    if embedding.dtype != "float32":
        x = _add_tensor(graph, f"{embedding.name}/dequantized", embedding.shape, empty, signature or None)
        _add_op(out, "DEQUANTIZE", 1 if embedding.dtype == "uint8" else 2, [feature], [x])
    w = _add_tensor(graph, "head/weights", weights.shape, _add_buffer(out, weights))
    b = _add_tensor(graph, "head/bias", bias.shape, _add_buffer(out, bias))
    logits = _add_tensor(graph, "head/logits", (1, classes), empty, batch and batch + [classes])
    fc_options = schema.FullyConnectedOptionsT()
    fc_options.fusedActivationFunction = schema.ActivationFunctionType.NONE
    fc_options.keepNumDims = False  # [1, 1, 1, D] in -> [1, C] out
    _add_op(out, "FULLY_CONNECTED", 1, [x, w, b], [logits], schema.BuiltinOptions.FullyConnectedOptions, fc_options)
    probabilities = _add_tensor(graph, OUTPUT_NAME, (1, classes), empty, batch and batch + [classes])
    softmax_options = schema.SoftmaxOptionsT()
    softmax_options.beta = 1.0
    _add_op(out, "SOFTMAX", 1, [logits], [probabilities], schema.BuiltinOptions.SoftmaxOptions, softmax_options)
    _set_output(out, probabilities, OUTPUT_NAME)
    if embedding_output:
        _add_output(out, feature, embedding.name)
    _drop_stale_metadata(out)
    return _serialize(out)


def with_output(model, embedding: Embedding) -> bytes:
    """A new flatbuffer: the model as it is, with ``embedding`` as one more output (what ``unknown`` reads, from
    the same invoke as the scores)."""
    check_belongs(model, embedding)
    out = copy.deepcopy(model)
    _add_output(out, embedding.index, embedding.name)
    return _serialize(out)


def with_knn(data: bytes, output: str, rows: np.ndarray, k: int) -> bytes:
    """``data`` with the k-NN similarity computed inside the graph from its embedding output ``output``:
    (DEQUANTIZE ->) L2_NORMALIZATION -> FULLY_CONNECTED -> TOPK_V2 -> MEAN, one more output ``[1]``, the mean
    cosine of the ``k`` nearest of ``rows`` (unit float rows ``[M, D]``: the reference set).

    Why in the graph: the product with the reference set is the whole cost of ``unknown``, and in numpy (float32)
    it took 17 of 25 µs per frame beside a 210 µs invoke of the demo's 96 px int8 model; as a hybrid
    FULLY_CONNECTED (int8 weights, one scale per row; the float input quantized on the fly), XNNPACK does it in
    ~2 µs, and the top-k and mean come with it. Same score, up to the int8 rounding of the rows.
    """
    model = read_model(data)
    g = model.subgraphs[0]
    named = [int(t) for t in g.outputs if tensor_name(g, int(t)) == output]
    rows = np.asarray(rows, np.float32)
    if not named:
        raise ModelError(f"the model has no output named {output!r} to compute 'unknown' from")
    tensor = g.tensors[named[0]]
    if rows.ndim != 2 or not len(rows) or rows.shape[1] != int(np.prod(tensor.shape)) or not 1 <= k <= len(rows):
        raise ModelError(f"reference rows {list(rows.shape)} (k={k}) do not fit the embedding {list(tensor.shape)}")
    empty = _empty_buffer(model)
    x = named[0]
    if tensor.type != schema.TensorType.FLOAT32:
        x = _add_tensor(g, KNN_PREFIX + "embedding", tensor.shape, empty)
        _add_op(model, "DEQUANTIZE", 2 if tensor.type == schema.TensorType.INT8 else 1, [named[0]], [x])
    unit = _add_tensor(g, KNN_PREFIX + "unit", tensor.shape, empty)
    norm_options = schema.L2NormOptionsT()
    norm_options.fusedActivationFunction = schema.ActivationFunctionType.NONE
    _add_op(model, "L2_NORMALIZATION", 1, [x], [unit], schema.BuiltinOptions.L2NormOptions, norm_options)
    scale = np.maximum(np.abs(rows).max(axis=1), 1e-12) / 127.0
    weights = _add_tensor(g, "novelty/references", rows.shape,
                          _add_buffer(model, np.clip(np.round(rows / scale[:, None]), -127, 127), "i1"),
                          dtype=schema.TensorType.INT8, scale=scale)
    similarity = _add_tensor(g, "novelty/cosines", (1, len(rows)), empty)
    fc_options = schema.FullyConnectedOptionsT()
    fc_options.fusedActivationFunction = schema.ActivationFunctionType.NONE
    fc_options.keepNumDims = False
    fc_options.asymmetricQuantizeInputs = True
    # Version 12: int8 weights with one scale per output row under a float input (the hybrid kernel).
    _add_op(model, "FULLY_CONNECTED", 12, [unit, weights, -1], [similarity],
            schema.BuiltinOptions.FullyConnectedOptions, fc_options)
    top = _add_tensor(g, "novelty/nearest", (1, k), empty)
    top_index = _add_tensor(g, "novelty/nearest_index", (1, k), empty, dtype=schema.TensorType.INT32)
    k_tensor = _add_tensor(g, "novelty/k", (), _add_buffer(model, np.array(k), "<i4"), dtype=schema.TensorType.INT32)
    _add_op(model, "TOPK_V2", 1, [similarity, k_tensor], [top, top_index], schema.BuiltinOptions.TopKV2Options,
            schema.TopKV2OptionsT())
    axis = _add_tensor(g, "novelty/axis", (1,), _add_buffer(model, np.array([1]), "<i4"), dtype=schema.TensorType.INT32)
    mean = _add_tensor(g, SIMILARITY_NAME, (1,), empty)
    mean_options = schema.ReducerOptionsT()
    mean_options.keepDims = False
    _add_op(model, "MEAN", 1, [top, axis], [mean], schema.BuiltinOptions.ReducerOptions, mean_options)
    _add_output(model, mean, SIMILARITY_NAME)
    return _serialize(model)


def cut_at(model, embedding: Embedding) -> bytes:
    """A new standalone flatbuffer: the graph up to ``embedding``, whose one output is the embedding (the
    backbone alone, to compute embeddings for fitting a head)."""
    out, feature = _cut(model, embedding)
    _set_output(out, feature, CUT_OUTPUT_NAME)
    return _serialize(out)


def _cut(model, embedding: Embedding):
    """A deep copy of ``model`` whose subgraph 0 holds only what computes ``embedding``: the ops it depends on,
    their tensors, the graph inputs. Buffers only dropped tensors used are emptied; operator codes no op uses
    are dropped. Returns (model, the embedding's new tensor index); its outputs are set by the caller."""
    check_belongs(model, embedding)
    out = copy.deepcopy(model)  # never edit the caller's model
    graph = out.subgraphs[0]
    producers = tensor_producers(graph)
    needed, stack, seen = set(), [embedding.index], set()
    while stack:
        tensor = stack.pop()
        if tensor < 0 or tensor in seen:
            continue
        seen.add(tensor)
        op = producers.get(tensor)
        if op is not None and op not in needed:
            needed.add(op)
            stack.extend(int(t) for t in graph.operators[op].inputs)
    operators = [op for i, op in enumerate(graph.operators) if i in needed]
    kept = {int(t) for t in graph.inputs} | {embedding.index}
    for op in operators:
        kept.update(int(t) for t in [*op.inputs, *op.outputs, *(op.intermediates or [])] if t >= 0)
    new_index = {old: new for new, old in enumerate(sorted(kept))}

    def remap(indices) -> list[int]:
        return [new_index[int(t)] if t >= 0 else int(t) for t in indices]

    for op in operators:
        op.inputs, op.outputs = remap(op.inputs), remap(op.outputs)
        if op.intermediates is not None:
            op.intermediates = remap(op.intermediates)
    dropped = [t for i, t in enumerate(graph.tensors) if i not in new_index]
    graph.tensors = [graph.tensors[i] for i in sorted(kept)]
    graph.operators = operators
    graph.inputs = remap(graph.inputs)
    for signature in out.signatureDefs or []:
        if signature.subgraphIndex == 0:
            signature.inputs = [m for m in signature.inputs or [] if m.tensorIndex in new_index]
            for m in signature.inputs:
                m.tensorIndex = new_index[m.tensorIndex]
    # Empty (not remove) the buffers only dropped tensors used: other indices, metadata's included, stay valid.
    used = {int(t.buffer) for g in out.subgraphs for t in g.tensors} | {int(m.buffer) for m in out.metadata or []}
    for tensor in dropped:
        if tensor.buffer != 0 and int(tensor.buffer) not in used:
            out.buffers[tensor.buffer] = schema.BufferT()
    _drop_unused_operator_codes(out)
    return out, new_index[embedding.index]


def _drop_unused_operator_codes(model) -> None:
    used = sorted({op.opcodeIndex for g in model.subgraphs for op in g.operators})
    code_index = {old: new for new, old in enumerate(used)}
    model.operatorCodes = [model.operatorCodes[i] for i in used]
    for g in model.subgraphs:
        for op in g.operators:
            op.opcodeIndex = code_index[op.opcodeIndex]


def _empty_buffer(model) -> int:
    """The buffer tensors computed at run time point at: buffer 0, the schema's empty sentinel, when it is."""
    if model.buffers:
        first = model.buffers[0]
        if (first.data is None or len(first.data) == 0) and not first.size:
            return 0
    return _add_buffer(model, None)


def _add_buffer(model, values: np.ndarray | None, dtype: str = "<f4") -> int:
    buffer = schema.BufferT()
    if values is not None:
        buffer.data = np.frombuffer(np.ascontiguousarray(values, dtype).tobytes(), np.uint8)
    model.buffers = [*(model.buffers or []), buffer]
    return len(model.buffers) - 1


def _add_tensor(graph, name: str, shape, buffer: int, signature: list[int] | None = None,
                dtype: int | None = None, scale: np.ndarray | None = None) -> int:
    """A new tensor (float32 unless ``dtype``); ``scale``: symmetric quantization, one scale per row."""
    tensor = schema.TensorT()
    tensor.name, tensor.shape, tensor.buffer = name, [int(d) for d in shape], buffer
    tensor.type = schema.TensorType.FLOAT32 if dtype is None else dtype
    tensor.shapeSignature = signature or None
    if scale is not None:
        tensor.quantization = schema.QuantizationParametersT()
        tensor.quantization.scale = [float(s) for s in scale]
        tensor.quantization.zeroPoint = [0] * len(scale)
        tensor.quantization.quantizedDimension = 0
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _add_op(model, kind: str, version: int, inputs: list[int], outputs: list[int],
            options_type: int = 0, options=None) -> None:
    op = schema.OperatorT()
    op.opcodeIndex = _operator_code(model, getattr(schema.BuiltinOperator, kind), version)
    op.inputs, op.outputs = list(inputs), list(outputs)
    op.builtinOptionsType, op.builtinOptions = options_type, options
    model.subgraphs[0].operators.append(op)


def _operator_code(model, builtin: int, version: int) -> int:
    """The index of ``builtin``'s operator code, added when missing. One code serves every op of a type, so its
    version is the highest any of them needs."""
    for i, code in enumerate(model.operatorCodes):
        if not code.customCode and flatbuffer_utils.get_builtin_code_from_operator_code(code) == builtin:
            code.version = max(code.version, version)
            return i
    code = schema.OperatorCodeT()
    # Readers before TFLite 2.4 only know deprecatedBuiltinCode, capped at 127 (PLACEHOLDER_FOR_GREATER_OP_CODES).
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), version
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _set_output(model, index: int, name: str) -> None:
    """Make tensor ``index`` subgraph 0's only output, in the graph and in its signature defs."""
    model.subgraphs[0].outputs = [index]
    for signature in model.signatureDefs or []:
        if signature.subgraphIndex == 0:
            output = schema.TensorMapT()
            output.name, output.tensorIndex = name, index
            signature.outputs = [output]


def _add_output(model, index: int, name: str) -> None:
    """Make tensor ``index`` one more output of subgraph 0 (after the existing ones), in its signature defs too."""
    if index in list(model.subgraphs[0].outputs):
        return
    model.subgraphs[0].outputs = [*model.subgraphs[0].outputs, index]
    for signature in model.signatureDefs or []:
        if signature.subgraphIndex == 0:
            output = schema.TensorMapT()
            output.name, output.tensorIndex = name, index
            signature.outputs = [*(signature.outputs or []), output]


def _drop_stale_metadata(model) -> None:
    """TFLite Metadata describes the old output (its classes, its labels file): it would mislead other tools."""
    kept = [entry for entry in model.metadata or []
            if (entry.name.decode() if isinstance(entry.name, bytes) else entry.name) != "TFLITE_METADATA"]
    for entry in model.metadata or []:
        if entry not in kept:
            model.buffers[entry.buffer].data = None
    model.metadata = kept or None


def _serialize(model) -> bytes:
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def at_size(model, size: int):
    """A copy of ``model`` whose input is ``size`` × ``size`` pixels (a convolutional backbone computes the same
    features on more pixels: a field photo's lesions keep their detail). Global average pools become MEAN over
    height and width, which fits any size; every tensor's stored shape is then the one the interpreter computes.
    The model as it is when its input already has that size.

    Raises:
        ModelError: no single [1, H, W, C] input, a compiled Edge TPU graph, or a graph that fixes its size
            elsewhere (a flatten before a dense layer): it cannot take another size.
    """
    graph = model.subgraphs[0]
    if len(graph.inputs) != 1 or len(graph.tensors[graph.inputs[0]].shape) != 4:
        raise ModelError("only a model with one [1, height, width, channels] image input can change its input size")
    if list(graph.tensors[graph.inputs[0]].shape[1:3]) == [size, size]:
        return model
    if any(code.customCode for code in model.operatorCodes or []):
        raise ModelError("a model with custom ops (an Edge TPU graph) keeps the input size it was compiled for")
    out = copy.deepcopy(model)
    graph = out.subgraphs[0]
    for op in graph.operators:
        if _is_global_average_pool(out, op):
            axes = _add_tensor(graph, f"{tensor_name(graph, op.inputs[0])}/mean_axes", (2,),
                               _add_buffer(out, np.array([1, 2]), "<i4"), dtype=schema.TensorType.INT32)
            options = schema.ReducerOptionsT()
            options.keepDims = True
            op.opcodeIndex = _operator_code(out, schema.BuiltinOperator.MEAN, 2)
            op.inputs = [op.inputs[0], axes]
            op.builtinOptionsType, op.builtinOptions = schema.BuiltinOptions.ReducerOptions, options
    _drop_unused_operator_codes(out)
    source = graph.tensors[graph.inputs[0]]
    source.shape = [int(source.shape[0]), size, size, int(source.shape[3])]
    if source.shapeSignature is not None:
        source.shapeSignature = [int(source.shapeSignature[0]), size, size, int(source.shapeSignature[3])]
    # The interpreter's own kernels propagate the new shapes (a delegate would keep the stored ones).
    runtime = load_runtime()
    try:
        interpreter = runtime.interpreter_class(model_content=_serialize(out), num_threads=1,
                                                **without_default_delegates(runtime))
        interpreter.allocate_tensors()
        detail = interpreter.get_input_details()[0]  # shapes computed by ops only meet their readers in an invoke
        interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
        interpreter.invoke()
    except (ValueError, RuntimeError) as e:
        raise ModelError(f"the graph does not take a {size}×{size} input ({first_line(e)}): its layers fix the "
                         f"size it was built for") from e
    outputs = {int(i): list(graph.tensors[i].shape) for i in graph.outputs}
    for detail in interpreter.get_tensor_details():
        if detail["index"] >= len(graph.tensors):  # the interpreter's own scratch tensors
            continue
        tensor = graph.tensors[detail["index"]]
        if tensor.shape is not None and len(detail["shape"]) == len(tensor.shape):
            tensor.shape = [int(d) for d in detail["shape"]]
    changed = [tensor_name(graph, i) for i, shape in outputs.items() if list(graph.tensors[i].shape) != shape]
    if changed:  # a flatten before a dense layer: it would run, reading the wrong values
        raise ModelError(f"at {size}×{size} its output {changed[0]} changes shape: its layers fix the size it was "
                         f"built for")
    return out


def _is_global_average_pool(model, op) -> bool:
    """An AVERAGE_POOL_2D whose window is its whole input: a global pool, fixed to one input size."""
    if op_type(model, op) != "AVERAGE_POOL_2D":
        return False
    shape = list(model.subgraphs[0].tensors[op.inputs[0]].shape)
    options = op.builtinOptions
    return len(shape) == 4 and [options.filterHeight, options.filterWidth] == shape[1:3]

"""What is inside a converted model: ops by type, tensor types, and which ops XNNPACK left to slow kernels.

Reads the flatbuffer with the schema module LiteRT ships (no TensorFlow needed), and the
interpreter's node list after the default XNNPACK delegate has claimed what it can: every
``DELEGATE`` node is one partition; ops outside all partitions run on the reference kernels
and split the graph (each split costs a round-trip through the interpreter).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

# XNNPACK has no int8 kernel for these (LiteRT 2.x): each falls back and splits an int8 graph.
INT8_SLOW_OPS = ("HARD_SWISH",)


def _schema():
    try:
        from ai_edge_litert import schema_py_generated as schema
    except ImportError:  # older runtimes: TensorFlow's copy of the same generated module
        from tensorflow.lite.python import schema_py_generated as schema
    return schema


def _names(enum_class) -> dict[int, str]:
    return {v: k for k, v in vars(enum_class).items() if not k.startswith("_") and isinstance(v, int)}


@dataclass
class GraphFacts:
    """Facts about one ``.tflite`` flatbuffer; ``to_dict()`` goes into the report."""

    op_counts: dict[str, int]
    input_types: list[str]
    output_types: list[str]
    float_tensors: int
    full_integer: bool
    xnnpack_partitions: int | None = None
    cpu_fallback_ops: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return dict(vars(self))


def inspect_flatbuffer(data: bytes) -> GraphFacts:
    """Count ops by type and check tensor types of a TFLite flatbuffer (the first subgraph).

    Example:
        >>> facts = inspect_flatbuffer(Path("model_int8.tflite").read_bytes())
        >>> facts.op_counts["CONV_2D"], facts.full_integer
    """
    schema = _schema()
    model = schema.Model.GetRootAsModel(bytearray(data), 0)
    op_names, type_names = _names(schema.BuiltinOperator), _names(schema.TensorType)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # Codes above 127 live in BuiltinCode; older files keep small ones in DeprecatedBuiltinCode.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = op_names.get(builtin, str(builtin))
        if name == "CUSTOM" and code.CustomCode():
            name = f"CUSTOM:{code.CustomCode().decode()}"
        codes.append(name)
    graph = model.Subgraphs(0)
    counts = Counter(codes[graph.Operators(i).OpcodeIndex()] for i in range(graph.OperatorsLength()))
    types = [type_names.get(graph.Tensors(i).Type(), "?") for i in range(graph.TensorsLength())]
    floats = sum(t in ("FLOAT32", "FLOAT16") for t in types)
    facts = GraphFacts(
        op_counts=dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))),
        input_types=[types[graph.Inputs(i)] for i in range(graph.InputsLength())],
        output_types=[types[graph.Outputs(i)] for i in range(graph.OutputsLength())],
        float_tensors=floats,
        full_integer=floats == 0,
    )
    int8_ops = Counter()
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        first = op.Inputs(0) if op.InputsLength() else -1
        if first >= 0 and types[first] in ("INT8", "UINT8"):
            int8_ops[codes[op.OpcodeIndex()]] += 1
    for name in INT8_SLOW_OPS:
        if int8_ops.get(name):
            facts.warnings.append(
                f"{int8_ops[name]} int8 {name} op(s): XNNPACK has no int8 {name} kernel, so each runs on slow "
                "reference kernels and splits the graph; on CPU use fp32/fp16 for this model, or for int8 a "
                "backbone without hard-swish (MobileNetV2, MobileNetV3 minimalistic)")
    return facts


def xnnpack_partitions(interpreter) -> tuple[int, dict[str, int]]:
    """``(partitions, ops left out)`` after the default XNNPACK delegate ran on ``interpreter``.

    The node list holds the original ops plus one ``DELEGATE`` node per partition. An op belongs to
    a partition when it is reached walking back from the partition's outputs without crossing its
    inputs; the rest run on the CPU's reference kernels.
    """
    partitions, left, _ = _delegation(interpreter)
    return partitions, dict(Counter(node["op_name"] for node in left))


def splitting_ops(interpreter) -> dict[str, int]:
    """The ops left out of XNNPACK that sit *between* two delegated ops, by type: these split the graph.
    Ops left out at its edges (the input's QUANTIZE, an int8 SOFTMAX at the output) cost little."""
    _, left, graph = _delegation(interpreter)
    consumers: dict[int, list[int]] = {}
    for node in graph["nodes"]:
        for t in node["inputs"]:
            consumers.setdefault(int(t), []).append(node["index"])

    def reaches_delegated(start: dict, forward: bool) -> bool:
        stack, seen = [start["index"]], set()
        while stack:
            index = stack.pop()
            if index in seen:
                continue
            seen.add(index)
            if index != start["index"] and index in graph["delegated"]:
                return True
            node = graph["by_index"][index]
            if forward:
                stack.extend(c for t in node["outputs"] for c in consumers.get(int(t), []))
            else:
                stack.extend(graph["producer"][int(t)] for t in node["inputs"] if int(t) in graph["producer"])
        return False

    return dict(Counter(node["op_name"] for node in left
                        if reaches_delegated(node, forward=False) and reaches_delegated(node, forward=True)))


def _delegation(interpreter) -> tuple[int, list[dict], dict]:
    from edge_app.runtime.interpreter import delegated_nodes

    delegates, originals, delegated = delegated_nodes(list(interpreter._get_ops_details()))
    producer = {int(t): node["index"] for node in originals for t in node["outputs"]}
    left = [n for n in originals if n["index"] not in delegated]
    return len(delegates), left, {"nodes": originals, "producer": producer,
                                  "by_index": {n["index"]: n for n in originals}, "delegated": delegated}


def delegate_partitions(data: bytes, num_threads: int = 1) -> tuple[int, dict[str, int], dict[str, int]]:
    """``(partitions, ops left out, ops splitting the graph)`` of a flatbuffer on the runtime the device uses."""
    from edge_app.runtime import load_runtime
    from edge_app.runtime.interpreter import native_stderr_to_log

    with native_stderr_to_log():
        interpreter = load_runtime().interpreter_class(model_content=data, num_threads=num_threads)
        interpreter.allocate_tensors()
    return (*xnnpack_partitions(interpreter), splitting_ops(interpreter))


def size_breakdown(data: bytes) -> dict[str, int]:
    """Where a model's bytes go: weights by type, per-channel quantization parameters (float32 scales and
    int64 zero points, one each per output channel: the runtime insists on both), tensor names, the
    embedded metadata archive, and the rest (graph structure)."""
    from edge_app.runtime.artifact import flatbuffer_part

    schema = _schema()
    flatbuffer = flatbuffer_part(data)
    model = schema.Model.GetRootAsModel(bytearray(flatbuffer), 0)
    type_names = _names(schema.TensorType)
    out = {"total": len(data), "metadata_archive": len(data) - len(flatbuffer)}
    graph = model.Subgraphs(0)
    seen: set[int] = set()
    for i in range(graph.TensorsLength()):
        tensor = graph.Tensors(i)
        out["tensor_names"] = out.get("tensor_names", 0) + len(tensor.Name() or b"")
        quant = tensor.Quantization()
        if quant is not None:
            out["quantization_params"] = out.get("quantization_params", 0) + 4 * quant.ScaleLength() + \
                8 * quant.ZeroPointLength()
        buffer = tensor.Buffer()
        if buffer in seen:
            continue
        seen.add(buffer)
        size = model.Buffers(buffer).DataLength() or (model.Buffers(buffer).Size() if model.Buffers(buffer).Offset() else 0)
        if size:
            key = f"weights_{type_names.get(tensor.Type(), '?').lower()}"
            out[key] = out.get(key, 0) + size
    out["structure"] = out["total"] - sum(v for k, v in out.items() if k != "total")
    return out


def strip_tensor_names(data: bytes) -> bytes:
    """The flatbuffer without the names of its inner tensors (TensorFlow's long op-path strings: 5% of a small
    int8 model). Input and output names and the signatures stay; kernels and delegates never read names."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(data))
    for graph in model.subgraphs:
        keep = set(graph.inputs.tolist() if hasattr(graph.inputs, "tolist") else graph.inputs) | \
            set(graph.outputs.tolist() if hasattr(graph.outputs, "tolist") else graph.outputs)
        for index, tensor in enumerate(graph.tensors):
            if index not in keep:
                tensor.name = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))

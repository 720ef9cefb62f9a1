"""Check an ONNX graph against TensorRT 10's published ONNX operator support, without TensorRT.

The operator table (``trt_ops_data.TABLE``, TensorRT version in ``trt_ops_data.TENSORRT_VERSION``) says which
operators and data types the TensorRT ONNX parser takes; the rules below encode the restrictions that an
exported graph can actually violate (constant ``axes``, ``TopK`` sorted with K < 3840, ``ScatterND`` without
reduction, single-output ``LayerNormalization``/``MaxPool``, ``Resize`` modes, ``If`` branch outputs with
equal rank and distinct names, opset range). Subgraphs (``If``/``Loop``/``Scan`` bodies) are checked too.

Usage (library): ``problems, warnings = check_model(onnx.load(path))``; empty ``problems`` = within the table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from eartalking.export import trt_ops_data

_TYPE_NAMES = {
    onnx.TensorProto.FLOAT: "FP32", onnx.TensorProto.FLOAT16: "FP16", onnx.TensorProto.BFLOAT16: "BF16",
    onnx.TensorProto.INT32: "INT32", onnx.TensorProto.INT64: "INT64", onnx.TensorProto.UINT8: "UINT8",
    onnx.TensorProto.BOOL: "BOOL", onnx.TensorProto.DOUBLE: "DOUBLE", onnx.TensorProto.INT8: "INT8",
}
#: operators whose listed types apply to their output, not to an input
_OUTPUT_TYPED = {"Constant", "ConstantOfShape", "RandomUniform", "RandomNormal"}
#: operators whose data input (the one the listed types describe) is not input 0
_DATA_INPUT = {"Where": 1}
#: (operator, input index) that TensorRT requires to be a build-time constant (for the opsets where it is an input)
_CONST_INPUTS = {
    "Slice": (3,), "Squeeze": (1,), "Unsqueeze": (1,), "Pad": (3,), "CumSum": (1,), "OneHot": (1,),
    "TopK": (1,), "Dropout": (2,),
    **{op: (1,) for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean",
                           "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")},
}
_RESIZE_COORD = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_NEAREST = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}
TOPK_MAX = 3840
#: operators TensorRT accepts but whose semantics differ (seed ignored): a warning, never silent
_SEED_IGNORED = {"RandomUniform", "RandomNormal", "RandomUniformLike", "RandomNormalLike"}


@dataclass(frozen=True)
class OpSupport:
    supported: bool
    types: frozenset[str]


def load_table() -> dict[str, OpSupport]:
    """Parse ``trt_ops_data.TABLE`` into operator -> support."""
    table = {}
    for line in trt_ops_data.TABLE.strip().splitlines():
        op, yn, types = line.split()
        table[op] = OpSupport(yn == "Y", frozenset() if types == "-" else frozenset(types.split(",")))
    return table


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


class _Scope:
    """Element types and constant values visible in a graph (outer scopes included)."""

    def __init__(self, graph: onnx.GraphProto, outer: _Scope | None = None):
        self.types: dict[str, int] = dict(outer.types) if outer else {}
        self.consts: dict[str, np.ndarray] = dict(outer.consts) if outer else {}
        for vi in (*graph.input, *graph.output, *graph.value_info):
            if vi.type.HasField("tensor_type"):
                self.types[vi.name] = vi.type.tensor_type.elem_type
        for init in graph.initializer:
            self.types[init.name] = init.data_type
            self.consts[init.name] = numpy_helper.to_array(init)
        for node in graph.node:
            if node.op_type == "Constant" and _attr(node, "value") is not None:
                self.consts[node.output[0]] = numpy_helper.to_array(_attr(node, "value"))


def check_model(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """Return (problems, warnings) for ``model``; a problem is something TensorRT 10's parser rejects."""
    problems: list[str] = []
    warnings: list[str] = []
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx") and not trt_ops_data.MIN_OPSET <= imp.version <= trt_ops_data.MAX_OPSET:
            problems.append(f"opset {imp.version} outside TensorRT {trt_ops_data.TENSORRT_VERSION}'s range "
                            f"{trt_ops_data.MIN_OPSET}..{trt_ops_data.MAX_OPSET}")
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception as e:  # noqa: BLE001 - shape inference failure is itself reported
        problems.append(f"shape inference failed: {e}")
        inferred = model
    _check_graph(inferred.graph, None, load_table(), problems, warnings, "")
    return problems, warnings


def used_ops(model: onnx.ModelProto) -> list[str]:
    """Sorted operator types used anywhere in the model (subgraphs included)."""
    ops: set[str] = set()

    def walk(g: onnx.GraphProto) -> None:
        for n in g.node:
            ops.add(n.op_type)
            for a in n.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    walk(a.g)
                for sg in a.graphs:
                    walk(sg)

    walk(model.graph)
    return sorted(ops)


def _check_graph(graph, outer, table, problems, warnings, where) -> None:
    scope = _Scope(graph, outer)
    for node in graph.node:
        at = f"{where}{node.op_type} node {node.name or node.output[0]!r}"
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{at}: custom domain {node.domain!r} is not in TensorRT's ONNX table")
            continue
        sup = table.get(node.op_type)
        if sup is None or not sup.supported:
            problems.append(f"{at}: operator not supported by TensorRT {trt_ops_data.TENSORRT_VERSION}")
            continue
        _check_types(node, sup, scope, at, problems)
        _check_rules(node, scope, at, problems, warnings)
        for a in node.attribute:
            subs = ([a.g] if a.type == onnx.AttributeProto.GRAPH else []) + list(a.graphs)
            for sg in subs:
                _check_graph(sg, scope, table, problems, warnings, f"{at}/{a.name}: ")


def _check_types(node, sup: OpSupport, scope: _Scope, at: str, problems: list[str]) -> None:
    if node.op_type in _OUTPUT_TYPED:
        name = node.output[0]
    else:
        idx = _DATA_INPUT.get(node.op_type, 0)
        name = node.input[idx] if len(node.input) > idx else ""
    et = scope.types.get(name)
    if not name or et is None or et == onnx.TensorProto.UNDEFINED:
        return
    tn = _TYPE_NAMES.get(et, onnx.TensorProto.DataType.Name(et))
    if tn not in sup.types:
        problems.append(f"{at}: data type {tn} of {name!r} not among TensorRT's {sorted(sup.types)}")


def _const(scope: _Scope, node, idx: int):
    if len(node.input) <= idx or not node.input[idx]:
        return "absent"
    return scope.consts.get(node.input[idx])


def _check_rules(node, scope: _Scope, at: str, problems: list[str], warnings: list[str]) -> None:
    op = node.op_type
    for idx in _CONST_INPUTS.get(op, ()):
        if _const(scope, node, idx) is None:
            problems.append(f"{at}: input {idx} ({node.input[idx]!r}) must be a build-time constant")
    if op == "TopK":
        if _attr(node, "sorted", 1) != 1:
            problems.append(f"{at}: TopK needs sorted=1")
        k = _const(scope, node, 1)
        if isinstance(k, np.ndarray) and int(k.reshape(-1)[0]) >= TOPK_MAX:
            problems.append(f"{at}: TopK K={int(k.reshape(-1)[0])} must be < {TOPK_MAX}")
    elif op == "ScatterND" and _attr(node, "reduction", b"none") not in (b"none", "none"):
        problems.append(f"{at}: ScatterND reduction is not supported")
    elif op in ("LayerNormalization", "MaxPool") and any(node.output[1:]):
        problems.append(f"{at}: only the first output is supported")
    elif op == "Dropout":
        t = _const(scope, node, 2)
        if isinstance(t, np.ndarray) and bool(t.reshape(-1)[0]):
            problems.append(f"{at}: Dropout training_mode must be False")
    elif op == "Resize":
        mode = _attr(node, "mode", b"nearest").decode()
        coord = _attr(node, "coordinate_transformation_mode", b"half_pixel").decode()
        nearest = _attr(node, "nearest_mode", b"round_prefer_floor").decode()
        if mode not in ("nearest", "linear"):
            problems.append(f"{at}: Resize mode {mode!r} unsupported")
        if coord not in _RESIZE_COORD:
            problems.append(f"{at}: Resize coordinate_transformation_mode {coord!r} unsupported")
        if mode == "nearest" and nearest not in _RESIZE_NEAREST:
            problems.append(f"{at}: Resize nearest_mode {nearest!r} unsupported")
        if _attr(node, "antialias", 0):
            problems.append(f"{at}: Resize antialias unsupported")
    elif op in ("AveragePool", "MaxPool", "LpPool") and any(d != 1 for d in _attr(node, "dilations", []) or []):
        problems.append(f"{at}: pooling dilations must be all ones")
    elif op == "If":
        then_g, else_g = _attr(node, "then_branch"), _attr(node, "else_branch")
        if len(then_g.output) != len(else_g.output):
            problems.append(f"{at}: branches have different numbers of outputs")
        for a, b in zip(then_g.output, else_g.output, strict=False):
            if a.name == b.name:
                problems.append(f"{at}: branch outputs must have different names ({a.name!r})")
            ra = len(a.type.tensor_type.shape.dim) if a.type.tensor_type.HasField("shape") else None
            rb = len(b.type.tensor_type.shape.dim) if b.type.tensor_type.HasField("shape") else None
            if ra is not None and rb is not None and ra != rb:
                problems.append(f"{at}: branch outputs {a.name!r}/{b.name!r} differ in rank ({ra} vs {rb})")
    elif op == "Transpose":
        perm = _attr(node, "perm")
        if perm is not None and sorted(perm) != list(range(len(perm))):
            problems.append(f"{at}: Transpose perm {list(perm)} is not a permutation of 0..{len(perm) - 1}")
    if op in _SEED_IGNORED:
        warnings.append(f"{at}: TensorRT ignores random seeds; pass seed-derived noise as an input instead")

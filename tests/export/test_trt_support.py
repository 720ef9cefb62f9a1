"""The TensorRT operator-table checker flags what TensorRT 10's ONNX parser rejects (small hand-made graphs)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from eartalking.export import trt_ops_data
from eartalking.export.trt_support import check_model, load_table


def _model(nodes, inputs, outputs, inits=(), opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
I = helper.make_tensor_value_info("i", TensorProto.INT64, None)


def test_table_records_version_and_known_facts():
    t = load_table()
    assert trt_ops_data.TENSORRT_VERSION.startswith("10.")
    assert not t["STFT"].supported and not t["DFT"].supported and not t["Multinomial"].supported
    assert t["If"].supported and "BOOL" in t["Where"].types and "INT64" in t["ConstantOfShape"].types


def test_supported_graph_passes():
    m = _model([helper.make_node("Relu", ["x"], ["y"])], [X], [Y])
    assert check_model(m) == ([], [])


def test_unsupported_operator_and_opset():
    frame = numpy_helper.from_array(np.array(8, np.int64), "len")
    m = _model([helper.make_node("HannWindow", ["len"], ["y"])], [], [Y], [frame])
    problems, _ = check_model(m)
    assert any("HannWindow" in p and "not supported" in p for p in problems)
    problems, _ = check_model(_model([helper.make_node("Relu", ["x"], ["y"])], [X], [Y], opset=21))
    assert any("opset 21" in p for p in problems)


def test_topk_rules():
    k = numpy_helper.from_array(np.array([4000], np.int64), "k")
    m = _model([helper.make_node("TopK", ["x", "k"], ["y", "i"], sorted=0)], [X], [Y, I], [k])
    problems, _ = check_model(m)
    assert any("sorted=1" in p for p in problems) and any("< 3840" in p for p in problems)


def test_non_constant_axes_and_bad_types():
    axes = helper.make_tensor_value_info("axes", TensorProto.INT64, [1])
    m = _model([helper.make_node("ReduceSum", ["x", "axes"], ["y"])], [X, axes], [Y])
    problems, _ = check_model(m)
    assert any("build-time constant" in p for p in problems)
    xb = helper.make_tensor_value_info("x", TensorProto.BOOL, [2])
    yb = helper.make_tensor_value_info("y", TensorProto.BOOL, None)
    m = _model([helper.make_node("Add", ["x", "x"], ["y"])], [xb], [yb])
    problems, _ = check_model(m)
    assert any("data type BOOL" in p for p in problems)


def test_if_branch_output_names_and_random_seed_warning():
    c = helper.make_tensor_value_info("c", TensorProto.BOOL, [])
    out = helper.make_tensor_value_info("same", TensorProto.FLOAT, [2, 8])
    then_g = helper.make_graph([helper.make_node("Identity", ["x"], ["same"])], "t", [], [out])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["same"])], "e", [], [out])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)
    problems, _ = check_model(_model([node], [X, c], [Y]))
    assert any("different names" in p for p in problems)
    m = _model([helper.make_node("RandomUniform", [], ["y"], shape=[2], seed=1.0)], [], [Y])
    _, warnings = check_model(m)
    assert any("seed" in w for w in warnings)

"""Join the exported sink graph and step-core graph into ``step_decoder`` with an ONNX ``If`` on ``start``.

``torch.onnx.export`` (tracing) cannot emit data-dependent control flow, so the two parts are exported
separately and composed here with ``onnx.helper``:

    cond      = ReduceMax(start) > 0                                  (scalar bool: any row starts)
    start5    = Reshape(Cast(start, bool), [-1,1,1,1,1])
    If cond   then: <sink graph nodes, names prefixed "sink/"> ; sink_* = Where(start5, new_sink_*, in_sink_*)
                                                               window_* = Where(start5, 0, in_window_*)
              else: sink_*/window_* = Identity(in_*)      (ordinary frames pay nothing)
    <step core nodes> consume the If outputs (sink_k_eff, sink_v_eff, window_k_eff, window_v_eff)
    out_sink_k/v = Identity(sink_*_eff)

The then-branch refers to outer-scope values (``ref_tokens``, ``in_*``, ``start5`` and the initializers),
which ONNX and TensorRT allow. Initializers of both parts are merged and de-duplicated by content (the
sink and the step share the decoder's weights), with deterministic names, so re-export is byte-identical.
"""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from eartalking.export.specs import GraphSpec
from eartalking.export.wrappers import EFFECTIVE, SINK_OUTPUTS

PREFIX = "sink/"


def _init_key(t: TensorProto) -> str:
    a = numpy_helper.to_array(t)
    return hashlib.sha256(f"{a.dtype}{a.shape}".encode() + a.tobytes()).hexdigest()


def _value_info(name: str, like: onnx.ValueInfoProto) -> onnx.ValueInfoProto:
    vi = onnx.ValueInfoProto()
    vi.CopyFrom(like)
    vi.name = name
    return vi


def compose_step(core: onnx.ModelProto, sink: onnx.ModelProto, spec: GraphSpec) -> onnx.ModelProto:
    """Return the ``step_decoder`` model: core + sink joined by an If on ``start`` (see module docstring)."""
    cg, sg = core.graph, sink.graph
    spec_in = {t.name: t for t in spec.inputs}
    for name in ("start", "ref_tokens", *EFFECTIVE):
        if name not in spec_in:
            raise ValueError(f"spec {spec.name} lacks input {name!r} needed by the start If")

    # ---- initializers: core first, then sink ones not already present (by content) ----
    inits: list[TensorProto] = list(cg.initializer)
    by_key = {_init_key(t): t.name for t in inits}
    sink_rename: dict[str, str] = {}
    for t in sg.initializer:
        key = _init_key(t)
        if key in by_key:
            sink_rename[t.name] = by_key[key]
        else:
            new = TensorProto()
            new.CopyFrom(t)
            new.name = PREFIX + t.name
            inits.append(new)
            by_key[key] = new.name
            sink_rename[t.name] = new.name

    # ---- the then-branch: sink nodes renamed, then the Where blends ----
    sink_inputs = {i.name for i in sg.input}
    def rn(name: str) -> str:
        if not name or name in sink_inputs:
            return name  # empty optional input, or an outer-scope graph input (ref_tokens)
        return sink_rename.get(name, PREFIX + name)

    then_nodes = []
    for n in sg.node:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        m.name = PREFIX + (n.name or n.output[0])
        m.input[:] = [rn(x) for x in n.input]
        m.output[:] = [rn(x) for x in n.output]
        then_nodes.append(m)
    sink_out = {o.name: o for o in sg.output}
    then_outputs, else_nodes, else_outputs = [], [], []
    for state, eff in EFFECTIVE.items():
        base = state[3:]  # sink_k, ...
        like = next(i for i in cg.input if i.name == eff)
        if base.startswith("sink_"):
            new_name = rn(SINK_OUTPUTS[0] if base == "sink_k" else SINK_OUTPUTS[1])
            if (SINK_OUTPUTS[0] if base == "sink_k" else SINK_OUTPUTS[1]) not in sink_out:
                raise ValueError(f"sink graph lacks output for {base}")
            then_nodes.append(helper.make_node("Where", ["start5", new_name, state], [f"{base}_then"],
                                               name=f"start/{base}_then"))
        else:
            zero = f"start/zero_{base}"
            inits.append(numpy_helper.from_array(np.zeros((), np.float32), zero))
            then_nodes.append(helper.make_node("Where", ["start5", zero, state], [f"{base}_then"],
                                               name=f"start/{base}_then"))
        then_outputs.append(_value_info(f"{base}_then", like))
        else_nodes.append(helper.make_node("Identity", [state], [f"{base}_else"], name=f"start/{base}_else"))
        else_outputs.append(_value_info(f"{base}_else", like))
    then_g = helper.make_graph(then_nodes, "start_then", [], then_outputs)
    else_g = helper.make_graph(else_nodes, "start_else", [], else_outputs)

    # ---- outer graph ----
    inits.append(numpy_helper.from_array(np.array([-1, 1, 1, 1, 1], np.int64), "start/shape5"))
    inits.append(numpy_helper.from_array(np.zeros((), np.int32), "start/zero_i32"))
    pre = [
        helper.make_node("ReduceMax", ["start"], ["start/any"], name="start/any", keepdims=0),
        helper.make_node("Greater", ["start/any", "start/zero_i32"], ["start/cond"], name="start/cond"),
        helper.make_node("Cast", ["start"], ["start/bool"], name="start/bool", to=TensorProto.BOOL),
        helper.make_node("Reshape", ["start/bool", "start/shape5"], ["start5"], name="start/start5"),
        helper.make_node("If", ["start/cond"], list(EFFECTIVE.values()), name="start/if",
                         then_branch=then_g, else_branch=else_g),
    ]
    post = [helper.make_node("Identity", ["sink_k_eff"], ["out_sink_k"], name="state/out_sink_k"),
            helper.make_node("Identity", ["sink_v_eff"], ["out_sink_v"], name="state/out_sink_v")]
    core_in = {i.name: i for i in cg.input}
    core_out = {o.name: o for o in cg.output}
    inputs = []
    for t in spec.inputs:
        src = core_in.get(t.name) or core_in[EFFECTIVE[t.name]]
        inputs.append(_value_info(t.name, src))
    outputs = []
    for t in spec.outputs:
        if t.name in core_out:
            outputs.append(core_out[t.name])
        else:  # out_sink_k / out_sink_v: same type as the state input
            outputs.append(_value_info(t.name, core_in[EFFECTIVE["in_" + t.name[4:]]]))
    graph = helper.make_graph(pre + list(cg.node) + post, spec.name, inputs, outputs, initializer=inits)
    model = helper.make_model(graph, opset_imports=list(core.opset_import), ir_version=core.ir_version,
                              producer_name=core.producer_name, producer_version=core.producer_version)
    return model

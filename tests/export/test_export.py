"""Export of test_small (random weights): files, manifest, metadata, determinism, TensorRT table."""

from __future__ import annotations

import hashlib
import json

import onnx

from eartalking.export import specs as S
from eartalking.export import trt_support
from eartalking.export.onnx import MANIFEST, export_all, weights_sha256


def test_four_graphs_and_manifest(exported):
    _, cfg, out, manifest = exported
    on_disk = json.loads((out / MANIFEST).read_text())
    assert on_disk == json.loads(json.dumps(manifest))
    assert list(manifest["graphs"]) == list(S.GRAPH_NAMES)
    assert manifest["opset"] == S.OPSET == 17
    for name, spec in S.graph_specs(cfg).items():
        e = manifest["graphs"][name]
        data = (out / f"{name}.onnx").read_bytes()
        assert e["sha256"] == hashlib.sha256(data).hexdigest() and e["bytes"] == len(data)
        m = onnx.load_from_string(data)
        assert m.graph.name == name
        assert [i.name for i in m.graph.input] == [t.name for t in spec.inputs] == [t["name"] for t in e["inputs"]]
        assert [o.name for o in m.graph.output] == [t.name for t in spec.outputs]
        assert {o.version for o in m.opset_import if o.domain in ("", "ai.onnx")} == {17}
        assert e["trt_profiles"] == S.trt_profiles(spec)


def test_metadata_and_manifest_agree_with_config(exported):
    model, cfg, out, manifest = exported
    dims = {k: str(v) for k, v in cfg.dims().items()}
    assert {k: str(v) for k, v in manifest["dims"].items()} == dims
    assert manifest["source"]["weights_sha256"] == weights_sha256(model)
    for name, spec in S.graph_specs(cfg).items():
        meta = {p.key: p.value for p in onnx.load(str(out / f"{name}.onnx")).metadata_props}
        assert {k: meta[k] for k in dims} == dims
        assert meta["graph"] == name and meta["opset"] == "17"
        assert json.loads(meta["outputs"]) == [t.to_dict() for t in spec.outputs]
        assert meta["state"] == ",".join(spec.state)
    step = {p.key: p.value for p in onnx.load(str(out / "step_decoder.onnx")).metadata_props}
    assert int(step["window_len"]) == cfg.decoder.window * cfg.block_len
    assert int(step["lookahead_frames"]) == cfg.audio.lookahead_frames


def test_step_decoder_has_start_if_with_sink_in_then_branch(exported):
    _, cfg, out, _ = exported
    m = onnx.load(str(out / "step_decoder.onnx"))
    ifs = [n for n in m.graph.node if n.op_type == "If"]
    assert len(ifs) == 1
    branches = {a.name: a.g for a in ifs[0].attribute}
    assert len(branches["then_branch"].node) > 20  # the sink computation
    assert {n.op_type for n in branches["else_branch"].node} == {"Identity"}  # ordinary frames pay nothing
    # the decoder weights are shared by the sink and the step, not stored twice
    names = [i.name for i in m.graph.initializer]
    assert len(names) == len(set(names))
    assert not any(n.startswith("sink/") and "weight" in n for n in names)


def test_reexport_is_byte_identical(exported, tmp_path):
    model, cfg, _, manifest = exported
    again = export_all(model, cfg, tmp_path, {"preset": "test_small", "random_seed": 0})
    shas = {k: v["sha256"] for k, v in manifest["graphs"].items()}
    assert {k: v["sha256"] for k, v in again["graphs"].items()} == shas


def test_every_graph_within_tensorrt_table(exported):
    _, _, out, manifest = exported
    for name in manifest["graphs"]:
        problems, warnings = trt_support.check_model(onnx.load(str(out / f"{name}.onnx")))
        assert problems == [] and warnings == [], name

"""Renderer and sequence store, without a server: both flavours parse as Triton ModelConfig; placeholders, reaping."""

from __future__ import annotations

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from eartalking.cli import UserError
from eartalking.triton_repo.render import MODELS, Options, fill, read_graphs, render, render_configs
from eartalking.triton_repo.sequences import SequenceError, SequenceStore


def _parse(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())


@pytest.mark.parametrize("flavor", ["cpu", "gpu"])
def test_every_config_parses_and_dims_come_from_metadata(th_onnx, flavor):
    graphs = read_graphs(th_onnx)
    meta = graphs["step_decoder"]
    cfgs = {m: _parse(t) for m, t in render_configs(graphs, Options(flavor, idle_s=3.5)).items()}
    assert set(cfgs) == set(MODELS)
    step = cfgs["step_decoder"]
    assert step.sequence_batching.max_sequence_idle_microseconds == 3_500_000
    assert step.sequence_batching.oldest.max_candidate_sequences == 16
    assert step.max_batch_size == meta["axes"]["batch"][2]
    assert {i.name for i in step.input} == {"ref_tokens", "audio_tokens", "controls", "control_mask", "temperature",
                                            "gumbel"}
    gumbel = next(i for i in step.input if i.name == "gumbel")
    assert list(gumbel.dims) == [meta["tokens_per_frame"], meta["codebook_size"]]
    ens = cfgs["talking_head_step"]
    assert ens.platform == "ensemble" and not ens.HasField("sequence_batching")
    assert [s.model_name for s in ens.ensemble_scheduling.step] == [
        "tokenizer_encoder", "audio_encoder", "step_decoder", "tokenizer_decoder"]
    pcm = next(i for i in ens.input if i.name == "pcm")
    assert list(pcm.dims) == [meta["audio_left_context"] + meta["samples_per_frame"]]
    th = cfgs["talking_head"]
    assert th.model_transaction_policy.decoupled and th.HasField("sequence_batching")
    # gpu: BLS to the graph models (Triton batches the decoder across sessions); cpu: in process by default
    assert th.parameters["graph_calls"].string_value == ("bls" if flavor == "gpu" else "process")
    other = "process" if flavor == "gpu" else "bls"
    th2 = _parse(render_configs(graphs, Options(flavor, talking_head_graphs=other))["talking_head"])
    assert th2.parameters["graph_calls"].string_value == other
    with pytest.raises(UserError, match="talking-head-graphs"):
        render_configs(graphs, Options(flavor, talking_head_graphs="remote"))
    if flavor == "gpu":
        assert step.platform == "tensorrt_plan"
        states = {(s.input_name, s.output_name) for s in step.sequence_batching.state}
        assert states == {(f"in_{n}", f"out_{n}") for n in meta["state"].split(",")}
        ctl = step.sequence_batching.control_input
        assert [c.name for c in ctl] == ["start"]
        assert cfgs["audio_encoder"].HasField("dynamic_batching")
        assert cfgs["tokenizer_decoder"].instance_group[0].kind == mc.ModelInstanceGroup.KIND_GPU
    else:
        assert step.backend == "python" and len(step.sequence_batching.state) == 0
        assert {c.name for c in step.sequence_batching.control_input} == {"START", "END", "READY", "CORRID"}
        # reference features never enter the CPU tokenizer_decoder per frame: it is seeded from the portrait
        assert {i.name for i in cfgs["tokenizer_decoder"].input} == {"tokens", "image"}


def test_leftover_placeholder_is_an_error():
    assert fill("a {{x}} b", {"x": 3}, "t") == "a 3 b"
    with pytest.raises(UserError, match="nope"):
        fill("a {{ nope }}", {"x": 1}, "t.tmpl")


def test_render_writes_repository_and_refuses_foreign_folder(th_onnx, tmp_path):
    out = tmp_path / "repo"
    notes = render(th_onnx, out, Options("gpu"), engines=tmp_path / "no_engines")
    assert any("step_decoder.plan" in n for n in notes)
    assert (out / "step_decoder" / "config.pbtxt").is_file() and (out / "talking_head" / "1" / "model.py").is_file()
    render(th_onnx, out, Options("cpu"))  # re-render over its own output
    assert (out / "step_decoder" / "1" / "graphs" / "step_decoder.onnx").is_file()
    other = tmp_path / "precious"
    other.mkdir()
    (other / "notes.txt").write_text("x")
    with pytest.raises(UserError, match="not a model repository"):
        render(th_onnx, other, Options("cpu"))


def test_sequence_store_end_reap_and_errors():
    now = [0.0]
    freed, counts = [], []
    st = SequenceStore(2.0, on_free=freed.append, on_change=counts.append, clock=lambda: now[0])
    st.start(1, "a")
    st.start(2, "b")
    now[0] = 1.5
    assert st.get(1) == "a"  # touching 1 keeps it alive
    now[0] = 3.0
    assert st.reap() == [2] and freed == ["b"] and len(st) == 1
    assert st.end(1) and freed == ["b", "a"] and counts[-1] == 0
    with pytest.raises(SequenceError, match="START"):
        st.get(2)
    assert not st.end(2)


def test_every_model_and_template_folder_is_a_listed_package():
    """pyproject.toml lists each data folder under triton_repo/models and triton_repo/templates as a package:
    an unlisted one still ships through package-data, but setuptools prints a 30-line warning for it on every
    `make setup`. A new model folder must be added there."""
    tomllib = pytest.importorskip("tomllib", reason="tomllib is in the standard library from Python 3.11")
    root = Path(__file__).resolve().parents[2]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {f"eartalking.triton_repo.{kind}.{d.name}" for kind in ("models", "templates")
               for d in (root / "triton_repo" / kind).iterdir() if d.is_dir() and not d.name.startswith("__")}
    assert len(folders) >= 11 and folders <= listed, sorted(folders - listed)

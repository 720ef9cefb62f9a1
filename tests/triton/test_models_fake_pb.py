"""The Triton model.py adapters under a fake ``triton_python_backend_utils`` (no server; seconds).

Checks the glue the real-server tests cannot isolate: READY = 0 padding requests are answered and skipped,
errors become error responses, the last response of a request carries the final flag, and the frames equal
the embedded runtime's.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types

import numpy as np
import pytest
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as mc

from eartalking.triton_repo import adapter
from eartalking.triton_repo.render import Options, render

FINAL = 1


class FakeTensor:
    def __init__(self, name: str, array: np.ndarray) -> None:
        self.name, self.array = name, np.asarray(array)

    def __dlpack__(self, *a, **k):
        return self.array.__dlpack__(*a, **k)

    def __dlpack_device__(self):
        return self.array.__dlpack_device__()


class FakeResponse:
    def __init__(self, output_tensors=(), error=None) -> None:
        self.outputs = {t.name: t.array for t in output_tensors}
        self.error = error


class FakeSender:
    def __init__(self) -> None:
        self.sent: list[tuple[FakeResponse | None, int]] = []

    def send(self, response=None, flags=0) -> None:
        self.sent.append((response, flags))


class FakeRequest:
    def __init__(self, corrid: int, start=False, end=False, ready=True, **inputs) -> None:
        self.inputs = {"START": np.array([[int(start)]], np.int32), "END": np.array([[int(end)]], np.int32),
                       "READY": np.array([[int(ready)]], np.int32), "CORRID": np.array([[corrid]], np.uint64)}
        self.inputs |= {k: np.asarray(v)[None] for k, v in inputs.items()}
        self.sender = FakeSender()

    def get_response_sender(self):
        return self.sender


def _fake_pb() -> types.ModuleType:
    pb = types.ModuleType("triton_python_backend_utils")
    pb.TRITONSERVER_RESPONSE_COMPLETE_FINAL = FINAL
    pb.InferenceResponse = FakeResponse
    pb.TritonError = lambda msg: msg
    pb.get_input_tensor_by_name = lambda r, n: FakeTensor(n, r.inputs[n]) if n in r.inputs else None
    return pb


@pytest.fixture()
def fake(monkeypatch, th_onnx, tmp_path):
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", _fake_pb())
    monkeypatch.setattr(adapter, "tensor", lambda pb, name, a: FakeTensor(name, np.array(a)))
    monkeypatch.setattr(adapter, "quiet_stub_stderr", lambda: None)
    repo = tmp_path / "repo"
    render(th_onnx, repo, Options("cpu", idle_s=30))

    def load(model: str):
        spec = importlib.util.spec_from_file_location(f"fake_{model}", repo / model / "1" / "model.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        cfg = text_format.Parse((repo / model / "config.pbtxt").read_text(), mc.ModelConfig())
        m = mod.TritonPythonModel()
        m.initialize({"model_config": json.dumps(json_format.MessageToDict(cfg, preserving_proto_field_name=True)),
                      "model_repository": str(repo / model), "model_version": "1"})
        return m

    return load


def test_talking_head_adapter_streams_embedded_frames(fake, th_engine, portrait):
    from eartalking.runtime.session import Session

    rng = np.random.default_rng(5)
    pcm = (rng.standard_normal(640 * 5) * 4000).astype(np.int16)
    s = Session(th_engine, portrait, crop_only=True)
    ref = s.push_audio(pcm) + s.end()
    m = fake("talking_head")
    reqs = [FakeRequest(9, start=True, portrait=portrait, crop_only=np.array([True])),
            FakeRequest(0, ready=False),  # padding
            FakeRequest(9, pcm=pcm), FakeRequest(9, end=True), FakeRequest(10, pcm=pcm)]  # 10: never started
    for r in reqs:
        m.execute([r])
    assert reqs[1].sender.sent == [(None, FINAL)]
    sent = [x for r in reqs[:4] for x in r.sender.sent]
    for r in reqs:  # exactly one final flag per request, on its last response
        assert [f for _, f in r.sender.sent].count(FINAL) == 1 and r.sender.sent[-1][1] == FINAL
    frames = [resp.outputs for resp, _ in sent if resp is not None and "frame_index" in resp.outputs]
    assert [int(f["frame_index"][0, 0]) for f in frames] == [f.index for f in ref] == list(range(5))
    for got, want in zip(frames, ref, strict=True):
        np.testing.assert_array_equal(got["tokens"][0], want.tokens)
        np.testing.assert_array_equal(got["image"][0], want.image)
    err = reqs[4].sender.sent[0][0].error
    assert "sequence 10" in err and "START" in err
    m.finalize()


def test_step_decoder_adapter_keeps_sequences_apart_and_skips_padding(fake, th_engine):
    m = fake("step_decoder")
    rng = np.random.default_rng(6)
    N, K, C = th_engine.N, th_engine.K, len(th_engine.control_names)
    ref = {c: rng.integers(0, K, N).astype(np.int32) for c in (1, 2)}
    audio = rng.standard_normal((3, 2, 1, 4, 32)).astype(np.float32)

    def feeds(c, t):
        return dict(ref_tokens=ref[c], audio_tokens=audio[t, c - 1], controls=np.zeros(C, np.float32),
                    control_mask=np.zeros(C, np.float32), temperature=np.zeros(1, np.float32),
                    gumbel=np.zeros((N, K), np.float32))

    got = {1: [], 2: []}
    for t in range(3):  # both sequences batched in one execute, with a padding request between them
        rs = [FakeRequest(1, start=t == 0, **feeds(1, t)), FakeRequest(0, ready=False, **feeds(1, t)),
              FakeRequest(2, start=t == 0, end=t == 2, **feeds(2, t))]
        out = m.execute(rs)
        assert out[1].outputs == {} and out[1].error is None
        for c, resp in ((1, out[0]), (2, out[2])):
            got[c].append(resp.outputs["tokens"][0])
    assert len(m.model.store) == 1  # 2 ended, 1 still live
    for c in (1, 2):  # reference: the graph stepped alone with explicit state
        st = th_engine.initial_state(ref[c][None])
        for t in range(3):
            f = {k: v[None] for k, v in feeds(c, t).items()}
            f["audio_tokens"] = f["audio_tokens"][:, 0]
            f |= {"start": np.array([[int(t == 0)]], np.int32)} | {f"in_{k}": v for k, v in st.items()}
            res = th_engine.backend.run("step_decoder", f)
            st = {k: res[f"out_{k}"] for k in st}
            np.testing.assert_array_equal(got[c][t], res["tokens"][0])
    m.finalize()

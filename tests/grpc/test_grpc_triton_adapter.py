"""The Triton runner of `eartalking serve --backend triton` against a fake tritonclient stream that plays the
``talking_head`` contract (runtime/triton_session.py) over the fake session: requests carry the portrait,
options, controls and PCM as specified, and frames/final flag/errors come back into the inbox in order.
(A real ``talking_head`` model is tested by the Triton issue's tests.)"""

from __future__ import annotations

import json
import queue
from types import SimpleNamespace

import numpy as np
import pytest
import tritonclient.grpc as tc
from conftest import speech_like
from eartalking.runtime import triton_session as ts
from fake_backend import FakeSession
from helpers import decode


def _value(inp: tc.InferInput) -> np.ndarray:
    raw = inp._raw_content
    if inp.datatype() == "BYTES":
        n = int.from_bytes(raw[:4], "little")
        return np.array([raw[4 : 4 + n]], dtype=object)
    dt = {"UINT8": np.uint8, "INT16": np.int16}[inp.datatype()]
    return np.frombuffer(raw, dtype=dt).reshape(inp.shape())


class _Result:
    def __init__(self, outputs: dict, final: bool) -> None:
        self.outputs = outputs
        params = {"triton_final_response": SimpleNamespace(bool_param=True)} if final else {}
        self.resp = SimpleNamespace(parameters=params)

    def as_numpy(self, name):
        return self.outputs.get(name)

    def get_response(self):
        return self.resp


class FakeTriton:
    """Plays talking_head: a FakeSession per sequence id."""

    sessions: dict[int, FakeSession] = {}
    requests: list[dict] = []

    def __init__(self, url: str) -> None:
        self.cb = None

    def start_stream(self, callback):
        self.cb = callback

    def async_stream_infer(self, model, inputs, sequence_id, sequence_start, sequence_end,
                           enable_empty_final_response):
        vals = {i.name(): _value(i) for i in inputs}
        FakeTriton.requests.append({"names": sorted(vals), "start": sequence_start, "end": sequence_end})
        if sequence_start:
            opts = json.loads(vals["options"][0])
            if vals["portrait"].std() < 1:
                self.cb(None, tc.InferenceServerException("invalid: no face found in the portrait"))
                return
            FakeTriton.sessions[sequence_id] = FakeSession(vals["portrait"], opts["crop_only"], opts["temperature"],
                                                           opts["seed"])
        s = FakeTriton.sessions[sequence_id]
        for frame, values in json.loads(vals["controls"][0]) if "controls" in vals else []:
            s.set_controls(frame=frame, **values)
        frames = s.push_audio(vals["pcm"]) + (s.end() if sequence_end else [])
        for f in frames:
            self.cb(_Result({"image": f.image, "frame": np.array([f.index], np.int32),
                             "controls": np.array([json.dumps(f.controls).encode()], dtype=object)}, False), None)
        if sequence_end:
            self.cb(_Result({}, True), None)

    def stop_stream(self, cancel_requests=False):
        pass

    def close(self):
        pass


@pytest.fixture
def backend(monkeypatch):
    monkeypatch.setattr(tc, "InferenceServerClient", FakeTriton)
    b = object.__new__(ts.TritonBackend)
    b.url, b.model = "fake:8001", "talking_head"
    b._info = {"model_id": "fake", "image_size": 32, "fps": 25.0, "sample_rate": 16000, "lookahead_frames": 2}
    FakeTriton.requests.clear()
    return b


def test_triton_runner_streams_the_same_frames(backend, portrait_png):
    img = decode(portrait_png)
    pcm = speech_like(0.9, seed=31)
    inbox: queue.Queue = queue.Queue()
    runner = backend.make_runner(backend.open(img, crop_only=True, temperature=0.0, seed=3), inbox)
    runner.set_controls(4, {"blink": 1.0})
    for i in range(0, len(pcm), 700):
        runner.feed(pcm[i : i + 700], 0.0)
    runner.end(0.0)
    runner.close()
    got, done = [], False
    while not inbox.empty():
        item = inbox.get()
        if item[0] == "frames":
            got += item[1]
        done = done or item[0] == "done"
    ref = FakeSession(img, True, 0.0, 3)
    ref.set_controls(frame=4, blink=1.0)
    want = [f for i in range(0, len(pcm), 700) for f in ref.push_audio(pcm[i : i + 700])] + ref.end()
    assert done and [f.index for f in got] == list(range(len(want)))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.image, w.image)
        assert g.controls == w.controls
    reqs = FakeTriton.requests
    assert reqs[0]["start"] and {"portrait", "options", "controls", "pcm"} <= set(reqs[0]["names"])
    assert not any(r["start"] for r in reqs[1:]) and reqs[-1]["end"] and sum(r["end"] for r in reqs) == 1


def test_triton_invalid_error_maps_to_value_error(backend):
    inbox: queue.Queue = queue.Queue()
    runner = backend.make_runner(backend.open(np.full((40, 40, 3), 7, np.uint8), crop_only=False,
                                              temperature=0.0, seed=0), inbox)
    assert runner.session.header == {"width": 40, "height": 40}
    runner.feed(np.zeros(640, np.int16), 0.0)
    kind, err = inbox.get_nowait()
    assert kind == "error" and isinstance(err, ValueError) and "no face" in str(err)

"""`eartalking serve --backend triton`: the adapter against a fake StreamClient that plays the fake session
(fast, always runs), and the whole path through a real tritonserver (marked triton): same frames as embedded."""

from __future__ import annotations

import queue
import threading
import time
from collections import defaultdict

import numpy as np
import pytest
from conftest import ServerProc, speech_like
from fake_backend import FakeSession
from helpers import decode, reference_frames

from eartalking.client import TalkingHeadClient
from eartalking.runtime import triton_session as ts
from eartalking.triton_repo.client import Event


class FakeStreamClient:
    """StreamClient's interface (open/push/end/queues/lock) over FakeSessions, one per sequence."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.queues: dict[str, queue.Queue] = defaultdict(queue.Queue)  # as StreamClient's
        self.sessions: dict[int, FakeSession] = {}
        self.calls: list[tuple] = []

    def _q(self, seq):
        with self.lock:
            return self.queues[str(seq)]

    def open(self, seq, portrait, crop_only=False, temperature=0.0, seed=0):
        self.calls.append(("open", seq))
        try:
            self.sessions[seq] = FakeSession(portrait, crop_only, temperature, seed)
        except ValueError as e:
            self._q(seq).put(Event("error", time.perf_counter(), message=str(e)))

    def push(self, seq, pcm, events=None):
        self.calls.append(("push", seq, len(pcm), events))
        s = self.sessions[seq]
        for frame, values in events or []:
            s.set_controls(frame=frame, **values)
        for f in s.push_audio(pcm):
            self._q(seq).put(Event("frame", time.perf_counter(), index=f.index, image=f.image))

    def end(self, seq):
        self.calls.append(("end", seq))
        s = self.sessions.pop(seq, None)
        if s is not None:
            for f in s.end():
                self._q(seq).put(Event("frame", time.perf_counter(), index=f.index, image=f.image))
            self._q(seq).put(Event("end", time.perf_counter(), status={"frames": s.next}))


@pytest.fixture
def backend():
    b = object.__new__(ts.TritonBackend)
    b._info = {"model_id": "fake", "image_size": 32, "fps": 25.0, "sample_rate": 16000, "lookahead_frames": 2}
    b._lock, b._sc = threading.Lock(), FakeStreamClient()
    return b


def _drain(inbox: queue.Queue, timeout: float = 5.0):
    got, t_end = [], time.monotonic() + timeout
    while time.monotonic() < t_end:
        try:
            item = inbox.get(timeout=0.1)
        except queue.Empty:
            continue
        if item[0] == "frames":
            got += item[1]
        else:
            return got, item
    raise AssertionError("no end from the runner")


def test_triton_runner_gives_the_sessions_frames_and_controls(backend, portrait_png):
    img, pcm = decode(portrait_png), speech_like(0.9, seed=31)
    inbox: queue.Queue = queue.Queue()
    runner = backend.make_runner(backend.open(img, crop_only=True, temperature=0.0, seed=3), inbox)
    runner.set_controls(4, {"blink": 1.0})
    for i in range(0, len(pcm), 700):
        runner.feed(pcm[i : i + 700], 0.0)
    runner.end(0.0)
    got, last = _drain(inbox)
    runner.close()
    assert last == ("done",)
    want = reference_frames(FakeSession(img, True, 0.0, 3), pcm, [{"frame": 4, "blink": 1.0}], chunk=700)
    assert [f.index for f in got] == [f.index for f in want]
    for g, w in zip(got, want, strict=True):
        np.testing.assert_array_equal(g.image, w.image)
        assert g.controls == w.controls
    pushes = [c for c in backend._sc.calls if c[0] == "push"]
    assert pushes[0][3] == [(4, {"blink": 1.0})] and all(c[3] is None for c in pushes[1:])
    assert str(runner.seq) not in backend._sc.queues  # freed


def test_triton_error_and_cancel(backend):
    inbox: queue.Queue = queue.Queue()
    r = backend.make_runner(backend.open(np.full((40, 40, 3), 7, np.uint8), crop_only=False, temperature=0.0,
                                         seed=0), inbox)
    _, (kind, err) = _drain(inbox)
    assert kind == "error" and isinstance(err, ValueError) and "no face" in str(err)
    r.close()
    r2 = backend.make_runner(backend.open(np.random.default_rng(0).integers(0, 255, (40, 40, 3), np.uint8),
                                          crop_only=False, temperature=0.0, seed=0), inbox)
    r2.feed(speech_like(0.3, seed=1), 0.0)
    r2.close()  # cancel: END is sent so the model frees the sequence
    assert backend._sc.calls[-1] == ("end", r2.seq)


@pytest.mark.triton
def test_grpc_over_triton_equals_embedded(request, portrait_png):
    """eartalking serve --backend triton over a real tritonserver (tests/triton's rendered CPU repository)."""
    pytest.importorskip("eartalking.triton_repo.serve")
    from eartalking.runtime.session import Engine, Session
    from eartalking.triton_repo import serve
    from eartalking.triton_repo.render import Options, render

    try:
        serve.wheel_root()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"tritonserver is not installed: {e}")
    export = request.getfixturevalue("real_export")
    repo = request.getfixturevalue("tmp_path") / "repo"
    render(export, repo, Options("cpu", idle_s=5.0, max_sequences=8, queue_delay_us=200))
    with serve.TritonServer(repo, log_path=repo.parent / "tritonserver.log") as triton:
        srv = ServerProc(["--backend", "triton", "--triton-url", triton.grpc_url, "--onnx", str(export)],
                         timeout=120)
        try:
            pcm = speech_like(1.3, seed=41)
            controls = [{"frame": 6, "blink": 1.0}, {"time": 0.5, "yaw": -8.0}]
            with TalkingHeadClient(srv.target) as c:
                got = list(c.stream(portrait_png, pcm, controls, chunk_ms=30))
            want = reference_frames(Session(Engine(str(export), load_faces=False), decode(portrait_png)), pcm,
                                    controls)
            assert [f.index for f in got] == [f.index for f in want]
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g.image, w.image, err_msg=f"frame {g.index}")
                assert g.controls == w.controls
            assert srv.wait_live(0) == 0
        finally:
            srv.stop()

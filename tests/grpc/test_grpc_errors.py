"""Every bad input gets its precise gRPC status and a message naming the problem, and the server keeps
serving; cancelled, idle and over-limit streams free their session (live-sessions gauge back to 0)."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from conftest import speech_like, start_fake
from helpers import audio, config, control, end, png, raw_call

from eartalking.client import TalkingHeadClient
from eartalking.client._stubs import pb2

INVALID = grpc.StatusCode.INVALID_ARGUMENT
PCM = speech_like(1.0, seed=21)


def _noise_png(h: int, w: int, seed: int) -> bytes:
    return png(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


CASES = {
    "no config first": (lambda p: [audio(PCM[:640])], "first request must be a SessionConfig"),
    "empty first request": (lambda p: [pb2.SessionRequest()], "first request must be a SessionConfig"),
    "config twice": (lambda p: [config(p), config(p)], "SessionConfig sent twice"),
    "portrait not an image": (lambda p: [config(b"GIF89a? no, just text")], "not a readable image"),
    "portrait empty": (lambda p: [config(b"")], "portrait is empty"),
    "portrait too many bytes": (lambda p: [config(b"\x89PNG" + bytes(600_000))], "the limit is 600000 bytes"),
    "portrait too many pixels": (lambda p: [config(png(np.full((800, 800, 3), 90, np.uint8)))],
                                 "the limit is 600000 pixels"),
    "no face found": (lambda p: [config(png(np.full((64, 64, 3), 128, np.uint8)))], "no face"),
    "wrong sample rate": (lambda p: [config(p, sample_rate=44100)], "sample_rate 44100 Hz is not supported"),
    "wrong audio encoding": (lambda p: [config(p, audio_encoding=7)], "PCM16 mono only"),
    "bad temperature": (lambda p: [config(p, temperature=-1.0)], "temperature"),
    "odd byte count": (lambda p: [config(p), audio(PCM[:100].tobytes() + b"\x01")], "even number of bytes"),
    "message too large": (lambda p: [config(p), audio(bytes(70_000))],
                          "the limit is 65536 bytes"),
    "control for a past frame": (lambda p: [config(p), audio(PCM), control(frame=3, signal=4, value=1.0)],
                                 "control blink for frame 3 arrived after"),
    "control by time for a past frame": (lambda p: [config(p), audio(PCM), control(time_s=0.1, signal=1, value=5)],
                                         "for frame 2 arrived after"),
    "unknown signal": (lambda p: [config(p), control(frame=5, signal=9, value=0.5)], "unknown control signal 9"),
    "unspecified signal": (lambda p: [config(p), control(frame=5, signal=0, value=0.5)], "unknown control signal 0"),
    "value out of range": (lambda p: [config(p), control(frame=5, signal=4, value=1.5)], "blink=1.5 is out of range"),
    "initial control out of range": (
        lambda p: [pb2.SessionRequest(config=pb2.SessionConfig(
            portrait=p, initial_controls=[pb2.ControlValue(signal=1, value=45.0)]))], "yaw=45 is out of range"),
    "control without target": (lambda p: [config(p), control(signal=4, value=1.0)], "needs a target"),
    "empty request": (lambda p: [config(p), pb2.SessionRequest()], "empty SessionRequest"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_gets_invalid_argument(fake_server, portrait_png, case):
    make, message = CASES[case]
    reqs = make(portrait_png) + [audio(PCM[:6400]), end()]
    _, code, details = raw_call(fake_server.target, reqs)
    assert code == INVALID, (code, details)
    assert message in details


def test_server_keeps_serving_after_bad_inputs(fake_server, portrait_png):
    for make, _ in CASES.values():
        raw_call(fake_server.target, make(portrait_png) + [end()])
    with TalkingHeadClient(fake_server.target) as c:
        assert len(list(c.stream(portrait_png, PCM))) == 25
    assert fake_server.wait_live(0) == 0
    assert fake_server.metric("eartalking_sessions_total", '{code="INVALID_ARGUMENT"}') >= len(CASES)


def test_idle_stream_gets_deadline_exceeded_and_is_freed(fake_server, portrait_png):
    hold = threading.Event()
    t0 = time.monotonic()
    resps, code, details = raw_call(fake_server.target, [config(portrait_png), audio(PCM[:3200])], hold=hold)
    hold.set()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED and "idle" in details
    assert 2.4 < time.monotonic() - t0 < 10.0  # the fake server's --idle-timeout is 2.5 s
    assert resps[0].WhichOneof("response") == "header"
    assert fake_server.wait_live(0) == 0


def test_client_cancel_frees_the_session(fake_server, portrait_png):
    before = fake_server.metric("eartalking_sessions_total", '{code="CANCELLED"}')
    with TalkingHeadClient(fake_server.target) as c:
        s = c.stream(portrait_png, speech_like(4.0, seed=22), realtime=True)
        got = [next(s) for _ in range(3)]
        assert fake_server.wait_live(1) == 1
        s.cancel()
        with pytest.raises(grpc.RpcError) as e:
            list(s)
        assert e.value.code() == grpc.StatusCode.CANCELLED
    assert [f.index for f in got] == [0, 1, 2]
    assert fake_server.wait_live(0) == 0
    t_end = time.monotonic() + 5
    while fake_server.metric("eartalking_sessions_total", '{code="CANCELLED"}') < before + 1:
        assert time.monotonic() < t_end, "cancelled session was not counted"
        time.sleep(0.05)


def test_max_sessions_gives_resource_exhausted(portrait_png):
    srv = start_fake(["--max-sessions", "2"])
    try:
        holds = [threading.Event() for _ in range(2)]
        threads = [threading.Thread(target=raw_call, args=(srv.target, [config(portrait_png)]), kwargs={"hold": h})
                   for h in holds]
        for t in threads:
            t.start()
        assert srv.wait_live(2) == 2
        _, code, details = raw_call(srv.target, [config(portrait_png), end()])
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "limit of 2 live sessions" in details
        for h in holds:
            h.set()
        for t in threads:
            t.join(10)
        assert srv.wait_live(0) == 0
        _, code, _ = raw_call(srv.target, [config(portrait_png), audio(PCM), end()])
        assert code == grpc.StatusCode.OK
    finally:
        srv.stop()


@pytest.mark.parametrize("which", ["real_server", "real_server_direct"])
def test_real_runtime_errors_and_cancel(request, portrait_png, which):
    """The embedded runtime (batched and per-stream): no face, a late control, and a cancel free the session."""
    srv = request.getfixturevalue(which)
    _, code, details = raw_call(srv.target, [config(png(np.full((96, 96, 3), 128, np.uint8))), end()])
    assert code == INVALID and "portrait rejected" in details, details
    _, code, details = raw_call(srv.target, [config(portrait_png), audio(PCM), control(frame=2, signal=5, value=0.5),
                                             end()])
    assert code == INVALID and "for frame 2 arrived after" in details
    with TalkingHeadClient(srv.target) as c:
        s = c.stream(portrait_png, speech_like(3.0, seed=23), realtime=True)
        next(s)
        s.cancel()
    assert srv.wait_live(0) == 0
    with TalkingHeadClient(srv.target) as c:
        assert len(list(c.stream(portrait_png, PCM))) == 25

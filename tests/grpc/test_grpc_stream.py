"""Streams through a real `eartalking serve` process: the SDK gets exactly the embedded runtime's frames,
controls land on the requested frame, the asyncio client and the CLI agree, health/reflection/TLS work,
and SIGTERM lets a live stream finish."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import threading
import time

import grpc
import numpy as np
import pytest
from conftest import ET, ROOT, speech_like, start_fake
from helpers import decode, reference_frames

from eartalking.client import AsyncTalkingHeadClient, TalkingHeadClient


@pytest.fixture(params=["fake", "real", "real-direct"])
def backend(request, portrait_png):
    """(server, open_reference_session): fake session; real runtime batched by the scheduler; real, per stream."""
    if request.param == "fake":
        import fake_backend

        srv = request.getfixturevalue("fake_server")
        return srv, lambda: fake_backend.FakeSession(decode(portrait_png))
    srv = request.getfixturevalue("real_server" if request.param == "real" else "real_server_direct")
    from eartalking.runtime.session import Engine, Session

    engine = Engine(str(request.getfixturevalue("real_export")), load_faces=False)
    return srv, lambda: Session(engine, decode(portrait_png))


def _assert_same(got, want):
    assert len(got) == len(want) > 0
    for g, w in zip(got, want, strict=True):
        assert g.index == w.index
        assert abs(g.time_s - w.time_s) < 1e-9
        np.testing.assert_array_equal(g.image, np.asarray(w.image), err_msg=f"frame {g.index}")
        assert g.controls == pytest.approx({k: v for k, v in (w.controls or {}).items() if v is not None})


def test_sdk_frames_equal_embedded(backend, portrait_png):
    srv, open_session = backend
    pcm = speech_like(1.33, seed=11)  # not a whole number of frames: end() flushes the tail
    controls = [{"frame": 5, "blink": 1.0}, {"time": 0.61, "yaw": 12.0, "expression": 0.5}]
    with TalkingHeadClient(srv.target) as c:
        s = c.stream(portrait_png, pcm, controls, chunk_ms=30)
        got = list(s)
    want = reference_frames(open_session(), pcm, controls)
    _assert_same(got, want)
    assert len(got) == int(np.ceil(len(pcm) / 640))
    assert s.stats.status.code == 0 and s.stats.status.frames == len(got)
    assert got[5].controls.get("blink") == 1.0 and "blink" not in got[4].controls
    assert got[15].controls.get("yaw") == 12.0 and "yaw" not in got[14].controls


def test_png_frames_are_lossless_and_jpeg_decodes(fake_server, portrait_png):
    pcm = speech_like(0.5, seed=12)
    with TalkingHeadClient(fake_server.target) as c:
        raw = list(c.stream(portrait_png, pcm))
        pngs = list(c.stream(portrait_png, pcm, image_encoding="png"))
        jpgs = list(c.stream(portrait_png, pcm, image_encoding="jpeg", jpeg_quality=95))
    _assert_same(pngs, raw)
    assert [f.image.shape for f in jpgs] == [f.image.shape for f in raw]
    assert np.abs(jpgs[3].image.astype(int) - raw[3].image.astype(int)).mean() < 20


def _audio_then_control(pcm: np.ndarray, after_samples: int, event: dict, chunk: int = 400):
    for i in range(0, len(pcm), chunk):
        yield pcm[i : i + chunk]
        if i < after_samples <= i + chunk:
            yield event


def test_control_mid_stream_lands_on_requested_frame(backend, portrait_png):
    srv, _ = backend
    pcm = speech_like(1.6, seed=13)
    # sent after ~0.5 s of audio (frames 0..9 exist by then), asking for frame 25
    items = _audio_then_control(pcm, 8000, {"frame": 25, "blink": 1.0})
    with TalkingHeadClient(srv.target) as c:
        got = list(c.stream(portrait_png, items))
    assert got[25].controls.get("blink") == 1.0
    assert "blink" not in got[24].controls


def test_next_control_lands_on_first_frame_not_generated(backend, portrait_png):
    srv, _ = backend
    pcm = speech_like(1.6, seed=14)
    sent = 12000  # the event follows the chunk that ends at sample 12000
    items = _audio_then_control(pcm, sent, {"frame": "next", "yaw": -10.0})
    with TalkingHeadClient(srv.target) as c:
        s = c.stream(portrait_png, items)
        got = list(s)
    expect = sent // 640 - s.header.lookahead_frames  # frames generated once 12000 samples have arrived
    assert got[expect].controls.get("yaw") == -10.0
    assert "yaw" not in got[expect - 1].controls


def test_asyncio_client_gets_the_same_frames(fake_server, portrait_png):
    pcm = speech_like(0.8, seed=15)

    async def go():
        async with AsyncTalkingHeadClient(fake_server.target) as c:
            info = await c.model_info()
            frames = [f async for f in c.stream(portrait_png, pcm, [{"frame": 3, "roll": 5.0}], chunk_ms=25)]
            return info, frames

    info, got = asyncio.run(go())
    assert info.model_id == "fake" and info.lookahead_frames == 2
    with TalkingHeadClient(fake_server.target) as c:
        want = list(c.stream(portrait_png, pcm, [{"frame": 3, "roll": 5.0}]))
    _assert_same(got, want)


def test_cli_writes_mp4_and_prints_latency(fake_server, portrait_png, tmp_path):
    import av

    from eartalking.client.media import read_audio

    (tmp_path / "p.png").write_bytes(portrait_png)
    pcm = speech_like(1.0, seed=16)
    with av.open(str(tmp_path / "a.wav"), "w") as out:  # 16 kHz mono WAV
        st = out.add_stream("pcm_s16le", rate=16000, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        out.mux(st.encode(frame))
        out.mux(st.encode(None))
    assert np.array_equal(read_audio(tmp_path / "a.wav"), pcm)
    (tmp_path / "c.json").write_text('[{"frame": 3, "blink": 1.0}]')
    r = subprocess.run([*ET, "client", "--server", fake_server.target, "--portrait", str(tmp_path / "p.png"),
                        "--audio", str(tmp_path / "a.wav"), "--controls", str(tmp_path / "c.json"),
                        "--out", str(tmp_path / "o.mp4")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "first frame:" in r.stdout and "frames/s" in r.stdout
    with av.open(str(tmp_path / "o.mp4")) as f:
        assert f.streams.video[0].frames == 25 and len(f.streams.audio) == 1
        assert "generated by EARTalking" in f.metadata.get("comment", "")
    bad = subprocess.run([*ET, "client", "--server", fake_server.target, "--portrait", str(tmp_path / "p.png"),
                          "--audio", str(tmp_path / "missing.wav"), "--out", str(tmp_path / "x.mp4")], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not found" in bad.stderr and "Traceback" not in bad.stderr


def test_health_and_reflection(fake_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(fake_server.target) as ch:
        h = health_pb2_grpc.HealthStub(ch)
        for svc in ("", "eartalking.v1.TalkingHead"):
            assert h.Check(health_pb2.HealthCheckRequest(service=svc), timeout=5).status == 1  # SERVING
        r = reflection_pb2_grpc.ServerReflectionStub(ch)
        (resp,) = list(r.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                              timeout=5))
        names = {s.name for s in resp.list_services_response.service}
        assert {"eartalking.v1.TalkingHead", "grpc.health.v1.Health"} <= names


def test_tls(tmp_path, portrait_png):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"], check=True, capture_output=True)
    srv = start_fake(["--tls-cert", str(cert), "--tls-key", str(key)])
    try:
        assert "(TLS," in "".join(srv.lines)
        pcm = speech_like(0.4, seed=17)
        with TalkingHeadClient(srv.target, tls=str(cert)) as c:
            assert len(list(c.stream(portrait_png, pcm))) == 10
        with TalkingHeadClient(srv.target) as c, pytest.raises(grpc.RpcError) as e:
            c.model_info(timeout=3)
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        srv.stop()


def test_sigterm_lets_live_streams_finish(portrait_png):
    srv = start_fake(["--grace", "10"])
    try:
        pcm = speech_like(1.2, seed=18)
        got, errors = [], []

        def client():
            try:
                with TalkingHeadClient(srv.target) as c:
                    got.extend(c.stream(portrait_png, pcm, realtime=True))
            except grpc.RpcError as e:
                errors.append(e)

        t = threading.Thread(target=client)
        t.start()
        assert srv.wait_live(1) == 1
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        with TalkingHeadClient(srv.target) as c, pytest.raises(grpc.RpcError):  # no new sessions
            list(c.stream(portrait_png, pcm[:6400], timeout=3))
        t.join(30)
        assert not errors and len(got) == 30
        assert srv.proc.wait(20) == 0
        assert any("stopped" in x for x in srv.lines)
    finally:
        srv.stop()


def test_sigterm_cancels_streams_that_outlive_the_grace(portrait_png):
    srv = start_fake(["--grace", "0.5"])
    try:
        errors: list = []

        def client():
            try:
                with TalkingHeadClient(srv.target) as c:
                    list(c.stream(portrait_png, speech_like(6.0, seed=19), realtime=True))
            except grpc.RpcError as e:
                errors.append(e.code())

        t = threading.Thread(target=client)
        t.start()
        assert srv.wait_live(1) == 1
        t0 = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(20) == 0 and time.monotonic() - t0 < 5
        t.join(20)
        assert errors and errors[0] in (grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE)
        assert any("stopped" in x for x in srv.lines)
    finally:
        srv.stop()

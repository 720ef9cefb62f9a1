"""Helpers for gRPC tests: raw calls with hand-made requests, reference sessions run in process."""

from __future__ import annotations

import io
import threading
from collections.abc import Iterable

import grpc
import numpy as np

from eartalking.client._stubs import pb2, pb2_grpc
from eartalking.client.messages import control_events


def png(img: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def decode(png_bytes: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png_bytes)).convert("RGB"))


def config(portrait: bytes, **kw) -> pb2.SessionRequest:
    return pb2.SessionRequest(config=pb2.SessionConfig(portrait=portrait, sample_rate=kw.pop("sample_rate", 16000),
                                                       **kw))


def audio(pcm: np.ndarray | bytes) -> pb2.SessionRequest:
    data = pcm if isinstance(pcm, bytes) else np.asarray(pcm, dtype="<i2").tobytes()
    return pb2.SessionRequest(audio=pb2.AudioChunk(pcm=data))


def control(**kw) -> pb2.SessionRequest:
    return pb2.SessionRequest(control=pb2.ControlEvent(**kw))


def end() -> pb2.SessionRequest:
    return pb2.SessionRequest(end=pb2.EndOfAudio())


def raw_call(target: str, requests: Iterable, timeout: float = 30.0, hold: threading.Event | None = None):
    """Send ``requests`` (then wait for ``hold`` before half-closing, if given); returns (responses, code, details)."""

    def gen():
        yield from requests
        if hold is not None:
            hold.wait(60)

    with grpc.insecure_channel(target) as ch:
        stub = pb2_grpc.TalkingHeadStub(ch)
        out = []
        try:
            for r in stub.StreamSession(gen(), timeout=timeout):
                out.append(r)
        except grpc.RpcError as e:
            return out, e.code(), e.details()
        return out, grpc.StatusCode.OK, ""


def reference_frames(session, pcm: np.ndarray, controls=(), chunk: int = 640) -> list:
    """Frames of a session run in process: controls first (as the SDK sends them), audio, end."""
    from eartalking.client._stubs import NAME_BY_SIGNAL

    for spec in controls:
        for ev in control_events(spec):
            which = ev.WhichOneof("target")
            frame = "next" if which == "next" else (int(ev.frame) if which == "frame" else int(ev.time_s * 25 + 1e-6))
            session.set_controls(frame=frame, **{NAME_BY_SIGNAL[ev.signal]: ev.value})
    frames = []
    for i in range(0, len(pcm), chunk):
        frames += session.push_audio(pcm[i : i + chunk])
    frames += session.end()
    session.close()
    return frames

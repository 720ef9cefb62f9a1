"""Blocking Python client of the EARTalking gRPC API (needs grpcio, protobuf, numpy; no ONNX Runtime, no torch).

Usage:
    from eartalking.client import TalkingHeadClient, read_audio
    with TalkingHeadClient("127.0.0.1:50051") as client:
        for frame in client.stream("portrait.png", read_audio("speech.wav"), controls=[{"frame": 20, "blink": 1}]):
            frame.image  # uint8 [h, w, 3]

``stream`` sends the SessionConfig, then the control events given in ``controls`` (they name future frames
or times), then the audio (a whole utterance is cut into ``chunk_ms`` chunks; an iterable of chunks is sent
as it yields, and control-event dicts inside it are sent in-line, which is how "next" events are placed),
then EndOfAudio. With ``realtime=True`` audio is paced like a microphone: a chunk is sent once its last
sample would have been spoken. Errors raise ``grpc.RpcError`` with the server's status code and details.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from . import messages as m
from ._stubs import pb2, pb2_grpc

#: client channel options: frames of pasted-back photos can be large in RAW_RGB
CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


def channel_credentials(tls: bool | str | Path | bytes | grpc.ChannelCredentials | None):
    """None/False: plaintext; True: system roots; a path or PEM bytes: that CA certificate."""
    if tls is None or tls is False:
        return None
    if isinstance(tls, grpc.ChannelCredentials):
        return tls
    if tls is True:
        return grpc.ssl_channel_credentials()
    pem = tls if isinstance(tls, bytes) else Path(tls).read_bytes()
    return grpc.ssl_channel_credentials(root_certificates=pem)


class _SendLog:
    """When each audio sample left the client (for first-frame latency), written by the request thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.marks: list[tuple[int, float]] = []  # (cumulative samples sent, monotonic time)
        self.end_t: float | None = None

    def first_t(self) -> float | None:
        with self.lock:
            return self.marks[0][1] if self.marks else self.end_t

    def t_at(self, samples: int) -> float | None:
        """Time the client had sent at least ``samples`` samples (or ended the audio)."""
        with self.lock:
            for n, t in self.marks:
                if n >= samples:
                    return t
            return self.end_t


def request_iter(
    config_req,
    audio: Iterable,
    controls: Sequence[Mapping[str, Any]],
    log: _SendLog,
    realtime: bool,
    sample_rate: int,
    stop: threading.Event,
) -> Iterator:
    yield config_req
    for spec in controls:
        yield from m.control_requests(spec)
    sent = 0
    t0 = None
    for item in audio:
        if stop.is_set():
            return
        if m.is_control(item):
            yield from m.control_requests(item)
            continue
        n = m.samples_in(item)
        if realtime:
            t0 = time.monotonic() if t0 is None else t0
            delay = t0 + (sent + n) / sample_rate - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
        req = m.audio_request(item)
        sent += n
        with log.lock:
            log.marks.append((sent, time.monotonic()))
        yield req
    with log.lock:
        log.end_t = time.monotonic()
    yield m.end_request()


class FrameStream:
    """Iterator of ``Frame`` for one session; ``header``, ``stats`` and ``cancel()`` while or after iterating."""

    def __init__(self, stub, config_req, audio, controls, realtime, sample_rate, timeout, metadata) -> None:
        self._log = _SendLog()
        self._stop = threading.Event()
        self.stats = m.StreamStats()
        self.header = None
        self._sample_rate = sample_rate
        reqs = request_iter(config_req, audio, controls, self._log, realtime, sample_rate, self._stop)
        self._call = stub.StreamSession(reqs, timeout=timeout, metadata=metadata)
        self._it = self._frames()

    def __iter__(self) -> Iterator[m.Frame]:
        return self

    def __next__(self) -> m.Frame:
        return next(self._it)

    def cancel(self) -> None:
        """Stop sending and cancel the RPC (the server frees the session)."""
        self._stop.set()
        self._call.cancel()

    def close(self) -> None:
        self._it.close()

    def _frames(self) -> Iterator[m.Frame]:
        try:
            for resp in self._call:
                kind = resp.WhichOneof("response")
                if kind == "header":
                    self.header = self.stats.header = resp.header
                elif kind == "frame":
                    now = time.monotonic()
                    frame = m.decode_frame(resp.frame)
                    self._note_frame(now)
                    yield frame
                elif kind == "status":
                    self.stats.status = resp.status
        finally:
            if self.stats.status is None:
                self.cancel()

    def _note_frame(self, now: float) -> None:
        s = self.stats
        s.frames += 1
        t_first = self._log.first_t()
        if t_first is None:
            return
        s.wall_s = now - t_first
        if s.frames == 1:
            s.first_frame_s = now - t_first
            if self.header is not None and self.header.fps > 0:
                spf = int(round(self._sample_rate / self.header.fps))
                t_ready = self._log.t_at((1 + self.header.lookahead_frames) * spf)
                if t_ready is not None:
                    s.first_frame_after_audio_s = now - t_ready


class TalkingHeadClient:
    """A channel to an ``eartalking serve`` server. ``tls``: None (plaintext), True, or a CA certificate."""

    def __init__(
        self,
        target: str,
        tls: bool | str | Path | bytes | grpc.ChannelCredentials | None = None,
        *,
        options: Sequence[tuple[str, Any]] = (),
        metadata: Sequence[tuple[str, str]] | None = None,
    ) -> None:
        opts = CHANNEL_OPTIONS + list(options)
        creds = channel_credentials(tls)
        self.target = target
        self.channel = grpc.secure_channel(target, creds, opts) if creds else grpc.insecure_channel(target, opts)
        self.stub = pb2_grpc.TalkingHeadStub(self.channel)
        self.metadata = metadata

    def model_info(self, timeout: float = 10.0):
        """The server's ModelInfo message (model id, sizes, fps, sample rate, lookahead, limits)."""
        return self.stub.GetModelInfo(pb2.ModelInfoRequest(), timeout=timeout, metadata=self.metadata)

    def wait_ready(self, timeout: float = 10.0) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def stream(
        self,
        portrait: m.PortraitLike,
        audio: m.AudioLike | Iterable,
        controls: Sequence[Mapping[str, Any]] = (),
        *,
        realtime: bool = False,
        chunk_ms: float = 40.0,
        sample_rate: int = 16000,
        image_encoding: str = "raw",
        jpeg_quality: int = 90,
        crop_only: bool = False,
        temperature: float = 0.0,
        seed: int = 0,
        initial_controls: Mapping[str, float] | None = None,
        timeout: float | None = None,
    ) -> FrameStream:
        """Open a session and return its frames as they arrive (see the module docstring)."""
        cfg = m.config_request(
            portrait, sample_rate=sample_rate, image_encoding=image_encoding, jpeg_quality=jpeg_quality,
            crop_only=crop_only, temperature=temperature, seed=seed, initial_controls=initial_controls,
        )
        for spec in controls:  # fail here, not inside gRPC's request thread
            m.control_events(spec)
        chunks = m.as_chunks(audio, sample_rate, chunk_ms)
        return FrameStream(self.stub, cfg, chunks, list(controls), realtime, sample_rate, timeout, self.metadata)

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> TalkingHeadClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

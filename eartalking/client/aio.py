"""asyncio client of the EARTalking gRPC API (grpc.aio), same semantics as ``eartalking.client.sdk``.

Usage:
    async with AsyncTalkingHeadClient("127.0.0.1:50051") as client:
        async for frame in client.stream("portrait.png", pcm_int16, realtime=True):
            ...

``audio`` may be a whole utterance (cut into ``chunk_ms`` chunks), a sync iterable or an async iterable of
chunks (control-event dicts inside it are sent in-line). Errors raise ``grpc.aio.AioRpcError``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from . import messages as m
from ._stubs import pb2, pb2_grpc
from .sdk import CHANNEL_OPTIONS, channel_credentials


async def _aiter(items) -> AsyncIterator:
    if hasattr(items, "__aiter__"):
        async for x in items:
            yield x
    else:
        for x in items:
            yield x


class AsyncFrameStream:
    """Async iterator of ``Frame``; ``header``, ``stats`` and ``cancel()``."""

    def __init__(self, stub, config_req, audio, controls, realtime, sample_rate, timeout, metadata) -> None:
        self.stats = m.StreamStats()
        self.header = None
        self._sample_rate = sample_rate
        self._marks: list[tuple[int, float]] = []
        self._end_t: float | None = None
        self._call = stub.StreamSession(
            self._requests(config_req, audio, controls, realtime), timeout=timeout, metadata=metadata
        )

    async def _requests(self, config_req, audio, controls, realtime):
        yield config_req
        for spec in controls:
            for r in m.control_requests(spec):
                yield r
        sent, t0 = 0, None
        async for item in _aiter(audio):
            if m.is_control(item):
                for r in m.control_requests(item):
                    yield r
                continue
            n = m.samples_in(item)
            if realtime:
                t0 = time.monotonic() if t0 is None else t0
                delay = t0 + (sent + n) / self._sample_rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            req = m.audio_request(item)
            sent += n
            self._marks.append((sent, time.monotonic()))
            yield req
        self._end_t = time.monotonic()
        yield m.end_request()

    def __aiter__(self) -> AsyncFrameStream:
        return self

    async def __anext__(self) -> m.Frame:
        while True:
            resp = await self._call.read()
            if resp is grpc.aio.EOF:
                raise StopAsyncIteration
            kind = resp.WhichOneof("response")
            if kind == "header":
                self.header = self.stats.header = resp.header
            elif kind == "status":
                self.stats.status = resp.status
            elif kind == "frame":
                now = time.monotonic()
                frame = m.decode_frame(resp.frame)
                self._note(now)
                return frame

    def _note(self, now: float) -> None:
        s = self.stats
        s.frames += 1
        t_first = self._marks[0][1] if self._marks else self._end_t
        if t_first is None:
            return
        s.wall_s = now - t_first
        if s.frames == 1:
            s.first_frame_s = now - t_first
            if self.header is not None and self.header.fps > 0:
                need = (1 + self.header.lookahead_frames) * int(round(self._sample_rate / self.header.fps))
                t_ready = next((t for n, t in self._marks if n >= need), self._end_t)
                if t_ready is not None:
                    s.first_frame_after_audio_s = now - t_ready

    def cancel(self) -> None:
        self._call.cancel()


class AsyncTalkingHeadClient:
    """grpc.aio channel to an ``eartalking serve`` server; ``tls`` as in ``TalkingHeadClient``."""

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
        aio = grpc.aio
        self.channel = aio.secure_channel(target, creds, opts) if creds else aio.insecure_channel(target, opts)
        self.stub = pb2_grpc.TalkingHeadStub(self.channel)
        self.metadata = metadata

    async def model_info(self, timeout: float = 10.0):
        return await self.stub.GetModelInfo(pb2.ModelInfoRequest(), timeout=timeout, metadata=self.metadata)

    def stream(
        self,
        portrait: m.PortraitLike,
        audio: m.AudioLike | Iterable | AsyncIterator,
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
    ) -> AsyncFrameStream:
        cfg = m.config_request(
            portrait, sample_rate=sample_rate, image_encoding=image_encoding, jpeg_quality=jpeg_quality,
            crop_only=crop_only, temperature=temperature, seed=seed, initial_controls=initial_controls,
        )
        for spec in controls:
            m.control_events(spec)
        chunks = audio if hasattr(audio, "__aiter__") else m.as_chunks(audio, sample_rate, chunk_ms)
        return AsyncFrameStream(self.stub, cfg, chunks, list(controls), realtime, sample_rate, timeout, self.metadata)

    async def close(self) -> None:
        await self.channel.close()

    async def __aenter__(self) -> AsyncTalkingHeadClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

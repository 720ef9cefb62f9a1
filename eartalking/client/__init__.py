"""EARTalking client SDK: stream a portrait + speech to an ``eartalking serve`` server and get frames back.

Needs only grpcio, protobuf, numpy, Pillow and PyAV (no ONNX Runtime, no torch).

Usage:
    from eartalking.client import TalkingHeadClient, read_audio, write_mp4
    with TalkingHeadClient("127.0.0.1:50051") as c:
        frames = list(c.stream("portrait.png", read_audio("speech.wav")))
    write_mp4("out.mp4", (f.image for f in frames), read_audio("speech.wav"))
"""

from __future__ import annotations

from .aio import AsyncFrameStream, AsyncTalkingHeadClient
from .media import Mp4Writer, read_audio, write_mp4
from .messages import Frame, StreamStats
from .sdk import FrameStream, TalkingHeadClient

__all__ = [
    "AsyncFrameStream", "AsyncTalkingHeadClient", "Frame", "FrameStream", "Mp4Writer", "StreamStats",
    "TalkingHeadClient", "read_audio", "write_mp4",
]

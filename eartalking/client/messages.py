"""Building requests and reading responses of the TalkingHead API (shared by the sync and asyncio clients).

Controls are given the way the runtime's controls file gives them: a list of events, each
``{"frame": k | "next", "<signal>": value, ...}`` or ``{"time": seconds, "<signal>": value, ...}``, with
signals from ``eartalking.config.CONTROL_NAMES`` (yaw, pitch, roll in degrees; blink, expression 0..1).
One event dict becomes one ``ControlEvent`` per signal it names.

Audio is PCM16 mono at the model's rate (16 kHz): numpy int16 arrays, float arrays in [-1, 1], or raw
little-endian bytes.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ._stubs import IMAGE_ENCODINGS, NAME_BY_SIGNAL, SIGNAL_BY_NAME, pb2

PortraitLike = str | Path | bytes | np.ndarray
AudioLike = np.ndarray | bytes
ControlSpec = Mapping[str, Any]

#: keys of a control event dict that say *when*; every other key is a signal name
_WHEN_KEYS = ("frame", "time", "time_s")


@dataclass
class Frame:
    """One video frame from the server: ``image`` uint8 [h, w, 3] RGB, ``controls`` the ones in force."""

    index: int
    time_s: float
    image: np.ndarray
    controls: dict[str, float] = field(default_factory=dict)


@dataclass
class StreamStats:
    """Client-side timings of one stream (seconds; monotonic clock)."""

    frames: int = 0
    first_frame_s: float | None = None  # first audio sent -> frame 0 received
    first_frame_after_audio_s: float | None = None  # frame 0's audio (+ lookahead) sent -> frame 0 received
    wall_s: float = 0.0  # first audio sent -> last frame received
    header: Any = None  # the SessionHeader message
    status: Any = None  # the final SessionStatus message

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0


def portrait_bytes(portrait: PortraitLike) -> bytes:
    """Image file bytes for SessionConfig.portrait: a path, encoded bytes, or uint8 RGB [H, W, 3] (sent as PNG)."""
    if isinstance(portrait, (bytes, bytearray, memoryview)):
        return bytes(portrait)
    if isinstance(portrait, (str, Path)):
        return Path(portrait).read_bytes()
    arr = np.asarray(portrait)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"portrait array must be uint8 [H, W, 3], got {arr.dtype} {list(arr.shape)}")
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr[..., :3]).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def pcm16_bytes(chunk: AudioLike) -> bytes:
    """Little-endian PCM16 bytes of a chunk (int16, float in [-1, 1], or bytes as they are)."""
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return bytes(chunk)
    a = np.asarray(chunk)
    if a.ndim != 1:
        raise ValueError(f"audio chunks must be 1-D mono, got shape {list(a.shape)}")
    if a.dtype.kind == "f":
        a = np.clip(np.round(a * 32768.0), -32768, 32767)
    return a.astype("<i2").tobytes()


def split_audio(pcm: np.ndarray, sample_rate: int = 16000, chunk_ms: float = 40.0) -> Iterator[np.ndarray]:
    """Cut a whole utterance into chunks of ``chunk_ms`` (a microphone's view of it)."""
    n = max(1, int(round(sample_rate * chunk_ms / 1000.0)))
    for i in range(0, len(pcm), n):
        yield pcm[i : i + n]


def control_events(spec: ControlSpec) -> list:
    """ControlEvent messages for one event dict (see the module docstring)."""
    when = [k for k in _WHEN_KEYS if k in spec]
    if len(when) != 1:
        raise ValueError(f"control event {dict(spec)} needs exactly one of 'frame' (int or 'next') or 'time'")
    key = when[0]
    target: dict[str, Any]
    if key == "frame" and spec[key] == "next":
        target = {"next": True}
    elif key == "frame":
        target = {"frame": int(spec[key])}
    else:
        target = {"time_s": float(spec[key])}
    out = []
    for name, value in spec.items():
        if name in _WHEN_KEYS:
            continue
        if name not in SIGNAL_BY_NAME:
            raise ValueError(f"unknown control signal {name!r}; known: {', '.join(SIGNAL_BY_NAME)}")
        out.append(pb2.ControlEvent(signal=SIGNAL_BY_NAME[name], value=float(value), **target))
    return out


def config_request(
    portrait: PortraitLike,
    *,
    sample_rate: int = 16000,
    image_encoding: str = "raw",
    jpeg_quality: int = 90,
    crop_only: bool = False,
    temperature: float = 0.0,
    seed: int = 0,
    initial_controls: Mapping[str, float] | None = None,
):
    if image_encoding not in IMAGE_ENCODINGS:
        raise ValueError(f"image_encoding must be one of {sorted(IMAGE_ENCODINGS)}, got {image_encoding!r}")
    init = []
    for name, value in (initial_controls or {}).items():
        if name not in SIGNAL_BY_NAME:
            raise ValueError(f"unknown control signal {name!r}; known: {', '.join(SIGNAL_BY_NAME)}")
        init.append(pb2.ControlValue(signal=SIGNAL_BY_NAME[name], value=float(value)))
    cfg = pb2.SessionConfig(
        portrait=portrait_bytes(portrait),
        sample_rate=sample_rate,
        audio_encoding=pb2.AUDIO_ENCODING_PCM16,
        image_encoding=IMAGE_ENCODINGS[image_encoding],
        jpeg_quality=jpeg_quality,
        crop_only=crop_only,
        temperature=temperature,
        seed=seed,
        initial_controls=init,
    )
    return pb2.SessionRequest(config=cfg)


def audio_request(chunk: AudioLike):
    return pb2.SessionRequest(audio=pb2.AudioChunk(pcm=pcm16_bytes(chunk)))


def control_requests(spec: ControlSpec) -> list:
    return [pb2.SessionRequest(control=ev) for ev in control_events(spec)]


def end_request():
    return pb2.SessionRequest(end=pb2.EndOfAudio())


def decode_frame(msg) -> Frame:
    """A VideoFrame message -> Frame with a uint8 [h, w, 3] image."""
    if msg.encoding in (pb2.IMAGE_ENCODING_RAW_RGB, pb2.IMAGE_ENCODING_UNSPECIFIED):
        img = np.frombuffer(msg.image, dtype=np.uint8).reshape(msg.height, msg.width, 3)
    else:
        from PIL import Image

        img = np.asarray(Image.open(io.BytesIO(msg.image)).convert("RGB"))
    controls = {NAME_BY_SIGNAL.get(c.signal, str(c.signal)): float(c.value) for c in msg.controls}
    return Frame(index=int(msg.index), time_s=float(msg.time_s), image=img, controls=controls)


def is_control(item: Any) -> bool:
    """Items of an audio iterable that are control event dicts are sent in-line as ControlEvents."""
    return isinstance(item, Mapping)


def samples_in(chunk: AudioLike) -> int:
    if isinstance(chunk, (bytes, bytearray, memoryview)):
        return len(chunk) // 2
    return int(np.asarray(chunk).shape[0])


def as_chunks(audio: AudioLike | Iterable, sample_rate: int, chunk_ms: float) -> Iterable:
    """A whole utterance (1-D array or bytes) is cut into ``chunk_ms`` chunks; an iterable passes through."""
    if isinstance(audio, (bytes, bytearray, memoryview)):
        audio = np.frombuffer(bytes(audio), dtype="<i2")
    if isinstance(audio, np.ndarray):
        return split_audio(audio, sample_rate, chunk_ms)
    return audio

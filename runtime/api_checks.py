"""Input limits and checks of the TalkingHead API, and the status each violation maps to.

Every check raises ``Abort(code, message)`` with a message naming the problem and the limit; the
servicer ends the RPC with that status. Also the image encoding of outgoing frames.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass
from typing import Any, Protocol

import grpc
import numpy as np

from eartalking.cli import UserError
from eartalking.client._stubs import NAME_BY_SIGNAL, SIGNAL_BY_NAME, pb2
from eartalking.config import CONTROL_RANGES

log = logging.getLogger("eartalking.serve")
INVALID = grpc.StatusCode.INVALID_ARGUMENT


@dataclass
class Limits:
    """Per-server limits; each violation has its own status code and message."""

    max_sessions: int = 8  # more live streams -> RESOURCE_EXHAUSTED
    max_portrait_bytes: int = 10 * 1024 * 1024  # SessionConfig.portrait -> INVALID_ARGUMENT
    max_portrait_pixels: int = 4096 * 4096  # decoded width * height -> INVALID_ARGUMENT
    max_message_bytes: int = 1024 * 1024  # any other request (64 KiB = 2 s of audio is plenty) -> INVALID_ARGUMENT
    idle_timeout_s: float = 30.0  # no request for this long -> DEADLINE_EXCEEDED
    queue_messages: int = 64  # requests buffered per stream before flow control holds the client back
    max_backlog_samples: int = 16000  # PCM queued for the batching scheduler before reading pauses (1 s)

    @property
    def transport_max_bytes(self) -> int:
        """gRPC's own receive limit, above ours, so over-limit messages still get our INVALID_ARGUMENT."""
        return max(self.max_portrait_bytes, self.max_message_bytes) + 1024 * 1024


class SessionLike(Protocol):
    header: Any

    def push_audio(self, pcm: np.ndarray) -> list: ...
    def set_controls(self, frame: int | str = "next", **values: float) -> None: ...
    def end(self) -> list: ...
    def close(self) -> None: ...


class SessionBackend(Protocol):
    """Where sessions run: ``info()`` (model_id, image_size, fps, sample_rate, lookahead_frames) and ``open``."""

    name: str

    def info(self) -> dict[str, Any]: ...
    def open(self, portrait_rgb: np.ndarray, *, crop_only: bool, temperature: float, seed: int) -> SessionLike: ...


class Abort(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code, self.message = code, message


def session_error(e: BaseException) -> Abort:
    """What the session raised -> the stream's status (its own input checks -> INVALID_ARGUMENT)."""
    if isinstance(e, Abort):
        return e
    if isinstance(e, (UserError, ValueError)):
        return Abort(INVALID, f"rejected by the session: {e}")
    log.error("session failure: %s: %s", type(e).__name__, e)
    return Abort(grpc.StatusCode.INTERNAL, f"session failed: {type(e).__name__}: {e}")


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def decode_portrait(data: bytes, limits: Limits) -> np.ndarray:
    """Image file bytes -> uint8 RGB [H, W, 3], enforcing the byte and pixel limits before decoding."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise Abort(INVALID, "SessionConfig.portrait is empty: send an image file (PNG, JPEG, ...)")
    if len(data) > limits.max_portrait_bytes:
        raise Abort(INVALID, f"portrait is {len(data)} bytes; the limit is {limits.max_portrait_bytes} bytes")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > limits.max_portrait_pixels:
                raise Abort(INVALID, f"portrait is {w}x{h} = {w * h} pixels; the limit is "
                             f"{limits.max_portrait_pixels} pixels")
            rgb = np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise Abort(INVALID, f"portrait is not a readable image ({type(e).__name__}: {e})") from e
    return rgb


def check_control(signal: int, value: float) -> str:
    """The control name for a valid (signal, value); Abort(INVALID_ARGUMENT) otherwise."""
    name = NAME_BY_SIGNAL.get(signal)
    if name is None:
        known = ", ".join(f"{n}={v}" for n, v in SIGNAL_BY_NAME.items())
        raise Abort(INVALID, f"unknown control signal {signal}; known signals: {known}")
    lo, hi = CONTROL_RANGES[name]
    if not (math.isfinite(value) and lo <= value <= hi):
        raise Abort(INVALID, f"{name}={value:g} is out of range [{lo:g}, {hi:g}]")
    return name


def encode_image(img: np.ndarray, encoding: int, quality: int) -> bytes:
    if encoding in (pb2.IMAGE_ENCODING_RAW_RGB, pb2.IMAGE_ENCODING_UNSPECIFIED):
        return np.ascontiguousarray(img, dtype=np.uint8).tobytes()
    from PIL import Image

    buf = io.BytesIO()
    if encoding == pb2.IMAGE_ENCODING_PNG:
        Image.fromarray(img).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(img).save(buf, format="JPEG", quality=quality or 90)
    return buf.getvalue()

"""A small stand-in for runtime/session.py with the same contract, for gRPC tests that need no model.

Contract mirrored (docs/INTERFACES.md "Runtime"): frame t is returned by ``push_audio`` once audio up to
sample (t + 1 + lookahead) * spf has arrived; ``end()`` flushes frames up to ceil(samples / spf);
``set_controls(frame=k | "next", **values)`` holds from frame k on; a portrait without contrast has
"no face". Frames are a deterministic function of the portrait, the frame's audio and its controls, so
frame equality between paths is a real check. Used with ``eartalking serve --backend-factory
fake_backend:backend`` (PYTHONPATH=tests/grpc).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

SPF, LOOKAHEAD, SIZE = 640, 2, 32


@dataclass
class Frame:
    index: int
    time_s: float
    image: np.ndarray
    controls: dict = field(default_factory=dict)


class FakeSession:
    def __init__(self, portrait: np.ndarray, crop_only: bool = False, temperature: float = 0.0, seed: int = 0):
        if portrait.std() < 1.0:
            raise ValueError("no face found in the portrait (largest face: none)")
        self.base = portrait[:: max(1, portrait.shape[0] // SIZE), :: max(1, portrait.shape[1] // SIZE)]
        self.base = np.resize(self.base, (SIZE, SIZE, 3)).astype(np.int32)
        self.seed = seed
        self.pcm = np.zeros(0, np.int16)
        self.next = 0
        self.keys: dict[int, dict[str, float]] = {}
        self.header = {"width": SIZE, "height": SIZE, "fps": 25, "lookahead_frames": LOOKAHEAD}
        self.closed = False

    def set_controls(self, frame="next", **values: float) -> None:
        k = self.next if frame == "next" else int(frame)
        if k < self.next:
            raise ValueError(f"frame {k} was already generated")
        self.keys.setdefault(k, {}).update(values)

    def _controls(self, t: int) -> dict[str, float]:
        out: dict[str, float] = {}
        for k in sorted(self.keys):
            if k <= t:
                out.update(self.keys[k])
        return out

    def _frame(self, t: int) -> Frame:
        seg = self.pcm[t * SPF : (t + 1) * SPF].astype(np.float64)
        energy = int(np.sqrt((seg**2).mean()) if len(seg) else 0) % 97
        c = self._controls(t)
        shift = int(c.get("yaw", 0.0)) + int(100 * c.get("blink", 0.0))
        img = (self.base + energy + shift + 3 * t + self.seed) % 256
        return Frame(t, t / 25.0, img.astype(np.uint8), c)

    def push_audio(self, pcm) -> list[Frame]:
        pcm = np.asarray(pcm)
        if pcm.dtype.kind == "f":
            pcm = np.round(pcm * 32768).astype(np.int16)
        self.pcm = np.concatenate([self.pcm, pcm.astype(np.int16)])
        out = []
        while len(self.pcm) >= (self.next + 1 + LOOKAHEAD) * SPF:
            out.append(self._frame(self.next))
            self.next += 1
        return out

    def end(self) -> list[Frame]:
        total = -(-len(self.pcm) // SPF)
        out = []
        while self.next < total:
            out.append(self._frame(self.next))
            self.next += 1
        return out

    def close(self) -> None:
        self.closed = True


class FakeBackend:
    name = "embedded"

    def info(self) -> dict:
        return {"model_id": "fake", "image_size": SIZE, "fps": 25.0, "sample_rate": 16000,
                "lookahead_frames": LOOKAHEAD}

    def open(self, portrait_rgb, *, crop_only, temperature, seed):
        return FakeSession(portrait_rgb, crop_only, temperature, seed)


def backend(args=None) -> FakeBackend:
    return FakeBackend()

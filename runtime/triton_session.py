"""``eartalking serve --backend triton``: sessions run in a Triton server's decoupled ``talking_head`` model.

The protocol is the one of ``eartalking.triton_repo.streaming`` (START carries the portrait and sampling
options; then PCM chunks and control events; END flushes; every ready frame streams back as a response),
spoken through ``eartalking.triton_repo.client.StreamClient``: one Triton gRPC stream per API server carries
all sessions as sequences (correlation id = a random 63-bit id) and puts each sequence's events, in frame
order, on its own queue. A pump thread per session moves them into the stream's inbox (see
``runtime/scheduler.py``): ``("frames", [Frame], t)``, ``("error", ValueError)``, ``("done",)``.

Model dimensions (fps, lookahead, image size) come from the export the Triton repository was rendered from
(``--onnx``: its manifest.json). ``talking_head`` returns no controls with a frame, so the controls in force
are tracked here from the events this adapter sent (a value holds from its frame until changed).
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from eartalking.cli import UserError


@dataclass
class Frame:
    index: int
    time_s: float
    image: np.ndarray
    controls: dict[str, float] = field(default_factory=dict)


class TritonSession:
    """A session's settings; its Triton sequence is opened by the runner."""

    def __init__(self, backend: TritonBackend, portrait_rgb: np.ndarray, crop_only: bool, temperature: float,
                 seed: int) -> None:
        self.backend = backend
        self.portrait = np.ascontiguousarray(portrait_rgb, dtype=np.uint8)
        self.crop_only, self.temperature, self.seed = bool(crop_only), float(temperature), int(seed)
        s = int(backend.info()["image_size"])
        h, w = (s, s) if crop_only else self.portrait.shape[:2]
        self.header = {"width": w, "height": h}


class TritonRunner:
    """One sequence on the backend's shared StreamClient, with a pump thread into the stream's inbox."""

    batched = True

    def __init__(self, session: TritonSession, inbox) -> None:
        b = session.backend
        self.sc, self.inbox, self.fps = b.stream_client(), inbox, float(b.info()["fps"])
        self.seq = random.getrandbits(63) or 1
        self.q: queue.Queue = self.sc.queues[str(self.seq)]
        self.events: dict[int, dict[str, float]] = {}  # frame -> values sent for it
        self.current: dict[str, float] = {}
        self.pending: list[tuple[int, dict[str, float]]] = []
        self.t_last = time.monotonic()
        self.ended = self.finished = False
        self.stop = threading.Event()
        self.sc.open(self.seq, session.portrait, session.crop_only, session.temperature, session.seed)
        threading.Thread(target=self._pump, name="eartalking-triton-pump", daemon=True).start()

    def _pump(self) -> None:
        while not self.stop.is_set():
            try:
                ev = self.q.get(timeout=0.2)
            except queue.Empty:
                continue
            if ev.kind == "frame":
                self.current.update(self.events.pop(ev.index, {}))
                frame = Frame(ev.index, ev.index / self.fps, ev.image, dict(self.current))
                self.inbox.put(("frames", [frame], self.t_last))
            elif ev.kind == "end":
                self.finished = True
                self.inbox.put(("done",))
                return
            elif ev.kind == "error":
                self.finished = True
                self.inbox.put(("error", ValueError(f"triton: {ev.message}")))
                return

    def feed(self, pcm: np.ndarray, t: float) -> list:
        self.t_last = t
        events, self.pending = self.pending, []
        self.sc.push(self.seq, np.asarray(pcm, np.int16), events or None)
        return []

    def set_controls(self, frame: int, values: dict[str, float]) -> None:
        self.events.setdefault(int(frame), {}).update(values)
        self.pending.append((int(frame), dict(values)))  # sent with the next audio (applied before it)

    def end(self, t: float) -> list:
        self.t_last, self.ended = t, True
        if self.pending:
            events, self.pending = self.pending, []
            self.sc.push(self.seq, np.zeros(0, np.int16), events)
        self.sc.end(self.seq)
        return []

    def backlog(self) -> int:
        return 0

    def close(self) -> None:
        self.stop.set()
        if not self.ended:  # cancelled or failed: END frees the sequence's state in the model at once
            self.ended = True
            try:
                self.sc.end(self.seq)
            except Exception:  # noqa: BLE001 - the model's idle reaper frees it anyway
                pass
        with self.sc.lock:
            self.sc.queues.pop(str(self.seq), None)


class TritonBackend:
    """Sessions in Triton's ``talking_head``; one shared StreamClient, opened on first use."""

    name = "triton"

    def __init__(self, url: str, model: str = "talking_head", onnx_dir: str | Path = "build/onnx") -> None:
        try:
            import tritonclient.grpc as tc
        except ImportError as e:
            raise UserError("--backend triton needs tritonclient[grpc] (pip install 'eartalking[triton]')") from e
        manifest = Path(onnx_dir) / "manifest.json"
        if not manifest.is_file():
            raise UserError(f"--backend triton reads the model dims from {manifest}: pass --onnx with the export "
                            "the Triton repository was rendered from")
        d = json.loads(manifest.read_text())["dims"]
        self._info: dict[str, Any] = {
            "model_id": str(d.get("model_name", model)), "image_size": int(d["image_size"]), "fps": float(d["fps"]),
            "sample_rate": int(d["sample_rate"]), "lookahead_frames": int(d["lookahead_frames"]),
        }
        self.url, self.model = url, model
        client = tc.InferenceServerClient(url)
        try:
            if not client.is_model_ready(model):
                raise UserError(f"Triton at {url} has no ready model {model!r} (run `make serve` first)")
        except tc.InferenceServerException as e:
            raise UserError(f"cannot reach Triton at {url}: {e}") from e
        finally:
            client.close()
        self._sc = None
        self._lock = threading.Lock()

    def stream_client(self):
        with self._lock:
            if self._sc is None:
                from eartalking.triton_repo.client import StreamClient

                self._sc = StreamClient(self.url, self.model)
            return self._sc

    def info(self) -> dict[str, Any]:
        return self._info

    def open(self, portrait_rgb: np.ndarray, *, crop_only: bool, temperature: float, seed: int) -> TritonSession:
        return TritonSession(self, portrait_rgb, crop_only, temperature, seed)

    def make_runner(self, session: TritonSession, inbox) -> TritonRunner:
        return TritonRunner(session, inbox)

    def close(self) -> None:
        if self._sc is not None:
            self._sc.close()

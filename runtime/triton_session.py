"""``eartalking serve --backend triton``: sessions run in a Triton server's decoupled ``talking_head`` model.

UNTESTED against a real ``talking_head`` model (the Triton repository did not exist yet when this was
written); the I/O contract below is what this adapter sends and expects. Keep the two in step.

``talking_head`` contract (decoupled, ``sequence_batching``, CORRID TYPE_UINT64; one sequence = one session):
  inputs   ``portrait``  UINT8 [H, W, 3]  the decoded photo (START request only)
           ``options``   BYTES [1]        JSON {"crop_only": bool, "temperature": float, "seed": int} (START only)
           ``pcm``       INT16 [n]        16 kHz mono samples (n >= 0, any request)
           ``controls``  BYTES [1]        JSON [[frame, {"blink": 1.0, ...}], ...], applied before ``pcm``
           END flag      end of audio: the model flushes the remaining frames and sends the final response
  outputs  one response per frame: ``image`` UINT8 [h, w, 3], ``frame`` INT32 [1], ``controls`` BYTES [1]
           (JSON of the controls in force); then an empty final response (``triton_final_response``).
  errors   a response error whose message starts with "invalid:" is the client's fault (INVALID_ARGUMENT).
  model config ``parameters``: model_id, image_size, fps, sample_rate, lookahead_frames (strings).

The adapter is a runner in the sense of ``runtime/scheduler.py``: frames arrive asynchronously and are put
into the stream's inbox as ``("frames", [Frame], t)``; the final response puts ``("done",)``.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
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
    """Holds a session's settings until the runner opens the Triton sequence."""

    def __init__(self, backend: TritonBackend, portrait_rgb: np.ndarray, crop_only: bool, temperature: float,
                 seed: int) -> None:
        self.backend, self.portrait = backend, np.ascontiguousarray(portrait_rgb, dtype=np.uint8)
        self.options = {"crop_only": bool(crop_only), "temperature": float(temperature), "seed": int(seed)}
        s = int(backend.info()["image_size"])
        h, w = (s, s) if crop_only else self.portrait.shape[:2]
        self.header = {"width": w, "height": h}


class TritonRunner:
    """One Triton gRPC stream per session (tritonclient.grpc start_stream / async_stream_infer)."""

    batched = True

    def __init__(self, session: TritonSession, inbox) -> None:
        import tritonclient.grpc as tc

        self.tc, self.session, self.inbox = tc, session, inbox
        self.model = session.backend.model
        self.fps = float(session.backend.info()["fps"])
        self.client = tc.InferenceServerClient(session.backend.url)
        self.seq = random.getrandbits(63) or 1
        self.started = False
        self.ended = False
        self.controls: list = []
        self.t_last = time.monotonic()
        self.lock = threading.Lock()
        self.client.start_stream(callback=self._on_response)

    def _on_response(self, result, error) -> None:
        if error is not None:
            msg = str(error)
            exc: Exception = ValueError(msg.removeprefix("invalid:").strip()) if "invalid:" in msg else RuntimeError(
                f"triton: {msg}")
            self.inbox.put(("error", exc))
            return
        resp = result.get_response()
        final = resp.parameters.get("triton_final_response")
        if result.as_numpy("frame") is not None:
            t = int(result.as_numpy("frame").reshape(-1)[0])
            raw = result.as_numpy("controls")
            controls = json.loads(raw.reshape(-1)[0]) if raw is not None else {}
            frame = Frame(t, t / self.fps, result.as_numpy("image"), controls)
            self.inbox.put(("frames", [frame], self.t_last))
        if final is not None and final.bool_param:
            self.inbox.put(("done",))

    def _send(self, pcm: np.ndarray, end: bool = False) -> None:
        tc = self.tc
        inputs = []

        def add(name: str, arr: np.ndarray, dtype: str) -> None:
            x = tc.InferInput(name, list(arr.shape), dtype)
            x.set_data_from_numpy(arr)
            inputs.append(x)

        with self.lock:
            start = not self.started
            self.started = True
            if start:
                add("portrait", self.session.portrait, "UINT8")
                add("options", np.array([json.dumps(self.session.options).encode()], dtype=object), "BYTES")
            if self.controls:
                add("controls", np.array([json.dumps(self.controls).encode()], dtype=object), "BYTES")
                self.controls = []
            add("pcm", np.ascontiguousarray(pcm, dtype=np.int16), "INT16")
            self.client.async_stream_infer(self.model, inputs, sequence_id=self.seq, sequence_start=start,
                                           sequence_end=end, enable_empty_final_response=True)

    def feed(self, pcm: np.ndarray, t: float) -> list:
        self.t_last = t
        self._send(pcm)
        return []

    def set_controls(self, frame: int, values: dict[str, float]) -> None:
        with self.lock:
            self.controls.append([int(frame), values])

    def end(self, t: float) -> list:
        self.t_last = t
        self.ended = True
        self._send(np.zeros(0, np.int16), end=True)
        return []

    def backlog(self) -> int:
        return 0

    def close(self) -> None:
        try:
            if not self.ended and self.started:  # cancelled: END frees the sequence's state in the model
                self.ended = True
                self._send(np.zeros(0, np.int16), end=True)
            self.client.stop_stream(cancel_requests=True)
        finally:
            self.client.close()


class TritonBackend:
    """Sessions in Triton; model facts from the ``talking_head`` config parameters."""

    name = "triton"

    def __init__(self, url: str, model: str = "talking_head") -> None:
        try:
            import tritonclient.grpc as tc
        except ImportError as e:
            raise UserError("--backend triton needs tritonclient[grpc] (pip install 'eartalking[triton]')") from e
        self.url, self.model = url, model
        client = tc.InferenceServerClient(url)
        try:
            if not client.is_model_ready(model):
                raise UserError(f"Triton at {url} has no ready model {model!r} (run `make serve` first)")
            params = client.get_model_config(model, as_json=True).get("config", {}).get("parameters", {})
        except tc.InferenceServerException as e:
            raise UserError(f"cannot reach Triton at {url}: {e}") from e
        finally:
            client.close()
        get = lambda k, d: params.get(k, {}).get("string_value", d)  # noqa: E731
        self._info: dict[str, Any] = {
            "model_id": get("model_id", model), "image_size": int(get("image_size", 128)),
            "fps": float(get("fps", 25)), "sample_rate": int(get("sample_rate", 16000)),
            "lookahead_frames": int(get("lookahead_frames", 2)),
        }

    def info(self) -> dict[str, Any]:
        return self._info

    def open(self, portrait_rgb: np.ndarray, *, crop_only: bool, temperature: float, seed: int) -> TritonSession:
        return TritonSession(self, portrait_rgb, crop_only, temperature, seed)

    def make_runner(self, session: TritonSession, inbox) -> TritonRunner:
        return TritonRunner(session, inbox)

"""Clients of the Triton models with the official ``tritonclient.grpc`` API (used by the tests and bench-triton).

- ``StreamClient``: one gRPC stream to the decoupled ``talking_head`` carrying any number of sequences;
  responses are routed back to their sequence by request id (``"<sequence>:<n>"``, echoed by Triton).
  ``open / push / end`` send requests; ``events(seq)`` yields ``Event``s (header, frame, end, error).
- ``run_utterance``: one whole utterance through ``talking_head`` (chunks of ``chunk`` samples, optionally
  paced in real time), returning the frames and the first-frame latency.
- ``step_windows`` / ``run_steps``: ``talking_head_step`` one frame per request (the client slices each
  frame's audio window: ``audio_left_context + samples_per_frame`` samples ending ``lookahead_frames`` after it).
"""

from __future__ import annotations

import json
import math
import queue
import re
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Event:
    kind: str  # "header" | "frame" | "end" | "error"
    t: float  # time.perf_counter() at arrival
    status: dict = field(default_factory=dict)
    index: int = -1
    tokens: np.ndarray | None = None
    image: np.ndarray | None = None
    message: str = ""


def _input(name: str, arr: np.ndarray, dtype: str):
    import tritonclient.grpc as grpcclient

    x = grpcclient.InferInput(name, list(arr.shape), dtype)
    x.set_data_from_numpy(arr)
    return x


class StreamClient:
    """Sequences over one ``talking_head`` stream; thread-safe sends, per-sequence event queues."""

    def __init__(self, url: str, model: str = "talking_head") -> None:
        import tritonclient.grpc as grpcclient

        self.model = model
        self.client = grpcclient.InferenceServerClient(url)
        self.queues: dict[str, queue.Queue] = defaultdict(queue.Queue)
        self.lock = threading.RLock()
        self._n = 0
        self._last = ""
        self._next: dict[str, int] = {}
        self._held: dict[str, dict] = {}
        self.client.start_stream(callback=self._callback)

    def _callback(self, result, error) -> None:
        now = time.perf_counter()
        if error is not None:
            # tritonclient drops the request id of an error response; Triton's sequence errors and ours name the
            # sequence ("sequence 12: ..."), other (validation) errors go to the sequence sent last.
            m = re.search(r"sequence (\d+)", str(error))
            seq = m.group(1) if m else self._last
            with self.lock:
                self._next.pop(seq, None)
                self._held.pop(seq, None)
                self.queues[seq].put(Event("error", now, message=str(error)))
            return
        resp = result.get_response()
        seq = resp.id.split(":")[0]
        names = {o.name for o in resp.outputs}
        with self.lock:
            if "status" in names:
                st = json.loads(bytes(result.as_numpy("status")[0]).decode())
                self._deliver(seq, Event(st.get("event", "status"), now, status=st))
            if "frame_index" in names:
                self._deliver(seq, Event("frame", now, index=int(result.as_numpy("frame_index").reshape(-1)[0]),
                                         tokens=result.as_numpy("tokens")[0], image=result.as_numpy("image")[0]))

    def _deliver(self, seq: str, ev: Event) -> None:
        """Put events in frame order: responses of different requests may overtake each other on the stream."""
        q, nxt, held = self.queues[seq], self._next.setdefault(seq, 0), self._held.setdefault(seq, {})
        if ev.kind == "frame":
            held[ev.index] = ev
        elif ev.kind == "end":
            held["end"] = ev
        else:
            q.put(ev)
        while nxt in held:
            q.put(held.pop(nxt))
            nxt += 1
        self._next[seq] = nxt
        if "end" in held and nxt >= held["end"].status.get("frames", 0):
            q.put(held.pop("end"))
            self._next.pop(seq, None)
            self._held.pop(seq, None)

    def _send(self, seq: int, inputs: list, start: bool = False, end: bool = False) -> None:
        with self.lock:
            self._n += 1
            self._last = str(seq)
            self.client.async_stream_infer(self.model, inputs, request_id=f"{seq}:{self._n}", sequence_id=seq,
                                           sequence_start=start, sequence_end=end)

    def open(self, seq: int, portrait: np.ndarray, crop_only: bool = False, temperature: float = 0.0,
             seed: int = 0) -> None:
        self._send(seq, [_input("portrait", np.ascontiguousarray(portrait[None], np.uint8), "UINT8"),
                         _input("crop_only", np.array([[crop_only]], bool), "BOOL"),
                         _input("temperature", np.array([[temperature]], np.float32), "FP32"),
                         _input("seed", np.array([[seed]], np.int64), "INT64")], start=True)

    def push(self, seq: int, pcm: np.ndarray, events: list[tuple[int, dict[str, float | None]]] | None = None,
             names: tuple[str, ...] = ("yaw", "pitch", "roll", "blink", "expression")) -> None:
        """PCM int16 chunk plus control events ``(frame or -1, {name: value or None})``."""
        ins = [_input("pcm", np.ascontiguousarray(pcm[None], np.int16), "INT16")]
        if events:
            fr = np.array([[f for f, _ in events]], np.int32)
            vals = np.zeros((1, len(events), len(names)), np.float32)
            mask = np.zeros_like(vals)
            for e, (_, d) in enumerate(events):
                for k, v in d.items():
                    j = names.index(k)
                    vals[0, e, j], mask[0, e, j] = (0.0, -1.0) if v is None else (v, 1.0)
            ins += [_input("control_frame", fr, "INT32"), _input("controls", vals, "FP32"),
                    _input("control_mask", mask, "FP32")]
        self._send(seq, ins)

    def end(self, seq: int) -> None:
        self._send(seq, [], end=True)

    def events(self, seq: int, timeout: float = 30.0):
        """Yield this sequence's events until its end (or an error); a silent server raises TimeoutError."""
        q = self.queues[str(seq)]
        while True:
            try:
                ev = q.get(timeout=timeout)
            except queue.Empty:
                raise TimeoutError(f"no response for sequence {seq} within {timeout} s") from None
            yield ev
            if ev.kind in ("end", "error"):
                return

    def close(self) -> None:
        self.client.stop_stream()
        self.client.close()


def run_utterance(sc: StreamClient, seq: int, portrait: np.ndarray, pcm: np.ndarray, chunk: int = 640,
                  realtime: bool = False, crop_only: bool = False, timeout: float = 60.0) -> dict:
    """Stream one utterance; returns {"header", "frames": [Event], "end", "first_frame_s", "wall_s", "errors"}."""
    t0 = time.perf_counter()
    sc.open(seq, portrait, crop_only=crop_only)
    for a in range(0, len(pcm), chunk):
        if realtime:  # pace like a microphone: chunk k is available at its end time
            time.sleep(max(0.0, t0 + (a + chunk) / 16000 - time.perf_counter()))
        sc.push(seq, pcm[a : a + chunk])
    sc.end(seq)
    out = {"header": None, "frames": [], "end": None, "errors": []}
    for ev in sc.events(seq, timeout):
        if ev.kind == "header":
            out["header"] = ev.status
        elif ev.kind == "frame":
            out["frames"].append(ev)
        elif ev.kind == "end":
            out["end"] = ev.status
        else:
            out["errors"].append(ev.message)
    out["wall_s"] = time.perf_counter() - t0
    out["first_frame_s"] = out["frames"][0].t - t0 if out["frames"] else math.nan
    return out


def step_windows(pcm: np.ndarray, dims: dict) -> np.ndarray:
    """Each frame's audio window for ``talking_head_step``: float32 [T, left + hop] (T = ceil(samples / hop))."""
    left, hop, look = int(dims["audio_left_context"]), int(dims["samples_per_frame"]), int(dims["lookahead_frames"])
    x = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm.astype(np.float32)
    total = math.ceil(len(x) / hop)
    stream = np.zeros(left + (total + look) * hop, np.float32)
    stream[left : left + len(x)] = x
    return np.stack([stream[(t + look) * hop : left + (t + look + 1) * hop] for t in range(total)])


def run_steps(url: str, crop: np.ndarray, pcm: np.ndarray, dims: dict, seq: int,
              model: str = "talking_head_step") -> tuple[np.ndarray, np.ndarray, list[float]]:
    """One ``infer`` per frame -> (tokens int32 [T, N], frames uint8 [T, S, S, 3], per-frame latencies s)."""
    import tritonclient.grpc as grpcclient

    c = grpcclient.InferenceServerClient(url)
    image = (crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
    C, N, K = int(dims["n_controls"]), int(dims["tokens_per_frame"]), int(dims["codebook_size"])
    fixed = [_input("image", np.ascontiguousarray(image), "FP32"),
             _input("controls", np.zeros((1, C), np.float32), "FP32"),
             _input("control_mask", np.zeros((1, C), np.float32), "FP32"),
             _input("temperature", np.zeros((1, 1), np.float32), "FP32"),
             _input("gumbel", np.zeros((1, N, K), np.float32), "FP32")]
    wins = step_windows(pcm, dims)
    toks, frames, lat = [], [], []
    for t, w in enumerate(wins):
        t0 = time.perf_counter()
        r = c.infer(model, [*fixed, _input("pcm", w[None], "FP32")], sequence_id=seq, sequence_start=t == 0,
                    sequence_end=t == len(wins) - 1)
        lat.append(time.perf_counter() - t0)
        toks.append(r.as_numpy("tokens")[0])
        img = r.as_numpy("frame")[0]
        frames.append((np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8).transpose(1, 2, 0))
    c.close()
    return np.stack(toks), np.stack(frames), lat

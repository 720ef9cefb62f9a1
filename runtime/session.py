"""Transport-free streaming sessions over the four graphs: portrait in, PCM chunks in, frames out.

The same code serves ``eartalking generate``, the gRPC server and the Triton Python models.

- ``Engine(onnx_dir | Backend)`` holds a backend and the dimensions it reads from the graphs' ONNX
  ``metadata_props`` (never hand-copied constants).
- ``Session(engine, portrait_rgb uint8 [H, W, 3], crop_only=False, temperature=0.0, seed=0)``: finds and
  aligns the face, runs ``tokenizer_encoder`` once (ref tokens [1, N] + ref features, kept in process).
  ``push_audio(pcm)`` takes 16 kHz mono chunks of any size (int16 or float32), runs ``audio_encoder`` on
  whole 640-sample frames with their left context, and steps the decoder for every frame whose audio plus
  ``lookahead_frames`` of future audio has arrived. ``end()`` pads the stream with zeros and flushes exactly
  the remaining frames (ceil(samples / 640) in all). ``close()`` frees the state.
- Audio timing (stream coordinates): the stream is prefixed with ``audio_left_context`` zeros; audio frame
  j covers stream[j*640 : left_context + (j+1)*640] and video frame t uses audio frame t + lookahead.
- Controls: ``set_controls(frame=k | "next", yaw=..., blink=...)``. A value holds from frame k until it is
  changed; ``None`` clears a signal (the model animates it from audio alone). Unknown signals,
  out-of-range values and frames already generated are errors.
- ``step_many(sessions)`` steps all sessions that have a frame ready in one ``step_decoder`` call and one
  ``tokenizer_decoder`` call per round (batch axis = sessions).

Per-session memory is bounded: consumed PCM and audio tokens are dropped, past control events too.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eartalking.cli import UserError
from eartalking.config import CONTROL_NAMES, CONTROL_RANGES
from eartalking.runtime.backends import Backend, load_backend
from eartalking.runtime.media import to_float_pcm
from eartalking.runtime.remote import LocalStepper

#: Most audio frames per ``audio_encoder`` call (export/specs.py AUDIO_FRAMES_PROFILE max).
MAX_AUDIO_FRAMES = 64
#: Most distinct future frames with control events pending in one session (bounds per-session memory).
MAX_PENDING_EVENTS = 100_000


@dataclass
class Frame:
    """One output video frame: ``image`` uint8 [h, w, 3] (the photo with the face pasted, or the crop)."""

    index: int
    time_s: float
    image: np.ndarray
    controls: dict[str, float] = field(default_factory=dict)
    tokens: np.ndarray | None = None  # int32 [N], the frame's visual tokens


_GRAPH_KEYS = {"graph", "inputs", "outputs", "trt_profiles", "axes", "state", "weights_sha256", "precision", "doc"}


def _parse(v: str):
    try:
        return json.loads(v)
    except (ValueError, TypeError):
        return v


class Engine:
    """A backend plus the model's dimensions from ONNX metadata.

    ``dims`` keys used here: image_size, tokens_per_frame, codebook_size, ref_shapes, sample_rate, fps,
    samples_per_frame, audio_tokens_per_frame, audio_dim, audio_left_context, lookahead_frames, n_controls,
    control_names, layers, heads, head_dim, window_len, sink_len.
    """

    def __init__(self, source: str | Path | Backend, device: str = "cpu", kind: str | None = None,
                 threads: int | None = None, load_faces: bool = True, warmup: bool = True,
                 overlap: bool | None = None, stepper=None) -> None:
        self.backend = source if isinstance(source, Backend) else load_backend(source, device, kind, threads)
        #: how step_decoder runs: in process with explicit state (default) or as a remote stateful model
        self.stepper = stepper if stepper is not None else LocalStepper()
        meta: dict = {}
        for g in ("tokenizer_encoder", "audio_encoder", "step_decoder"):  # graph-specific facts are left out
            meta.update({k: _parse(v) for k, v in self.backend.metadata(g).items() if k not in _GRAPH_KEYS})
        need = ("image_size", "tokens_per_frame", "codebook_size", "ref_shapes", "sample_rate", "fps",
                "samples_per_frame", "audio_tokens_per_frame", "audio_dim", "audio_left_context",
                "lookahead_frames", "control_names", "layers", "heads", "head_dim", "window_len", "sink_len")
        missing = [k for k in need if k not in meta]
        if missing:
            raise UserError(f"the model graphs lack metadata {missing}; re-export them with `eartalking export`")
        self.dims = meta
        self.S, self.N, self.K = int(meta["image_size"]), int(meta["tokens_per_frame"]), int(meta["codebook_size"])
        self.rate, self.fps, self.hop = int(meta["sample_rate"]), int(meta["fps"]), int(meta["samples_per_frame"])
        self.left, self.lookahead = int(meta["audio_left_context"]), int(meta["lookahead_frames"])
        names = meta["control_names"]
        self.control_names = tuple(names.split(",") if isinstance(names, str) else names)
        if set(self.control_names) != set(CONTROL_NAMES):
            raise UserError(f"model controls {self.control_names} differ from this package's {CONTROL_NAMES}")
        L, H, dh = int(meta["layers"]), int(meta["heads"]), int(meta["head_dim"])
        if load_faces:  # dlib's models take ~1.5 s to load: pay it at engine start, not at a session's first frame
            from eartalking.runtime import faces

            faces.load_models()
        self.state_shapes = {
            "sink_k": (L, H, int(meta["sink_len"]), dh), "sink_v": (L, H, int(meta["sink_len"]), dh),
            "window_k": (L, H, int(meta["window_len"]), dh), "window_v": (L, H, int(meta["window_len"]), dh),
        }
        # Overlap rendering with the next step on CPU ONNX Runtime with >= 2 threads (two graphs in flight)
        if overlap is None:
            overlap = self.backend.name == "onnxruntime" and self.backend.device == "cpu" and \
                getattr(self.backend, "threads", 1) >= 2
        self.overlap = bool(overlap)
        self._pool = None
        if warmup:
            self.warmup()

    @property
    def pool(self):
        """One worker thread that renders frames while the caller's thread steps the decoder."""
        if self._pool is None:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="eartalking-render")
        return self._pool

    def warmup(self) -> None:
        """Run every graph once at batch 1: the first call of a fresh backend pays its allocations and
        kernel selection (measured here: 290 ms vs 59 ms for a first frame), not a user's first frame."""
        rng = np.random.default_rng(0)
        tokens, refs = self.encode_portrait(rng.integers(0, 255, (self.S, self.S, 3), dtype=np.uint8))
        self.decode(tokens, refs)
        if self.stepper.remote or self.backend.is_remote("audio_encoder"):
            return  # remote graphs are warmed by their own server (and BLS is not allowed at model load)
        audio = self.encode_audio(np.zeros((1, self.left + self.hop), np.float32))
        feeds = {"start": np.ones((1, 1), np.int32), "ref_tokens": tokens, "audio_tokens": audio[:, 0],
                 "controls": np.zeros((1, len(self.control_names)), np.float32),
                 "control_mask": np.zeros((1, len(self.control_names)), np.float32),
                 "temperature": np.zeros((1, 1), np.float32), "gumbel": np.zeros((1, self.N, self.K), np.float32)}
        feeds |= {f"in_{k}": v for k, v in self.initial_state(tokens).items()}
        self.backend.run("step_decoder", feeds)

    # ---- graph calls (batch axis first everywhere) ----
    def encode_portrait(self, crop: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """crop uint8 [S, S, 3] -> (ref tokens int32 [1, N], ref features [1, C_i, H_i, W_i] finest first)."""
        image = (crop.astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
        out = self.backend.run("tokenizer_encoder", {"image": np.ascontiguousarray(image)})
        refs = [out[f"ref_{i}"] for i in range(len([k for k in out if k.startswith("ref_")]))]
        return out["tokens"].astype(np.int32), refs

    def encode_audio(self, pcm: np.ndarray) -> np.ndarray:
        """pcm float32 [B, left + n*hop] -> audio tokens float32 [B, n, A, D_a].

        Long inputs run in calls of at most ``MAX_AUDIO_FRAMES`` frames (the TensorRT profile's maximum),
        each with its left context, which gives the same tokens (valid convolutions only).
        """
        n = (pcm.shape[1] - self.left) // self.hop
        outs = []
        for a in range(0, n, MAX_AUDIO_FRAMES):
            b = min(n, a + MAX_AUDIO_FRAMES)
            chunk = np.ascontiguousarray(pcm[:, a * self.hop : self.left + b * self.hop], dtype=np.float32)
            outs.append(self.backend.run("audio_encoder", {"pcm": chunk})["audio_tokens"])
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)

    def decode(self, tokens: np.ndarray, refs: list[np.ndarray]) -> np.ndarray:
        """tokens int32 [B, N] + refs -> uint8 [B, S, S, 3]."""
        feeds = {"tokens": tokens.astype(np.int32)} | {f"ref_{i}": r for i, r in enumerate(refs)}
        img = self.backend.run("tokenizer_decoder", feeds)["image"]
        return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)

    def initial_state(self, ref_tokens: np.ndarray) -> dict[str, np.ndarray]:
        """Zero KV buffers [1, ...]; previous tokens = the portrait's tokens; frame 0."""
        st = {k: np.zeros((1, *s), np.float32) for k, s in self.state_shapes.items()}
        st["prev_tokens"] = ref_tokens.astype(np.int32).copy()
        st["frame"] = np.zeros((1, 1), np.int32)
        return st


class Session:
    """One streaming talking head. See the module docstring for the protocol."""

    def __init__(self, engine: Engine, portrait_rgb: np.ndarray, crop_only: bool = False,
                 temperature: float = 0.0, seed: int = 0, face=None) -> None:
        from eartalking.runtime import faces

        if not (temperature >= 0.0 and math.isfinite(temperature)):
            raise UserError(f"temperature must be a finite value >= 0, got {temperature}")
        self.engine, self.crop_only, self.temperature, self.seed = engine, crop_only, float(temperature), int(seed)
        self.face = face if face is not None else faces.prepare(portrait_rgb, engine.S, need_paste=not crop_only)
        self.ref_tokens, self.refs = engine.encode_portrait(self.face.crop)
        #: step_decoder state: explicit tensors (LocalStepper) or the remote sequence's id (RemoteStepper)
        self.state = engine.stepper.initial(engine, self.ref_tokens)
        self._pcm = np.zeros(engine.left, np.float32)  # stream buffer; [0] is stream sample self._pcm_at
        self._pcm_at = 0
        self._samples = 0  # real samples pushed
        self._audio_done = 0  # audio frames encoded
        self._tokens: list[np.ndarray] = []  # pending audio tokens [A, D_a] for audio frames _tok_at...
        self._tok_at = 0
        self.next_frame = 0  # index of the next video frame to generate
        self.closed = False
        self.total_frames: int | None = None  # known after end()
        self._events: dict[int, dict[str, float | None]] = {}
        self._current: dict[str, float | None] = dict.fromkeys(CONTROL_NAMES)
        h, w = (engine.S, engine.S) if crop_only else self.face.photo.shape[:2]
        self.header = {"width": w, "height": h, "fps": engine.fps, "sample_rate": engine.rate,
                       "image_size": engine.S, "lookahead_frames": engine.lookahead,
                       "first_frame_latency_s": (engine.lookahead + 1) / engine.fps}

    # ---- controls ----
    def set_controls(self, frame: int | str = "next", **values: float | None) -> int:
        """Request control values from ``frame`` on (``"next"`` = the next frame generated); returns the frame."""
        if self.closed:
            raise UserError("session is closed")
        k = self.next_frame if frame == "next" else frame
        if isinstance(k, bool) or not isinstance(k, int | np.integer):
            raise UserError(f"control frame must be an integer frame index or 'next', got {frame!r}")
        k = int(k)
        if k < self.next_frame:
            raise UserError(f"control for frame {k} comes too late: frames up to {self.next_frame - 1} are generated")
        if self.total_frames is not None and k >= self.total_frames:
            raise UserError(f"control for frame {k} is past the end: the video has {self.total_frames} frames")
        clean: dict[str, float | None] = {}
        for name, v in values.items():
            if name not in CONTROL_RANGES:
                raise UserError(f"unknown control signal {name!r}; known: {', '.join(CONTROL_NAMES)}")
            if v is not None:
                lo, hi = CONTROL_RANGES[name]
                try:
                    v = float(v)
                except (TypeError, ValueError):
                    raise UserError(f"control {name} must be a number, got {v!r}") from None
                if not (lo <= v <= hi):
                    raise UserError(f"control {name}={v} is out of range [{lo}, {hi}]")
            clean[name] = v
        if k not in self._events and len(self._events) >= MAX_PENDING_EVENTS:
            raise UserError(f"too many pending control events (limit {MAX_PENDING_EVENTS} future frames)")
        self._events.setdefault(k, {}).update(clean)
        return k

    def _controls_for(self, t: int) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
        self._current.update(self._events.pop(t, {}))
        vals = np.zeros((1, len(CONTROL_NAMES)), np.float32)
        mask = np.zeros((1, len(CONTROL_NAMES)), np.float32)
        given = {}
        for i, name in enumerate(self.engine.control_names):
            v = self._current[name]
            if v is not None:
                vals[0, i], mask[0, i], given[name] = v, 1.0, v
        return vals, mask, given

    # ---- audio ----
    def feed(self, pcm: np.ndarray) -> None:
        """Buffer PCM and encode every whole audio frame that has arrived; steps nothing (see step_many)."""
        if self.closed:
            raise UserError("session is closed")
        if self.total_frames is not None:
            raise UserError("session has ended: no more audio accepted")
        x = to_float_pcm(pcm)
        if x.size and not np.all(np.isfinite(x)):
            raise UserError("PCM contains NaN or infinite samples")
        self._samples += x.size
        self._pcm = np.concatenate([self._pcm, x]) if x.size else self._pcm
        self._encode_available()

    def _encode_available(self) -> None:
        e = self.engine
        have = self._pcm_at + self._pcm.size  # stream samples buffered so far
        n = (have - e.left) // e.hop - self._audio_done
        if n <= 0:
            return
        start = self._audio_done * e.hop - self._pcm_at
        chunk = self._pcm[start : start + e.left + n * e.hop]
        toks = e.encode_audio(chunk[None])[0]  # [n, A, D_a]
        self._tokens.extend(toks)
        self._audio_done += n
        drop = self._audio_done * e.hop - self._pcm_at  # keep only the next frame's left context
        self._pcm, self._pcm_at = self._pcm[drop:].copy(), self._pcm_at + drop

    def ready(self) -> int:
        """Frames that can be generated now (their audio plus lookahead has arrived)."""
        if self.state is None:
            return 0
        avail = self._audio_done - self.engine.lookahead
        if self.total_frames is not None:
            avail = min(avail, self.total_frames)
        return max(0, avail - self.next_frame)

    def push_audio(self, pcm: np.ndarray) -> list[Frame]:
        """Buffer a chunk of 16 kHz mono PCM (any size) and return the frames it completes.

        A long chunk (a whole file) is taken in pieces of ``MAX_AUDIO_FRAMES`` frames, so the pending audio
        tokens stay bounded whatever the chunk size.
        """
        piece = MAX_AUDIO_FRAMES * self.engine.hop
        pcm = np.asarray(pcm)
        if pcm.ndim != 1 or pcm.size <= piece:
            self.feed(pcm)
            return step_many([self])[0]
        out: list[Frame] = []
        for a in range(0, pcm.size, piece):
            self.feed(pcm[a : a + piece])
            out += step_many([self])[0]
        return out

    def finish(self) -> None:
        """Mark end of audio: pad the lookahead (and the last partial frame) with zeros; steps nothing."""
        if self.state is None or self.total_frames is not None:
            return
        e = self.engine
        self.total_frames = math.ceil(self._samples / e.hop)
        need = e.left + (self.total_frames + e.lookahead) * e.hop  # stream samples for the last frame's audio
        pad = need - (self._pcm_at + self._pcm.size)
        if pad > 0:
            self._pcm = np.concatenate([self._pcm, np.zeros(pad, np.float32)])
        self._encode_available()

    def end(self) -> list[Frame]:
        """End of audio: flush exactly the remaining frames (total = ceil(samples / 640))."""
        self.finish()
        out = step_many([self])[0]
        return out

    def close(self) -> None:
        """Free the per-session state (KV buffers, portrait features, buffers); further calls raise."""
        self.closed = True
        self._free()

    def _free(self) -> None:
        self.state = None
        self.refs, self._tokens, self._events = [], [], {}
        self._pcm = np.zeros(0, np.float32)
        self.face = None

    @property
    def done(self) -> bool:
        return self.total_frames is not None and self.next_frame >= self.total_frames

    def _take_audio(self) -> np.ndarray:
        t = self.next_frame + self.engine.lookahead  # audio frame index for this video frame
        i = t - self._tok_at
        tok = self._tokens[i]
        # audio frames before t are never needed again
        del self._tokens[: i + 1]
        self._tok_at = t + 1
        return tok


def _gumbel(s: Session, frame: int, n: int, k: int) -> np.ndarray:
    if s.temperature <= 0.0:
        return np.zeros((n, k), np.float32)
    from eartalking.sampling import gumbel_noise

    return np.asarray(gumbel_noise(s.seed, frame, (n, k)), np.float32).reshape(n, k)


def step_many(sessions: Sequence[Session]) -> list[list[Frame]]:
    """Generate every ready frame of ``sessions``, batching those ready together into one graph call per round.

    Returns, per session (same order), the frames made. Rounds repeat until no session has a frame ready.
    """
    out: list[list[Frame]] = [[] for _ in sessions]
    if not sessions:
        return out
    engine = sessions[0].engine
    if any(s.engine is not engine for s in sessions):
        raise ValueError("step_many needs sessions of one engine")
    pending: list = []
    while True:
        idx = [i for i, s in enumerate(sessions) if s.ready() > 0]
        if not idx:
            break
        batch = [sessions[i] for i in idx]
        feeds: dict[str, list[np.ndarray]] = {k: [] for k in ("start", "ref_tokens", "audio_tokens", "controls",
                                                               "control_mask", "temperature", "gumbel")}
        given = []
        for s in batch:
            t = s.next_frame
            vals, mask, g = s._controls_for(t)
            given.append(g)
            feeds["start"].append(np.full((1, 1), 1 if t == 0 else 0, np.int32))
            feeds["ref_tokens"].append(s.ref_tokens)
            feeds["audio_tokens"].append(s._take_audio()[None].astype(np.float32))
            feeds["controls"].append(vals)
            feeds["control_mask"].append(mask)
            feeds["temperature"].append(np.full((1, 1), s.temperature, np.float32))
            feeds["gumbel"].append(_gumbel(s, t, engine.N, engine.K)[None])
        arrays = {k: (v[0] if len(v) == 1 else np.concatenate(v)) for k, v in feeds.items()}
        tokens = engine.stepper.step(engine, batch, arrays)
        refs = [np.concatenate([s.refs[r] for s in batch]) if len(batch) > 1 else batch[0].refs[r]
                for r in range(len(batch[0].refs))]
        job = (idx, batch, [s.next_frame for s in batch], given, tokens)
        # rendering (tokenizer_decoder + paste) of this round overlaps the next round's step_decoder
        render = engine.pool.submit(_render, engine, batch, tokens, refs) if engine.overlap else \
            _render(engine, batch, tokens, refs)
        pending.append((job, render))
        for s in batch:
            s.next_frame += 1
    for (idx, _batch, ts, given, tokens), render in pending:
        images = render.result() if engine.overlap else render
        for j, (i, t) in enumerate(zip(idx, ts, strict=True)):
            out[i].append(Frame(t, t / engine.fps, images[j], given[j], tokens[j]))
    for s in sessions:  # the last frame is out: free the state now, not only at close()
        if s.done and s.state is not None:
            s._free()
    return out


def _render(engine: Engine, batch: list[Session], tokens: np.ndarray, refs: list[np.ndarray]) -> list[np.ndarray]:
    """tokens [B, N] -> one image per session: the crop, or the photo with the crop pasted back."""
    crops = engine.decode(tokens, refs)
    return [crops[j] if s.crop_only else s.face.paste(crops[j]) for j, s in enumerate(batch)]

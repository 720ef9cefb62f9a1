"""Business logic of the decoupled ``talking_head`` model: many streaming sessions over one ``Engine``.

Transport-free (no Triton import), so it is tested directly; ``models/talking_head/1/model.py`` only turns
Triton requests into ``Chunk``s and ``Result``s into responses.

Protocol (per sequence = one correlation id; every tensor is optional per request):
  START request: ``portrait`` uint8 [H, W, 3] (any photo; the face is found and aligned), optional
      ``crop_only`` bool [1], ``temperature`` fp32 [1], ``seed`` int64 [1]. Its reply starts with a
      header status ``{"event": "header", "width", "height", "fps", "sample_rate", "lookahead_frames", ...}``.
  any request: ``pcm`` int16 [n] (16 kHz mono, any n); control events ``control_frame`` int32 [E]
      (-1 = the next frame generated), ``controls`` fp32 [E, C] and ``control_mask`` fp32 [E, C]
      (1 = set this value, -1 = clear it so audio drives it again, 0 = leave it); events apply before the audio
      of the same request. Every frame that becomes ready is streamed out as its own response.
  END request: flushes the remaining frames; the last response carries ``{"event": "end", "frames": total}``.
A request whose sequence is unknown (no START, ended, reaped after the idle timeout), a START without a
portrait, or a bad value gets an error response naming the problem; the sequence, if live, stays live.

Sessions that have frames ready in one ``execute`` batch are stepped together (``step_many``: one
``step_decoder`` + one ``tokenizer_decoder`` call per round, batch axis = sessions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from eartalking.cli import UserError
from eartalking.runtime.session import Engine, Frame, Session, step_many

from .sequences import SequenceStore


@dataclass
class Chunk:
    """One parsed request of a sequence."""

    corrid: Any
    start: bool = False
    end: bool = False
    portrait: np.ndarray | None = None
    pcm: np.ndarray | None = None
    control_frame: np.ndarray | None = None  # int [E]
    controls: np.ndarray | None = None  # float [E, C]
    control_mask: np.ndarray | None = None  # float [E, C]
    crop_only: bool = False
    temperature: float = 0.0
    seed: int = 0


@dataclass
class Result:
    """What one request gets back: statuses (header/end dicts), frames, or an error message."""

    statuses: list[dict] = field(default_factory=list)
    frames: list[Frame] = field(default_factory=list)
    error: str | None = None
    end: dict | None = None  # the final status at END


class StreamingHost:
    """Live ``Session``s by correlation id, freed at END and after ``idle_s`` without requests."""

    def __init__(self, engine: Engine, idle_s: float, on_change=None) -> None:
        self.engine = engine
        self.store: SequenceStore[Session] = SequenceStore(idle_s, on_free=lambda s: s.close(), on_change=on_change)

    def _events(self, c: Chunk) -> list[tuple[int | str, dict[str, float | None]]]:
        if c.control_frame is None and c.controls is None and c.control_mask is None:
            return []
        if c.control_frame is None or c.controls is None or c.control_mask is None:
            raise UserError("control events need all three of control_frame [E], controls [E, C], control_mask [E, C]")
        names = self.engine.control_names
        frames = np.asarray(c.control_frame).reshape(-1)
        vals = np.asarray(c.controls, np.float32).reshape(-1, len(names))
        mask = np.asarray(c.control_mask, np.float32).reshape(-1, len(names))
        if not (len(frames) == len(vals) == len(mask)):
            raise UserError(f"control events disagree in count: control_frame {len(frames)}, controls {len(vals)}, "
                            f"control_mask {len(mask)} (controls and control_mask are [E, {len(names)}])")
        out = []
        for f, v, m in zip(frames, vals, mask, strict=True):
            values: dict[str, float | None] = {}
            for name, x, k in zip(names, v, m, strict=True):
                if k > 0:
                    values[name] = float(x)
                elif k < 0:
                    values[name] = None
            out.append(("next" if int(f) < 0 else int(f), values))
        return out

    def _apply(self, c: Chunk, res: Result) -> Session | None:
        """Apply one chunk's portrait/options, controls, audio and END to its session; no stepping."""
        if c.start:
            if c.portrait is None:
                raise UserError("the START request of a sequence must carry `portrait` (uint8 [H, W, 3]); "
                                "audio and controls come after it")
            s = Session(self.engine, c.portrait, crop_only=c.crop_only, temperature=c.temperature, seed=c.seed)
            self.store.start(c.corrid, s)
            res.statuses.append({"event": "header", **s.header})
        else:
            if c.portrait is not None:
                raise UserError("`portrait` is accepted only on the START request of a sequence")
            s = self.store.get(c.corrid)
        for frame, values in self._events(c):
            s.set_controls(frame=frame, **values)
        if c.pcm is not None and c.pcm.size:
            s.feed(c.pcm)
        if c.end:
            s.finish()
        return s

    def handle(self, chunks: list[Chunk]) -> list[Result]:
        """Apply every chunk in order, then step all touched sessions together; one Result per chunk."""
        self.store.reap()
        results = [Result() for _ in chunks]
        last: dict[int, tuple[Session, int]] = {}  # id(session) -> (session, index of its last chunk here)
        for i, c in enumerate(chunks):
            try:
                s = self._apply(c, results[i])
            except (UserError, ValueError) as e:  # SequenceError is a ValueError; so are bad array shapes
                results[i].error = str(e)
                if c.end:  # the client is done with this sequence either way
                    self.store.end(c.corrid)
                continue
            last[id(s)] = (s, i)
        sessions = [s for s, _ in last.values()]
        try:
            made = step_many(sessions)
        except Exception as e:  # a graph failure: report it to every request of this batch, free those sessions
            for _s, i in last.values():
                results[i].error = f"generation failed: {e}"
                self.store.end(chunks[i].corrid)
            return results
        for (s, i), frames in zip(last.values(), made, strict=True):
            results[i].frames = frames
            if chunks[i].end:
                results[i].end = {"event": "end", "frames": int(s.total_frames or 0)}
                self.store.end(chunks[i].corrid)
        return results

    def close(self) -> None:
        self.store.stop()

"""How a gRPC stream drives its session: in its own thread, or through one shared batching scheduler.

``DirectRunner`` calls the session from the stream's thread (any object with the Session API).
``Scheduler`` owns every attached session in one thread: it applies each stream's queued operations in
order (feed PCM, set controls, finish, close) until that session has a frame ready, then steps all
sessions with ready frames together through ``step_many`` (one ``step_decoder`` + one
``tokenizer_decoder`` call per round, batch axis = sessions), and hands each stream its frames through
the stream's inbox. Sessions are touched only by the scheduler thread, so they need no locks.
Requires the runtime's split API: ``feed(pcm)``, ``ready() -> int``, ``finish()``, ``done``, ``close()``
and a module-level ``step_many(sessions) -> list[list[Frame]]``.

Inbox items put by the scheduler: ``("frames", [Frame], t_arrival)``, ``("error", exc)``, ``("done",)``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

log = logging.getLogger("eartalking.serve")


class DirectRunner:
    """Session calls in the calling thread; every method returns the frames it made."""

    batched = False

    def __init__(self, session: Any) -> None:
        self.session = session

    def feed(self, pcm: np.ndarray, t: float) -> list:
        return self.session.push_audio(pcm)

    def set_controls(self, frame: int, values: dict[str, float]) -> None:
        self.session.set_controls(frame=frame, **values)

    def end(self, t: float) -> list:
        return self.session.end()

    def close(self) -> None:
        self.session.close()

    def backlog(self) -> int:
        return 0


class BatchedRunner:
    """A stream's handle on the scheduler: operations are queued; frames arrive in ``inbox``."""

    batched = True

    def __init__(self, sched: Scheduler, session: Any, inbox) -> None:
        self.sched, self.session, self.inbox = sched, session, inbox
        self.ops: deque = deque()
        self.pending_samples = 0
        self.t_last = time.monotonic()
        self.ending = False
        self.finished = False

    def feed(self, pcm: np.ndarray, t: float) -> list:
        self.sched._submit(self, ("feed", pcm, t))
        return []

    def set_controls(self, frame: int, values: dict[str, float]) -> None:
        self.sched._submit(self, ("controls", frame, values))

    def end(self, t: float) -> list:
        self.sched._submit(self, ("end", t))
        return []

    def close(self) -> None:
        self.sched._submit(self, ("close",), drop_pending=True)

    def backlog(self) -> int:
        """PCM samples queued but not yet given to the session."""
        return self.pending_samples


class Scheduler:
    """One thread that batches ready frames of all attached sessions (see the module docstring)."""

    def __init__(self, step_many: Callable[[Sequence[Any]], list[list]], max_batch: int = 32,
                 on_batch: Callable[[int], None] | None = None) -> None:
        self.step_many = step_many
        self.on_batch = on_batch
        self.max_batch = max_batch
        self.cv = threading.Condition()
        self.runners: list[BatchedRunner] = []
        self.stopped = False
        self.rounds = 0
        self.batched_frames = 0
        self._thread = threading.Thread(target=self._loop, name="eartalking-scheduler", daemon=True)
        self._thread.start()

    def attach(self, session: Any, inbox) -> BatchedRunner:
        r = BatchedRunner(self, session, inbox)
        with self.cv:
            self.runners.append(r)
        return r

    def stop(self) -> None:
        with self.cv:
            self.stopped = True
            self.cv.notify()
        self._thread.join(10)

    def _submit(self, r: BatchedRunner, op: tuple, drop_pending: bool = False) -> None:
        with self.cv:
            if drop_pending:
                r.ops.clear()
                r.pending_samples = 0
            if op[0] == "feed":
                r.pending_samples += len(op[1])
            r.ops.append(op)
            self.cv.notify()

    # ---- scheduler thread ----
    def _has_work(self) -> bool:
        return any(r.ops or (not r.finished and r.session.ready() > 0) for r in self.runners)

    def _apply(self, r: BatchedRunner) -> None:
        """Apply r's operations in order until its session has a frame ready (so frames follow message order)."""
        s = r.session
        while True:
            with self.cv:
                if not r.ops or (not r.finished and s.ready() > 0):
                    return
                op = r.ops.popleft()
                if op[0] == "feed":
                    r.pending_samples -= len(op[1])
            kind = op[0]
            if r.finished and kind != "close":  # ended or failed: only the close still matters
                continue
            if kind == "feed":
                s.feed(op[1])
                r.t_last = op[2]
            elif kind == "controls":
                s.set_controls(frame=op[1], **op[2])
            elif kind == "end":
                s.finish()
                r.ending, r.t_last = True, op[1]
            elif kind == "close":
                s.close()
                r.finished = True
                with self.cv:
                    self.runners.remove(r)
                return

    def _loop(self) -> None:
        while True:
            with self.cv:
                while not self.stopped and not self._has_work():
                    self.cv.wait(0.5)
                if self.stopped:
                    return
                runners = list(self.runners)
            ready = []
            for r in runners:
                try:
                    self._apply(r)
                except Exception as e:  # the session rejected an operation: that stream ends, others go on
                    r.finished = True
                    r.inbox.put(("error", e))
                    continue
                if r.finished:
                    continue
                if r.session.ready() > 0:
                    ready.append(r)
                elif r.ending and r.session.done:
                    r.finished = True
                    r.inbox.put(("done",))
            for i in range(0, len(ready), self.max_batch):
                group = ready[i : i + self.max_batch]
                try:
                    outs = self.step_many([r.session for r in group])
                except Exception as e:  # a backend failure: every stream of this batch ends with it
                    log.exception("step_many failed for %d session(s)", len(group))
                    for r in group:
                        r.finished = True
                        r.inbox.put(("error", e))
                    continue
                self.rounds += 1
                if self.on_batch is not None:
                    self.on_batch(len(group))
                for r, frames in zip(group, outs, strict=True):
                    self.batched_frames += len(frames)
                    if frames:
                        r.inbox.put(("frames", frames, r.t_last))
                    if r.ending and r.session.done:
                        r.finished = True
                        r.inbox.put(("done",))

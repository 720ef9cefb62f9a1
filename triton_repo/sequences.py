"""Per-sequence state for Triton Python models, keyed by correlation id (transport-free, testable without Triton).

Triton's sequence batcher routes every request of a sequence to one model instance and hands it the
control tensors START / END / READY / CORRID, but a Python model must keep the state itself, and Triton
never tells it that a sequence timed out (its reaper frees the batcher slot and calls no model). So:

- ``SequenceStore.start(corrid, value)`` creates (or restarts) a sequence; ``get`` finds it (a clear
  ``SequenceError`` when it is unknown: no START, already ended, or reaped); ``end`` frees it at once.
- ``reap()`` frees every sequence idle for more than ``idle_s`` (the model's ``max_sequence_idle_microseconds``);
  it runs on every ``execute`` and from a daemon thread, so abandoned sequences go away without traffic.
- ``on_change(n)`` is called with the live count after every change (the models export it as the
  ``eartalking_live_sequences`` gauge), ``on_free(value)`` lets a value release what it holds.

``Controls`` reads one request's control tensors; padding requests (READY = 0, sent by the ``direct``
strategy beside real ones) must be skipped by the caller.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SequenceError(ValueError):
    """A request that does not fit its sequence's lifecycle (no START, unknown or reaped id)."""


@dataclass(frozen=True)
class Controls:
    """Sequence-batcher control values of one request."""

    corrid: int | str
    start: bool
    end: bool
    ready: bool = True


class SequenceStore(Generic[T]):
    """Live sequences by correlation id with idle reaping; thread-safe (one lock)."""

    def __init__(self, idle_s: float, on_free: Callable[[T], None] | None = None,
                 on_change: Callable[[int], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if idle_s <= 0:
            raise ValueError(f"idle timeout must be > 0 s, got {idle_s}")
        self.idle_s, self.on_free, self.on_change, self.clock = float(idle_s), on_free, on_change, clock
        self.lock = threading.RLock()
        self._items: dict[Any, list] = {}  # corrid -> [value, last_seen]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __len__(self) -> int:
        with self.lock:
            return len(self._items)

    def __contains__(self, corrid: Any) -> bool:
        with self.lock:
            return corrid in self._items

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(len(self._items))

    def _free(self, value: T) -> None:
        if self.on_free is not None:
            self.on_free(value)

    def start(self, corrid: Any, value: T) -> T:
        """Register ``value`` for ``corrid`` (a START); an older sequence with the same id is freed first."""
        with self.lock:
            old = self._items.pop(corrid, None)
            if old is not None:
                self._free(old[0])
            self._items[corrid] = [value, self.clock()]
            self._changed()
            return value

    def get(self, corrid: Any) -> T:
        """The live value of ``corrid`` (touching it), or ``SequenceError`` naming what went wrong."""
        with self.lock:
            item = self._items.get(corrid)
            if item is None:
                raise SequenceError(
                    f"sequence {corrid} is not live: its first request must carry START, and a sequence is "
                    f"freed at END or after {self.idle_s:g} s without requests")
            item[1] = self.clock()
            return item[0]

    def end(self, corrid: Any) -> bool:
        """Free ``corrid`` now; returns whether it was live."""
        with self.lock:
            item = self._items.pop(corrid, None)
            if item is None:
                return False
            self._free(item[0])
            self._changed()
            return True

    def reap(self, now: float | None = None) -> list:
        """Free every sequence idle for more than ``idle_s``; returns their ids."""
        with self.lock:
            now = self.clock() if now is None else now
            gone = [k for k, (_, seen) in self._items.items() if now - seen > self.idle_s]
            for k in gone:
                self._free(self._items.pop(k)[0])
            if gone:
                self._changed()
            return gone

    def clear(self) -> None:
        with self.lock:
            for value, _ in self._items.values():
                self._free(value)
            self._items.clear()
            self._changed()

    def start_reaper(self, interval_s: float | None = None) -> None:
        """Reap from a daemon thread every ``interval_s`` (default: a quarter of the idle timeout, 0.05..5 s)."""
        if self._thread is not None:
            return
        period = interval_s or min(5.0, max(0.05, self.idle_s / 4))

        def loop() -> None:
            while not self._stop.wait(period):
                self.reap()

        self._thread = threading.Thread(target=loop, name="sequence-reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self.clear()

"""Graph calls that run in another model server (Triton BLS), behind the runtime's backend interface.

Transport-free: a ``Transport`` (``triton_repo/bls.py`` in a Triton Python model, a fake in the tests) sends
requests; this module decides what to send. Two pieces:

- ``RoutedBackend(local, transport, remote={"audio_encoder"})``: a ``Backend`` whose ``run`` sends the named
  stateless graphs through the transport and runs the others in process (the portrait graphs stay local:
  their reference features, ~1 MB per frame, never cross a process boundary, DESIGN §4).
- ``RemoteStepper(transport)``: steps ``step_decoder`` as a *stateful* remote model. A session's KV state lives
  in the server (Triton implicit state on the GPU flavour, the Python model's per-sequence store on the CPU
  flavour), keyed by a correlation id this stepper allocates. Each ready session sends one request per frame
  with only the per-frame inputs (ref_tokens [1, N], audio_tokens [1, 1, A, D_a], controls [1, C],
  control_mask [1, C], temperature [1, 1], gumbel [1, N, K]); frame 0 carries the START flag (the graph's
  ``start`` input is Triton's START control) and the last frame the END flag, which frees the server's state.
  All requests of one round go out together, so the server's sequence batcher can batch them with other
  clients' sequences. A session dropped before its last frame is freed by the server's idle timeout.

``LocalStepper`` is the in-process default: explicit ``in_*`` state tensors concatenated across the batch.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from eartalking.runtime.backends import Backend

STATE_NAMES: tuple[str, ...] = ("sink_k", "sink_v", "window_k", "window_v", "prev_tokens", "frame")


@dataclass
class Request:
    """One remote inference: inputs with batch axis 1, the outputs wanted, and the sequence fields."""

    feeds: dict[str, np.ndarray]
    outputs: tuple[str, ...]
    corrid: int = 0
    start: bool = False
    end: bool = False


class Transport(Protocol):
    def infer(self, graph: str, requests: Sequence[Request]) -> list[dict[str, np.ndarray]]:
        """Send all ``requests`` to model ``graph`` at once (so they can be batched); outputs in order.
        Raises ``RuntimeError`` naming the model on the first failed request."""
        ...


class RoutedBackend(Backend):
    """``local`` for most graphs, ``transport`` for the graphs in ``remote`` (stateless ones only)."""

    def __init__(self, local: Backend, transport: Transport, remote: Sequence[str] = ("audio_encoder",),
                 outputs: dict[str, tuple[str, ...]] | None = None) -> None:
        self.local, self.transport, self.remote = local, transport, frozenset(remote)
        self.outputs = {"audio_encoder": ("audio_tokens",), **(outputs or {})}
        self.name = f"{local.name}+remote"
        self.device = getattr(local, "device", "cpu")
        self.threads = getattr(local, "threads", 1)

    def is_remote(self, graph: str) -> bool:
        return graph in self.remote

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if graph not in self.remote:
            return self.local.run(graph, feeds)
        n = next(iter(feeds.values())).shape[0]
        reqs = [Request({k: v[i : i + 1] for k, v in feeds.items()}, self.outputs[graph]) for i in range(n)]
        res = self.transport.infer(graph, reqs)
        return {k: np.concatenate([r[k] for r in res]) for k in res[0]}

    def metadata(self, graph: str) -> dict[str, str]:
        return self.local.metadata(graph)

    def close(self) -> None:
        self.local.close()


class LocalStepper:
    """``step_decoder`` in process with explicit state: ``in_*`` concatenated over the batch, ``out_*`` split."""

    remote = False

    def initial(self, engine, ref_tokens: np.ndarray) -> dict[str, np.ndarray]:
        return engine.initial_state(ref_tokens)

    def step(self, engine, batch: Sequence[Any], feeds: dict[str, np.ndarray]) -> np.ndarray:
        """feeds: per-frame inputs with batch axis = sessions (``start`` included) -> tokens int32 [B, N]."""
        arrays = dict(feeds)
        for name in STATE_NAMES:
            parts = [s.state[name] for s in batch]
            arrays[f"in_{name}"] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        res = engine.backend.run("step_decoder", arrays)
        for j, s in enumerate(batch):
            s.state = {name: res[f"out_{name}"][j : j + 1] for name in STATE_NAMES}
        return res["tokens"].astype(np.int32)


@dataclass
class RemoteState:
    """What a session holds when its decoder state lives in the server: the sequence's correlation id."""

    corrid: int
    ended: bool = False  # END was sent: the server has freed the sequence


class RemoteStepper:
    """``step_decoder`` as a stateful remote model (see the module docstring)."""

    remote = True
    #: step_decoder inputs sent per frame; ``start`` is the server's START control, the state is implicit.
    SENT = ("ref_tokens", "audio_tokens", "controls", "control_mask", "temperature", "gumbel")

    def __init__(self, transport: Transport, id_base: int | None = None) -> None:
        self.transport = transport
        # Correlation ids of this process: bit 62 set + pid in bits 32..61, so they never meet a client's
        # small ids (talking_head_step) nor another talking_head instance's.
        self.id_base = id_base if id_base is not None else (1 << 62) | ((os.getpid() & 0x3FFFFFFF) << 32)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    def initial(self, engine, ref_tokens: np.ndarray) -> RemoteState:
        with self._lock:
            return RemoteState(self.id_base | (next(self._ids) & 0xFFFFFFFF))

    def step(self, engine, batch: Sequence[Any], feeds: dict[str, np.ndarray]) -> np.ndarray:
        reqs = []
        for j, s in enumerate(batch):
            st: RemoteState = s.state
            if st.ended:
                raise RuntimeError(f"sequence {st.corrid} of step_decoder has already ended")
            last = s.total_frames is not None and s.next_frame == s.total_frames - 1
            one = {k: feeds[k][j : j + 1] for k in self.SENT}
            one["audio_tokens"] = one["audio_tokens"][:, None]  # [1, 1, A, D_a]: the model's per-frame dims
            reqs.append(Request(one, ("tokens",), st.corrid, start=s.next_frame == 0, end=last))
        res = self.transport.infer("step_decoder", reqs)
        for s, r in zip(batch, reqs, strict=True):
            s.state.ended = r.end
        return np.concatenate([r["tokens"].reshape(1, -1) for r in res]).astype(np.int32)

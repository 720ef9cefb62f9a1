"""CPU-flavour logic of the four graph models inside ``talking_head_step`` (no Triton import; tested directly).

Each Triton request carries one frame's tensors with a leading batch axis of 1; a model gets a list of
requests (from different sequences, batched by the ``oldest`` sequence batcher) and answers each with a
dict of outputs or an exception. The ONNX graphs run through the runtime's ``Engine`` backend (ONNX
Runtime, in this process). Per-sequence state lives in a ``SequenceStore`` keyed by correlation id:

- ``audio_encoder``: stateless; ``pcm`` [1, left + n*hop] -> ``audio_tokens`` [1, n, A, D_a] (equal lengths
  are batched into one call).
- ``tokenizer_encoder``: at START encodes ``image`` [1, 3, S, S] and keeps the portrait tokens; later requests
  get the kept ``tokens`` [1, N] without running the graph.
- ``step_decoder``: state ``in_*`` -> ``out_*`` kept per sequence (START = ``Engine.initial_state``); the ready
  requests run as one batch; -> ``tokens`` [1, N].
- ``tokenizer_decoder``: at START computes the portrait's reference features from ``image`` and keeps them
  in this process (DESIGN §4: they never cross a process boundary per frame); ``tokens`` [1, N] -> ``image``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from eartalking.runtime.remote import STATE_NAMES
from eartalking.runtime.session import Engine

from .sequences import Controls, SequenceError, SequenceStore

Feeds = dict[str, np.ndarray]


class GraphModel:
    """Base: stateless, runs the graph on the concatenated requests."""

    stateful = False

    def __init__(self, graph: str, engine: Engine, idle_s: float = 60.0,
                 on_change: Callable[[int], None] | None = None) -> None:
        self.graph, self.engine = graph, engine
        self.store: SequenceStore = SequenceStore(idle_s, on_change=on_change)

    def execute(self, reqs: list[Feeds], ctrls: list[Controls | None]) -> list[Feeds | Exception]:
        self.store.reap()
        out: list[Feeds | Exception] = [ValueError("not run")] * len(reqs)
        groups: dict[tuple, list[int]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault(tuple((k, v.shape[1:]) for k, v in sorted(r.items())), []).append(i)
        for idx in groups.values():
            feeds = {k: np.concatenate([reqs[i][k] for i in idx]) for k in reqs[idx[0]]}
            res = self.engine.backend.run(self.graph, feeds)
            for j, i in enumerate(idx):
                out[i] = {k: v[j : j + 1] for k, v in res.items()}
        return out


    def admit(self, reqs: list[Feeds], ctrls: list, on_start: Callable[[Feeds], object]
              ) -> tuple[list[Feeds | Exception], list[int]]:
        """Open sequences whose request has START (state = ``on_start(request)``) and return the answer list
        (pre-filled with each failing request's SequenceError) and the indices of the requests with state."""
        self.store.reap()
        out: list[Feeds | Exception] = [ValueError("not run")] * len(reqs)
        live: list[int] = []
        for i, (r, c) in enumerate(zip(reqs, ctrls, strict=True)):
            try:
                if c.start:
                    self.store.start(c.corrid, on_start(r))
                self.store.get(c.corrid)
                live.append(i)
            except SequenceError as e:
                out[i] = e
        return out, live

    def finish(self, ctrls: list) -> None:
        """Free the state of every sequence that ended with this batch."""
        for c in ctrls:
            if c.end:
                self.store.end(c.corrid)


class TokenizerEncoder(GraphModel):
    stateful = True

    def execute(self, reqs, ctrls):
        self.store.reap()
        out: list[Feeds | Exception] = []
        for r, c in zip(reqs, ctrls, strict=True):
            try:
                if c.start:
                    toks = self.engine.backend.run(self.graph, {"image": r["image"].astype(np.float32)})["tokens"]
                    self.store.start(c.corrid, toks.astype(np.int32))
                out.append({"tokens": self.store.get(c.corrid)})
                if c.end:
                    self.store.end(c.corrid)
            except SequenceError as e:
                out.append(e)
        return out


class TokenizerDecoder(GraphModel):
    stateful = True

    def execute(self, reqs, ctrls):
        n_refs = len(self.engine.dims["ref_shapes"])

        def refs(r: Feeds) -> list[np.ndarray]:
            res = self.engine.backend.run("tokenizer_encoder", {"image": r["image"].astype(np.float32)})
            return [res[f"ref_{k}"] for k in range(n_refs)]

        out, live = self.admit(reqs, ctrls, refs)
        if live:
            refs = [self.store.get(ctrls[i].corrid) for i in live]
            feeds = {"tokens": np.concatenate([reqs[i]["tokens"] for i in live]).astype(np.int32)}
            feeds |= {f"ref_{k}": np.concatenate([r[k] for r in refs]) for k in range(len(refs[0]))}
            img = self.engine.backend.run(self.graph, feeds)["image"]
            for j, i in enumerate(live):
                out[i] = {"image": img[j : j + 1]}
        self.finish(ctrls)
        return out


class StepDecoder(GraphModel):
    stateful = True

    def execute(self, reqs, ctrls):
        out, live = self.admit(reqs, ctrls, lambda r: self.engine.initial_state(r["ref_tokens"].astype(np.int32)))
        if live:
            states = [self.store.get(ctrls[i].corrid) for i in live]
            feeds = {k: np.concatenate([reqs[i][k] for i in live]) for k in reqs[live[0]]}
            feeds["start"] = np.array([[1 if ctrls[i].start else 0] for i in live], np.int32)
            feeds["audio_tokens"] = feeds["audio_tokens"].reshape(len(live), *feeds["audio_tokens"].shape[-2:])
            feeds |= {f"in_{n}": np.concatenate([s[n] for s in states]) for n in STATE_NAMES}
            res = self.engine.backend.run(self.graph, feeds)
            for j, i in enumerate(live):
                self.store.start(ctrls[i].corrid, {n: res[f"out_{n}"][j : j + 1] for n in STATE_NAMES})
                out[i] = {"tokens": res["tokens"][j : j + 1].astype(np.int32)}
        self.finish(ctrls)
        return out


MODELS: dict[str, type[GraphModel]] = {
    "audio_encoder": GraphModel, "tokenizer_encoder": TokenizerEncoder,
    "step_decoder": StepDecoder, "tokenizer_decoder": TokenizerDecoder,
}


def make(graph: str, engine: Engine, idle_s: float, on_change=None) -> GraphModel:
    return MODELS[graph](graph, engine, idle_s, on_change)

"""Thin Triton adapter shared by the CPU-flavour graph models (``models/<graph>/1/model.py`` subclass it).

Reads each request's inputs (batch axis 1 per request), skips READY = 0 padding, runs
``graph_models.make(graph)`` on the batch and answers every request with its outputs or a clear error.
"""

from __future__ import annotations

import json
from typing import Any

from . import adapter, graph_models


class GraphAdapter:
    pb: Any = None  # triton_python_backend_utils, set by the subclass in model.py
    graph = ""

    def initialize(self, args: dict) -> None:
        cfg = json.loads(args["model_config"])
        self.names = [i["name"] for i in cfg["input"]]
        self.outputs = [o["name"] for o in cfg["output"]]
        engine, p = adapter.load_engine(args)
        self.model = graph_models.make(self.graph, engine, adapter.idle_seconds(p), adapter.gauge(self.pb, self.graph))
        if self.model.stateful:
            self.model.store.start_reaper()

    def execute(self, requests: list) -> list:
        pb = self.pb
        responses: list = [None] * len(requests)
        idx, feeds, ctrls = [], [], []
        for i, r in enumerate(requests):
            c = adapter.controls(pb, r) if self.model.stateful else None
            if self.model.stateful and c is None:  # READY = 0 padding: answer and skip
                responses[i] = pb.InferenceResponse([])
                continue
            idx.append(i)
            feeds.append(adapter.inputs(pb, r, self.names))
            ctrls.append(c)
        try:
            results = self.model.execute(feeds, ctrls) if idx else []
        except Exception as e:  # noqa: BLE001 (answer every request, keep serving)
            results = [e] * len(idx)
        for i, res in zip(idx, results, strict=True):
            if isinstance(res, Exception):
                responses[i] = adapter.error(pb, f"{self.graph}: {res}")
            else:
                responses[i] = pb.InferenceResponse([adapter.tensor(pb, k, v) for k, v in res.items()
                                                     if k in self.outputs])
        return responses

    def finalize(self) -> None:
        self.model.store.stop()

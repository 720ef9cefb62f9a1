"""BLS transport: ``runtime.remote.Transport`` over Triton Python-backend requests to other models.

Used by ``talking_head`` when its config parameter ``graph_calls`` is ``bls`` (the GPU flavour's default):
``audio_encoder`` and ``step_decoder`` then run in the server's own graph models, so Triton's sequence batcher
batches every session of every ``talking_head`` instance into one ``step_decoder`` execution, and the decoder
state stays in the server (implicit state on the GPU). The requests of one call go out together
(``async_exec`` under one event loop), otherwise the batcher would see them one at a time.

``pb`` is ``triton_python_backend_utils`` (passed in: this module imports nothing from Triton). Outputs are
asked for in CPU memory (a TensorRT model answers from the GPU otherwise) and read through DLPack
(see adapter.py for why not ``as_numpy``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import numpy as np

from eartalking.runtime.remote import Request

from . import adapter


class BlsTransport:
    """Send graph requests to the models of the same Triton server."""

    def __init__(self, pb: Any, timeout_us: int = 0) -> None:
        self.pb = pb
        self.timeout_us = int(timeout_us)
        self.cpu = pb.PreferredMemory(pb.TRITONSERVER_MEMORY_CPU, 0) if hasattr(pb, "PreferredMemory") else None

    def _request(self, graph: str, r: Request) -> Any:
        pb = self.pb
        flags = (pb.TRITONSERVER_REQUEST_FLAG_SEQUENCE_START if r.start else 0) | \
            (pb.TRITONSERVER_REQUEST_FLAG_SEQUENCE_END if r.end else 0)
        kw: dict[str, Any] = {"correlation_id": int(r.corrid), "flags": flags} if r.corrid else {}
        if self.cpu is not None:
            kw["preferred_memory"] = self.cpu
        if self.timeout_us:
            kw["timeout"] = self.timeout_us
        return pb.InferenceRequest(model_name=graph, requested_output_names=list(r.outputs),
                                   inputs=[adapter.tensor(pb, k, v) for k, v in r.feeds.items()], **kw)

    def infer(self, graph: str, requests: Sequence[Request]) -> list[dict[str, np.ndarray]]:
        reqs = [self._request(graph, r) for r in requests]
        if len(reqs) == 1:
            responses = [reqs[0].exec()]
        else:
            async def together() -> list:
                return list(await asyncio.gather(*[q.async_exec() for q in reqs]))

            responses = asyncio.run(together())
        out = []
        for r, resp in zip(requests, responses, strict=True):
            if resp.has_error():
                raise RuntimeError(f"{graph}: {resp.error().message()}")
            out.append({k: adapter.array(self.pb.get_output_tensor_by_name(resp, k)) for k in r.outputs})
        return out

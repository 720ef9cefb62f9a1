"""``talking_head`` in BLS mode on a real tritonserver: audio_encoder and step_decoder run as requests to the
graph models (one correlation id per session), as in the GPU flavour; here the graph models are the CPU
flavour's Python models, whose per-sequence store stands in for TensorRT's implicit state.

The frames must equal the embedded runtime's (identical tokens), the decoder's sequences must live in
``step_decoder`` (its live-sequence gauge) and be freed by the END of each talking_head sequence.
"""

from __future__ import annotations

import time

import pytest

from eartalking.triton_repo.client import StreamClient

from test_triton_server import _embedded, _gauge, _pcm, _same

pytestmark = pytest.mark.triton


def _wait(srv, model: str, want: float, timeout: float = 10.0) -> float:
    t0 = time.monotonic()
    while _gauge(srv, model) != want and time.monotonic() - t0 < timeout:
        time.sleep(0.05)
    return _gauge(srv, model)


def test_bls_talking_head_matches_embedded_and_end_frees_decoder_state(triton_bls, th_engine, portrait):
    pcms = {7: _pcm(21, 11.4), 8: _pcm(22, 8.6), 9: _pcm(23, 5.0)}
    refs = {k: _embedded(th_engine, portrait, p, crop_only=True) for k, p in pcms.items()}
    assert len({tuple(r[-1].tokens) for r in refs.values()}) > 1, "references must differ to show no cross-talk"
    sc = StreamClient(triton_bls.grpc_url)
    try:
        for k in pcms:
            sc.open(k, portrait, crop_only=True)
        for a in range(0, max(len(p) for p in pcms.values()), 900):  # interleaved, unaligned chunks
            for k, p in pcms.items():
                if a < len(p):
                    sc.push(k, p[a : a + 900])
        # mid-stream: each session's decoder state is a live sequence of the step_decoder model
        assert _wait(triton_bls, "step_decoder", 3) == 3
        assert _gauge(triton_bls, "talking_head") == 3
        for k in pcms:
            sc.end(k)
        for k, ref in refs.items():
            evs = list(sc.events(k))
            assert [e.message for e in evs if e.kind == "error"] == []
            _same([e for e in evs if e.kind == "frame"], ref)
            assert evs[-1].kind == "end"
        # END of each talking_head sequence carried END to its step_decoder sequence: freed at once, not reaped
        assert _gauge(triton_bls, "step_decoder") == 0 and _gauge(triton_bls, "talking_head") == 0
        # every frame was one step_decoder inference of the server (batched when frames were ready together)
        import tritonclient.grpc as grpcclient

        stats = grpcclient.InferenceServerClient(triton_bls.grpc_url).get_inference_statistics("step_decoder")
        assert stats.model_stats[0].inference_count == sum(len(r) for r in refs.values())
    finally:
        sc.close()


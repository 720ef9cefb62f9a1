"""``talking_head`` in BLS mode on a real tritonserver: audio_encoder and step_decoder run as requests to the
graph models (one correlation id per session), as in the GPU flavour; here the graph models are the CPU
flavour's Python models, whose per-sequence store stands in for TensorRT's implicit state.

The frames must equal the embedded runtime's (identical tokens), the decoder's sequences must live in
``step_decoder`` (its live-sequence gauge) and be freed by the END of each talking_head sequence.
Also here: stopping a server while a client is still streaming is bounded and leaves no processes behind.
"""

from __future__ import annotations

import time

import pytest
from test_triton_server import _embedded, _gauge, _open_and_push, _pcm, _same

from eartalking.triton_repo.client import StreamClient

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
        _open_and_push(sc, portrait, pcms, 900)  # interleaved, unaligned chunks
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



def _stub_pids(repo) -> list[int]:
    """Python-backend stub processes serving models of ``repo`` (their command line names the model path)."""
    import os

    pids = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                cmd = open(f"/proc/{d}/cmdline", "rb").read().decode(errors="replace")
            except OSError:
                continue
            if "triton_python_backend_stub" in cmd and str(repo) in cmd:
                pids.append(int(d))
    return pids


def test_stop_with_a_stream_in_flight_is_bounded_and_leaves_no_processes(th_onnx, portrait, tmp_path):
    """A client still streaming holds Triton's sequence-aware shutdown; stop() must still end everything."""
    import threading

    from eartalking.triton_repo import serve
    from eartalking.triton_repo.render import Options, render

    repo = tmp_path / "repo"  # its own repository, so only this server's stubs name it
    render(th_onnx, repo, Options("cpu", idle_s=60.0))
    srv = serve.TritonServer(repo, log_path=tmp_path / "stop.log", exit_timeout_s=2).start()
    sc = StreamClient(srv.grpc_url)
    sc.open(5, portrait, crop_only=True)
    halt = threading.Event()

    def pump() -> None:
        for i in range(10_000):
            if halt.is_set():
                return
            try:
                sc.push(5, _pcm(100 + i, 1))
            except Exception:  # noqa: BLE001 (the server going away ends the stream)
                return
            time.sleep(0.02)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    time.sleep(1.0)
    assert _stub_pids(repo), "the stubs should be running before the stop"
    proc, t0 = srv.proc, time.monotonic()
    srv.stop()
    took = time.monotonic() - t0
    halt.set()
    sc.close()
    assert proc.poll() is not None and took < 2 + 5 + 3
    deadline = time.monotonic() + 5
    while _stub_pids(repo) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _stub_pids(repo) == []

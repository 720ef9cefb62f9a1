"""A real tritonserver (CPU, Python backend) on loopback serving a random test_small export.

References are the embedded runtime's frames (runtime/session.py over the same ONNX graphs): tokens must be
identical, images within 1 grey level (ONNX Runtime may round differently at another batch size).
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest

from eartalking.triton_repo.client import StreamClient, run_steps, run_utterance

IDLE_S = 2.0  # the render in conftest.py uses this idle timeout

pytestmark = pytest.mark.triton


def _pcm(seed: int, frames: float) -> np.ndarray:
    """Speech-like random PCM: noise bursts under a slow envelope (fresh per seed)."""
    rng = np.random.default_rng(seed)
    n = int(frames * 640)
    env = np.abs(np.sin(np.linspace(0, rng.uniform(3, 9), n))) ** 2
    return (rng.standard_normal(n) * env * 6000).clip(-32768, 32767).astype(np.int16)


def _embedded(engine, portrait, pcm, crop_only=False):
    from eartalking.runtime.session import Session

    s = Session(engine, portrait, crop_only=crop_only)
    frames = []
    for a in range(0, len(pcm), 1000):
        frames += s.push_audio(pcm[a : a + 1000])
    frames += s.end()
    s.close()
    return frames


def _same(got_frames, ref_frames):
    assert [f.index for f in got_frames] == list(range(len(ref_frames)))
    for g, r in zip(got_frames, ref_frames, strict=True):
        np.testing.assert_array_equal(g.tokens, r.tokens)
        assert g.image.shape == r.image.shape
        assert np.abs(g.image.astype(int) - r.image.astype(int)).max() <= 1


def _open_and_push(sc, portrait, pcms: dict, chunk: int) -> None:
    """Open every sequence (crop only), then send their audio round-robin, ``chunk`` samples at a time."""
    for k in pcms:
        sc.open(k, portrait, crop_only=True)
    for a in range(0, max(len(p) for p in pcms.values()), chunk):
        for k, p in pcms.items():
            if a < len(p):
                sc.push(k, p[a : a + chunk])


def _gauge(srv, model: str) -> float:
    m = re.search(rf'eartalking_live_sequences\{{model="{model}"\}} (\S+)', srv.metrics())
    assert m, "live-sequence gauge missing from the metrics endpoint"
    return float(m.group(1))


@pytest.fixture()
def sc(triton):
    c = StreamClient(triton.grpc_url)
    yield c
    c.close()


def test_stream_matches_embedded(triton, sc, th_engine, portrait):
    pcm = _pcm(1, 13.3)  # 14 frames, a partial last one, past the 3-frame window wrap
    ref = _embedded(th_engine, portrait, pcm)
    out = run_utterance(sc, 11, portrait, pcm, chunk=700)
    assert out["errors"] == []
    assert out["header"]["width"] == portrait.shape[1] and out["header"]["fps"] == 25
    assert out["end"] == {"event": "end", "frames": len(ref)} and len(ref) == 14
    _same(out["frames"], ref)


def test_step_ensemble_matches_embedded(triton, th_engine, portrait):
    from eartalking.runtime import faces

    pcm = _pcm(2, 9.5)
    ref = _embedded(th_engine, portrait, pcm, crop_only=True)
    crop = faces.prepare(portrait, th_engine.S, need_paste=False).crop
    toks, frames, _ = run_steps(triton.grpc_url, crop, pcm, th_engine.dims, seq=21)
    assert len(toks) == len(ref) == 10
    np.testing.assert_array_equal(toks, np.stack([f.tokens for f in ref]))
    assert np.abs(frames.astype(int) - np.stack([f.image for f in ref]).astype(int)).max() <= 1
    for model in ("tokenizer_encoder", "step_decoder", "tokenizer_decoder"):  # END of the last step freed them
        assert _gauge(triton, model) == 0


def test_four_interleaved_sequences(triton, sc, th_engine, portrait):
    pcms = {30 + i: _pcm(10 + i, 6 + 2 * i) for i in range(4)}
    refs = {k: _embedded(th_engine, portrait, p, crop_only=True) for k, p in pcms.items()}
    assert len({tuple(r[-1].tokens) for r in refs.values()}) > 1, "references must differ to show no cross-talk"
    _open_and_push(sc, portrait, pcms, 640)  # round-robin, one frame of audio each
    for k in pcms:
        sc.end(k)
    for k, ref in refs.items():
        evs = list(sc.events(k))
        assert [e.message for e in evs if e.kind == "error"] == []
        _same([e for e in evs if e.kind == "frame"], ref)


def test_end_frees_at_once_and_idle_sequences_are_reaped(triton, sc, portrait):
    sc.open(41, portrait, crop_only=True)
    sc.push(41, _pcm(3, 4))
    sc.open(42, portrait, crop_only=True)
    sc.push(42, _pcm(4, 4))
    deadline = time.monotonic() + 10
    while _gauge(triton, "talking_head") < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gauge(triton, "talking_head") == 2
    sc.end(42)
    assert [e.kind for e in sc.events(42)][-1] == "end"
    assert _gauge(triton, "talking_head") == 1  # END freed 42 before its final response was sent
    t0 = time.monotonic()  # 41 is abandoned without END: reaped after the idle timeout
    while _gauge(triton, "talking_head") > 0 and time.monotonic() - t0 < IDLE_S + 5:
        time.sleep(0.1)
    assert _gauge(triton, "talking_head") == 0
    sc.push(41, _pcm(5, 1))  # Triton freed its slot too: the next request without START is refused
    err = [e for e in sc.events(41) if e.kind == "error"]
    assert err and "START" in err[0].message


def test_bad_inputs_get_clear_errors_and_server_keeps_serving(triton, sc, portrait):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    from eartalking.triton_repo.client import _input

    c = grpcclient.InferenceServerClient(triton.grpc_url)
    bad = [
        ([_input("portrait", np.zeros((1, 8, 8, 4), np.uint8), "UINT8")], "portrait"),  # wrong shape
        ([_input("portrait", np.zeros((1, 8, 8, 3), np.float32), "FP32")], "portrait"),  # wrong dtype
    ]
    for i, (inputs, word) in enumerate(bad):
        sc._send(50 + i, inputs, start=True)
        err = [e for e in sc.events(50 + i) if e.kind == "error"]
        assert err and word in err[0].message, err
    # no START: a new sequence id that never started
    sc.push(52, _pcm(6, 1))
    err = [e for e in sc.events(52) if e.kind == "error"]
    assert err and "START" in err[0].message
    # audio before the portrait: START carrying only audio
    sc._send(53, [_input("pcm", _pcm(7, 1)[None], "INT16")], start=True)
    err = [e for e in sc.events(53) if e.kind == "error"]
    assert err and "portrait" in err[0].message
    # a photo without a face
    sc.open(54, np.full((96, 96, 3), 128, np.uint8))
    err = [e for e in sc.events(54) if e.kind == "error"]
    assert err and "face" in err[0].message
    # wrong pcm shape on the step ensemble
    with pytest.raises(InferenceServerException, match="pcm"):
        c.infer("talking_head_step", [_input("pcm", np.zeros((1, 5), np.float32), "FP32")], sequence_id=55,
                sequence_start=True)
    c.close()
    out = run_utterance(sc, 56, portrait, _pcm(8, 3), chunk=640, crop_only=True)  # still serving
    assert out["errors"] == [] and len(out["frames"]) == 3
    # an error of one sequence reaches that sequence only, while another streams on the same stream
    sc.open(57, portrait, crop_only=True)
    sc._send(58, [_input("pcm", _pcm(9, 1)[None], "INT16")], start=True)
    sc.push(57, _pcm(10, 3))
    sc.end(57)
    assert [e.kind for e in sc.events(58)] == ["error"]
    kinds = [e.kind for e in sc.events(57)]
    assert kinds == ["header", "frame", "frame", "frame", "end"]


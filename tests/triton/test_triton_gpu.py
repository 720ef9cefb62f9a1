"""GPU flavour on a real tritonserver with TensorRT: plans built from the test_small export, ``talking_head``
over BLS to the ``tensorrt_plan`` graph models (implicit state), ``talking_head_step`` as an ensemble.

Runs where a GPU, the ``tensorrt`` Python package and a tritonserver with the TensorRT backend exist (NVIDIA's
Triton container: ``EARTALKING_TRITONSERVER=/opt/tritonserver/bin/tritonserver``); skips with the reason
elsewhere. Reference: the embedded ONNX Runtime CPU runtime. fp32 on two devices may flip a rare near-tie, so
tokens must agree on >= 99% of positions (the same bound as tests/runtime/test_gpu.py).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from test_triton_server import _embedded, _gauge, _open_and_push, _pcm

pytestmark = [pytest.mark.gpu, pytest.mark.triton]


def _why_not() -> str | None:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return "needs the tensorrt Python package (NVIDIA's TensorRT/Triton container)"
    if not shutil.which("nvidia-smi"):
        return "needs an NVIDIA GPU (nvidia-smi not found)"
    binary = os.environ.get("EARTALKING_TRITONSERVER", "")
    if not (binary and os.path.isfile(binary)):
        return ("needs EARTALKING_TRITONSERVER = a tritonserver with the TensorRT backend "
                "(/opt/tritonserver/bin/tritonserver)")
    return None


@pytest.fixture(scope="module")
def triton_gpu(th_onnx, tmp_path_factory):
    why = _why_not()
    if why:
        pytest.skip(why)
    import tensorrt as trt

    from eartalking.export.build_engines import build_all
    from eartalking.triton_repo import serve
    from eartalking.triton_repo.render import Options, render

    root = tmp_path_factory.mktemp("gpu")
    build_all(trt, th_onnx, root / "engines", None, set(), 1024, force=False)
    render(th_onnx, root / "repo", Options("gpu", idle_s=5.0, max_sequences=8), engines=root / "engines")
    with serve.TritonServer(root / "repo", log_path=root / "tritonserver.log") as srv:
        yield srv


def _agree(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float((a == b).mean())


def test_gpu_talking_head_bls_and_ensemble_match_embedded(triton_gpu, th_engine, portrait):
    from eartalking.runtime import faces
    from eartalking.triton_repo.client import StreamClient, run_steps

    pcms = {3: _pcm(31, 10.2), 4: _pcm(32, 7.7)}
    refs = {k: np.stack([f.tokens for f in _embedded(th_engine, portrait, p, crop_only=True)]) for k, p in pcms.items()}
    sc = StreamClient(triton_gpu.grpc_url)
    try:
        _open_and_push(sc, portrait, pcms, 800)
        for k in pcms:
            sc.end(k)
        for k, ref in refs.items():
            evs = list(sc.events(k))
            assert [e.message for e in evs if e.kind == "error"] == []
            got = np.stack([e.tokens for e in evs if e.kind == "frame"])
            assert _agree(got, ref) >= 0.99
        assert _gauge(triton_gpu, "talking_head") == 0
    finally:
        sc.close()
    crop = faces.prepare(portrait, th_engine.S, need_paste=False).crop
    toks, _frames, _lat = run_steps(triton_gpu.grpc_url, crop, pcms[3], th_engine.dims, seq=77)
    assert _agree(toks, refs[3]) >= 0.99

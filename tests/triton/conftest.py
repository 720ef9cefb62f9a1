"""Fixtures: a random-weight test_small export, the rendered CPU repository and one real tritonserver.

The server (the binary from the nvidia-pytriton wheel) runs on 127.0.0.1 with free ports for the whole
session and is always stopped. The render uses a 2 s idle timeout so the reaping test is quick.
"""

from __future__ import annotations

import os

import pytest

IDLE_S = 2.0  # keep in sync with test_triton_server.py


@pytest.fixture(scope="session")
def th_onnx(tmp_path_factory):
    from eartalking.export.onnx import export_all
    from eartalking.model.checkpoint import random_model

    model = random_model("test_small", seed=0)
    out = tmp_path_factory.mktemp("th_onnx")
    export_all(model, model.cfg, out, {"preset": "test_small", "random_seed": 0})
    return out


@pytest.fixture(scope="session")
def th_engine(th_onnx):
    from eartalking.runtime.session import Engine

    return Engine(th_onnx, threads=1)


@pytest.fixture(scope="session")
def th_repo(th_onnx, tmp_path_factory):
    from eartalking.triton_repo.render import Options, render

    out = tmp_path_factory.mktemp("th_repo") / "repo"
    render(th_onnx, out, Options("cpu", idle_s=IDLE_S, max_sequences=8, queue_delay_us=200))
    return out


@pytest.fixture(scope="session")
def triton(th_repo):
    from eartalking.triton_repo import serve

    try:
        serve.wheel_root()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"tritonserver is not installed: {e}")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    srv = serve.TritonServer(th_repo, log_path=th_repo.parent / "tritonserver.log")
    with srv:
        yield srv


@pytest.fixture(scope="session")
def triton_bls(th_onnx, tmp_path_factory):
    """A second server whose ``talking_head`` calls audio_encoder/step_decoder through BLS (the GPU layout)."""
    from eartalking.triton_repo import serve
    from eartalking.triton_repo.render import Options, render

    try:
        serve.wheel_root()
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"tritonserver is not installed: {e}")
    repo = tmp_path_factory.mktemp("th_repo_bls") / "repo"
    render(th_onnx, repo, Options("cpu", idle_s=IDLE_S, max_sequences=8, queue_delay_us=2000,
                                  talking_head_graphs="bls"))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    with serve.TritonServer(repo, log_path=repo.parent / "tritonserver.log") as srv:
        yield srv


@pytest.fixture(scope="session")
def portrait():
    from skimage import data

    return data.astronaut()

"""Shared fixtures for the runtime tests: one random-weight ``test_small`` export (the real exporter) per run."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_model():
    from eartalking.model.checkpoint import random_model

    return random_model("test_small", seed=0)


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory, small_model):
    from eartalking.export.onnx import export_all

    out = tmp_path_factory.mktemp("onnx_small")
    export_all(small_model, small_model.cfg, out, {"preset": "test_small", "random_seed": 0})
    return out


@pytest.fixture(scope="session")
def engine(onnx_dir):
    from eartalking.runtime.session import Engine

    return Engine(onnx_dir, threads=1)


@pytest.fixture(scope="session")
def portrait():
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def face(engine, portrait):
    from eartalking.runtime import faces

    return faces.prepare(portrait, engine.S)

"""Fixtures shared across test folders: one random-weight ``test_small`` model and its export (the real
exporter) per test session, so the runtime and Triton tests do not each export the same graphs."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def small_model():
    from eartalking.model.checkpoint import random_model

    return random_model("test_small", seed=0)


@pytest.fixture(scope="session")
def small_onnx(tmp_path_factory, small_model):
    from eartalking.export.onnx import export_all

    out = tmp_path_factory.mktemp("onnx_small")
    export_all(small_model, small_model.cfg, out, {"preset": "test_small", "random_seed": 0})
    return out

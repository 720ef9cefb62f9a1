"""Shared fixtures: one random-weight test_small model exported once per test session."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def small_model():
    import torch

    from eartalking.model.checkpoint import random_model

    torch.set_num_threads(1)
    return random_model("test_small", seed=0)


@pytest.fixture(scope="session")
def exported(small_model, tmp_path_factory):
    """(model, cfg, onnx_dir, manifest) for test_small with random weights (seed 0)."""
    from eartalking.export.onnx import export_all

    out = tmp_path_factory.mktemp("onnx")
    manifest = export_all(small_model, small_model.cfg, out, {"preset": "test_small", "random_seed": 0})
    return small_model, small_model.cfg, out, manifest

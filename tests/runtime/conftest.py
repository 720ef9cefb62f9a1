"""Shared fixtures for the runtime tests (the ``test_small`` model and export come from tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def onnx_dir(small_onnx):
    return small_onnx


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

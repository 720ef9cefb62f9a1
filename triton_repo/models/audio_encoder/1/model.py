"""Triton Python model ``audio_encoder`` (CPU flavour): thin adapter over triton_repo/graph_models.py."""

import triton_python_backend_utils as pb

from eartalking.triton_repo.triton_graph import GraphAdapter


class TritonPythonModel(GraphAdapter):
    pb = pb
    graph = "audio_encoder"

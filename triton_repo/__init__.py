"""NVIDIA Triton Inference Server deployment of EARTalking (``eartalking.triton_repo``).

- ``render``: ``eartalking triton-repo --flavor cpu|gpu`` fills ``templates/<model>/config.pbtxt.tmpl`` from the
  ONNX metadata into a model repository (graphs, ``talking_head``, ``talking_head_step``).
- ``serve``: ``eartalking triton-serve`` / ``TritonServer``: the tritonserver binary of the nvidia-pytriton wheel
  on loopback (CPU, Python backend).
- ``streaming`` / ``graph_models`` / ``sequences``: transport-free logic of the Python models (per-sequence
  state by correlation id, END and idle reaping); ``adapter`` / ``triton_graph`` / ``models/*/1/model.py``:
  the thin Triton glue.
- ``client``: tritonclient gRPC clients of ``talking_head`` (streaming) and ``talking_head_step``;
  ``bench``: ``make bench-triton``.
"""

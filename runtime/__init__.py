"""The embedded runtime (installed as ``eartalking.runtime``): portrait + streamed speech -> video frames.

- ``backends``: one graph interface, ``run(graph, feeds) -> dict``, over ONNX Runtime (``*.onnx``), TensorRT
  (``*.plan``, lazy import) and the PyTorch model (``torch_backend``, lazy import), chosen by artifact.
- ``session``: ``Engine`` (graphs + dimensions from ONNX metadata), transport-free streaming ``Session``
  and ``step_many`` (sessions ready together share one graph call); used by the CLI, gRPC and Triton.
- ``faces``: find / align / crop the face of any photo, paste generated crops back (feathered).
- ``media``: WAV in (any format), portraits in (with limits), MP4 out (H.264 + AAC, tagged as generated).
- ``generate`` / ``bench``: the ``eartalking generate`` and ``eartalking bench`` commands.

Nothing here imports torch unless the torch backend is chosen.
"""

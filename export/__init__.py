"""Export (installed as ``eartalking.export``): PyTorch model -> four ONNX graphs -> TensorRT plans.

- ``specs``         one GraphSpec per graph (I/O, dtypes, dynamic axes, TensorRT profiles, precision)
- ``onnx``          ``eartalking export``: trace, compose, write metadata + manifest.json
- ``wrappers``      the traced modules and the PyTorch reference of each graph
- ``compose``       joins the sink and step parts of ``step_decoder`` with an ONNX ``If`` on ``start``
- ``verify``        ``eartalking verify``: checker, PyTorch vs ONNX Runtime (+ Polygraphy), streaming,
                    batching; ``--backend tensorrt`` compares plans with ONNX Runtime
- ``parity``/``feeds``  comparison helpers and fresh random inputs
- ``trt_support``   operators vs TensorRT 10's ONNX support table (``trt_ops_data``), without TensorRT
- ``build_engines`` ONNX -> TensorRT plans with stamps (stdlib + tensorrt only; runs in NVIDIA's container)
Nothing here is imported by ``eartalking.model``; torch is imported only by the modules that trace or compare.
"""

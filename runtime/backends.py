"""Graph backends: one interface, ``run(graph, feeds) -> dict``, over ONNX Runtime, TensorRT or PyTorch.

The four graphs (``tokenizer_encoder``, ``tokenizer_decoder``, ``audio_encoder``, ``step_decoder``) have the
I/O that docs/INTERFACES.md and export/specs.py fix; a backend maps graph name -> named numpy inputs ->
named numpy outputs, and exposes each graph's ``metadata`` (the dimensions export wrote). The backend is
chosen by artifact: a folder of ``*.onnx`` -> ONNX Runtime, of ``*.plan`` -> TensorRT, a checkpoint folder
(``config.json`` + ``model.safetensors``) -> the PyTorch model. ``tensorrt`` and ``torch`` are imported
only when their backend is chosen, so a CPU install needs neither.

Usage: backend = load_backend("build/onnx"); out = backend.run("audio_encoder", {"pcm": pcm})
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from eartalking.cli import UserError

GRAPHS: tuple[str, ...] = ("tokenizer_encoder", "tokenizer_decoder", "audio_encoder", "step_decoder")
BACKENDS: tuple[str, ...] = ("onnxruntime", "tensorrt", "torch")


class Backend:
    """Runs named graphs on named numpy arrays. Subclasses fill ``run`` and ``metadata``."""

    name = "base"
    device = "cpu"

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def metadata(self, graph: str) -> dict[str, str]:
        """The graph's ``metadata_props`` (string values), e.g. ``tokens_per_frame``, ``window``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release sessions / engines."""

    def is_remote(self, graph: str) -> bool:
        """Whether ``graph`` runs in another server (runtime/remote.py); such graphs are not warmed here."""
        return False


def physical_cores() -> int:
    """Physical cores this process may run on (CPU affinity respected: taskset, containers' cpusets)."""
    try:
        allowed = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        allowed = os.cpu_count() or 2
    try:
        import psutil

        n = psutil.cpu_count(logical=False) or allowed
        logical = psutil.cpu_count() or allowed
        # with SMT, the allowed logical CPUs hold about allowed * physical / logical physical cores
        return max(1, min(allowed, round(allowed * n / logical)))
    except ImportError:
        return max(1, allowed)


class OrtBackend(Backend):
    """ONNX Runtime over ``DIR/<graph>.onnx``: CPU EP, or CUDA EP first when ``device='cuda'`` and present.

    Session options: graph optimisation level ALL, sequential execution, ``threads`` intra-op threads
    (default: the number of physical cores), one inter-op thread, no spin-waiting unless ``spin``.
    """

    name = "onnxruntime"

    def __init__(self, onnx_dir: str | Path, device: str = "cpu", threads: int | None = None,
                 spin: bool = False) -> None:
        import onnxruntime as ort

        self.dir = Path(onnx_dir)
        missing = [g for g in GRAPHS if not (self.dir / f"{g}.onnx").is_file()]
        if missing:
            raise UserError(f"{self.dir}: missing ONNX graphs {missing}; run `make export` (or eartalking export)")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.intra_op_num_threads = int(threads or physical_cores())
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # Spin-waiting worker threads are fast on an idle machine but collapse when the cores are shared
        # (measured here under load: 2 threads 213 ms/frame spinning vs 57 ms not); off unless asked.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        providers = ["CPUExecutionProvider"]
        if device == "auto":  # CUDA EP where this onnxruntime build has it, else CPU
            device = "cuda" if "CUDAExecutionProvider" in ort.get_available_providers() else "cpu"
        if device.startswith("cuda"):
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UserError("device 'cuda' asked, but this onnxruntime has no CUDAExecutionProvider "
                                "(install onnxruntime-gpu) ")
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        self.device, self.threads = device, opts.intra_op_num_threads
        self.sessions = {g: ort.InferenceSession(str(self.dir / f"{g}.onnx"), opts, providers=providers)
                         for g in GRAPHS}
        self._outputs = {g: [o.name for o in s.get_outputs()] for g, s in self.sessions.items()}
        self._inputs = {g: {i.name for i in s.get_inputs()} for g, s in self.sessions.items()}

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        sess = self.sessions[graph]
        feeds = {k: v for k, v in feeds.items() if k in self._inputs[graph]}
        return dict(zip(self._outputs[graph], sess.run(self._outputs[graph], feeds), strict=True))

    def metadata(self, graph: str) -> dict[str, str]:
        return dict(self.sessions[graph].get_modelmeta().custom_metadata_map)

    def close(self) -> None:
        self.sessions.clear()


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """``metadata_props`` of one ONNX file, read without building a session (onnx, weights not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


class TensorRTBackend(Backend):
    """TensorRT plans ``DIR/<graph>.plan`` on a CUDA GPU; buffers are torch CUDA tensors (no pycuda needed).

    Dimensions come from the ONNX graphs the plans were built from (``--onnx`` folder or ``DIR/manifest.json``).
    """

    name = "tensorrt"

    def __init__(self, engine_dir: str | Path, onnx_dir: str | Path | None = None, device: str = "cuda") -> None:
        try:
            import tensorrt as trt  # lazy: only GPU installs have it
        except ImportError:
            raise UserError("the tensorrt backend needs TensorRT (`import tensorrt` failed); it is not installable "
                            "from PyPI here: run inside NVIDIA's TensorRT/Triton container, or use "
                            "--backend onnxruntime") from None
        import torch

        if not torch.cuda.is_available():
            raise UserError("the tensorrt backend needs a CUDA GPU; none is visible")
        self.dir, self.device, self.torch, self.trt = Path(engine_dir), "cuda", torch, trt
        missing = [g for g in GRAPHS if not (self.dir / f"{g}.plan").is_file()]
        if missing:
            raise UserError(f"{self.dir}: missing TensorRT plans {missing}; run `make engines`")
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        self.engines, self.contexts = {}, {}
        for g in GRAPHS:
            engine = runtime.deserialize_cuda_engine((self.dir / f"{g}.plan").read_bytes())
            if engine is None:
                raise UserError(f"{self.dir / (g + '.plan')}: TensorRT could not load this plan (built by another "
                                "TensorRT version or for another GPU?); rebuild with `make engines`")
            self.engines[g], self.contexts[g] = engine, engine.create_execution_context()
        self._meta = _metadata_beside(self.dir, onnx_dir)
        self.stream = torch.cuda.Stream()

    def run(self, graph: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        torch, trt = self.torch, self.trt
        engine, ctx = self.engines[graph], self.contexts[graph]
        keep, outs = [], {}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for n in names:
            if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT:
                t = torch.from_numpy(np.ascontiguousarray(feeds[n])).cuda()
                ctx.set_input_shape(n, tuple(t.shape))
                ctx.set_tensor_address(n, t.data_ptr())
                keep.append(t)
        for n in names:
            if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT:
                dtype = torch.from_numpy(np.zeros(1, trt.nptype(engine.get_tensor_dtype(n)))).dtype
                t = torch.empty(tuple(ctx.get_tensor_shape(n)), dtype=dtype, device="cuda")
                ctx.set_tensor_address(n, t.data_ptr())
                outs[n] = t
        with torch.cuda.stream(self.stream):
            if not ctx.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT failed to run {graph}")
        self.stream.synchronize()
        return {n: t.cpu().numpy() for n, t in outs.items()}

    def metadata(self, graph: str) -> dict[str, str]:
        return self._meta[graph]


def _metadata_beside(engine_dir: Path, onnx_dir: str | Path | None) -> dict[str, dict[str, str]]:
    for d in [Path(onnx_dir)] if onnx_dir else [engine_dir, engine_dir.parent / "onnx"]:
        if all((d / f"{g}.onnx").is_file() for g in GRAPHS):
            return {g: read_onnx_metadata(d / f"{g}.onnx") for g in GRAPHS}
    manifest = engine_dir / "manifest.json"
    if manifest.is_file():
        dims = json.loads(manifest.read_text()).get("dims", {})
        return {g: {k: str(v) for k, v in dims.items()} for g in GRAPHS}
    raise UserError(f"{engine_dir}: no ONNX graphs or manifest.json beside the plans to read dimensions from; "
                    "pass --onnx DIR")


def load_backend(path: str | Path, device: str = "cpu", kind: str | None = None,
                 threads: int | None = None, onnx_dir: str | Path | None = None) -> Backend:
    """Pick a backend by ``kind`` or by what ``path`` holds (``*.onnx``, ``*.plan``, a checkpoint folder)."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"model artifacts not found: {p}")
    if kind is None:
        if p.is_dir() and (p / "step_decoder.onnx").is_file():
            kind = "onnxruntime"
        elif p.is_dir() and (p / "step_decoder.plan").is_file():
            kind = "tensorrt"
        elif p.is_dir() and (p / "config.json").is_file():
            kind = "torch"
        elif p.suffix == ".onnx":
            kind, p = "onnxruntime", p.parent
        elif p.suffix == ".plan":
            kind, p = "tensorrt", p.parent
        else:
            raise UserError(f"{p}: holds no step_decoder.onnx, step_decoder.plan or checkpoint config.json")
    if kind == "onnxruntime":
        return OrtBackend(p, device=device, threads=threads)
    if kind == "tensorrt":
        return TensorRTBackend(p, onnx_dir=onnx_dir)
    if kind == "torch":
        from eartalking.runtime.torch_backend import TorchBackend

        return TorchBackend(p, device=device, threads=threads)
    raise UserError(f"unknown backend {kind!r}; choose one of {', '.join(BACKENDS)}")

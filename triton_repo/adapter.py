"""Glue between Triton's Python backend (``triton_python_backend_utils``, passed in as ``pb``) and our modules.

Shared by every ``models/<model>/1/model.py`` so those stay a few lines each:
- ``load_engine(args)``: the runtime ``Engine`` over the graphs copied into ``<model>/1/graphs`` (ONNX Runtime,
  or TensorRT plans in the GPU flavour), with the thread count from the config parameter ``threads``.
- ``controls(pb, request)``: START/END/READY/CORRID of a request (``None`` for READY = 0 padding).
- ``array(t)`` / ``tensor(pb, name, array)``: input and output tensors go through DLPack. The wheel's stub was
  built against numpy 1.x; under numpy 2 its ``as_numpy`` repeats the first element (uint8 images come out
  flat) and numpy-built output tensors arrive empty (element size read as 0). DLPack carries shape and dtype.
- ``gauge(pb, model)``: a setter for the ``eartalking_live_sequences{model=...}`` Prometheus gauge.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from .sequences import Controls

GAUGE_NAME = "eartalking_live_sequences"


class _QuietDLPackStderr:
    """The stub prints a harmless capsule-name mismatch of numpy 2's DLPack capsules as a traceback on
    ``sys.stderr`` for every output tensor (the tensor is fine). Drop exactly those tracebacks from the server
    log; every other line passes through unchanged."""

    NOISE = "PyCapsule_GetPointer called with incorrect name"

    def __init__(self, inner) -> None:
        self.inner, self.held, self.partial = inner, [], ""

    def write(self, text: str) -> int:
        self.partial += text
        *lines, self.partial = self.partial.split("\n")
        if self.partial and not (self.held or self.partial.startswith("Traceback")):
            lines.append(self.partial)  # plain output without a newline yet: pass it on now
            self.partial = ""
            tail = ""
        else:
            tail = None
        for i, line in enumerate(lines):
            nl = "" if (tail is not None and i == len(lines) - 1) else "\n"
            if self.held or line.startswith("Traceback (most recent call last)"):
                self.held.append(line + nl)
                if line and not line.startswith((" ", "Traceback")):  # the exception line ends a traceback
                    if self.NOISE not in line:
                        self.inner.write("".join(self.held))
                    self.held = []
            else:
                self.inner.write(line + nl)
        return len(text)

    def flush(self) -> None:
        self.inner.flush()

    def __getattr__(self, name: str):
        return getattr(self.inner, name)


def quiet_stub_stderr() -> None:
    """Install the filter (called from a model's ``initialize``, i.e. only inside the Triton stub process)."""
    if not isinstance(sys.stderr, _QuietDLPackStderr):
        sys.stderr = _QuietDLPackStderr(sys.stderr)


def params(args: dict) -> dict[str, str]:
    cfg = json.loads(args["model_config"])
    return {k: v.get("string_value", "") for k, v in cfg.get("parameters", {}).items()}


def load_engine(args: dict, load_faces: bool = False, transport: Any = None):
    """Engine over ``<repository>/<model>/<version>/graphs``; ``threads`` from the config parameters.

    With a ``transport`` (``bls.BlsTransport``), ``audio_encoder`` and ``step_decoder`` run as requests to the
    server's graph models (decoder state kept there, per correlation id); the portrait graphs stay in process.
    """
    from eartalking.runtime.backends import load_backend
    from eartalking.runtime.session import Engine

    quiet_stub_stderr()
    p = params(args)
    version_dir = Path(args["model_repository"]) / args["model_version"]
    graphs = version_dir / "graphs"
    threads = int(p.get("threads", "1") or 1)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    kind = p.get("graph_backend") or None
    onnx = graphs / "onnx" if (graphs / "onnx").is_dir() else None
    backend = load_backend(graphs, device=p.get("device", "cpu"), kind=kind, threads=threads, onnx_dir=onnx)
    if transport is None:
        return Engine(backend, load_faces=load_faces), p
    from eartalking.runtime.remote import RemoteStepper, RoutedBackend

    return Engine(RoutedBackend(backend, transport), load_faces=load_faces, stepper=RemoteStepper(transport)), p


def idle_seconds(p: dict[str, str]) -> float:
    return float(p.get("idle_timeout_s", "60") or 60)


def controls(pb: Any, request: Any) -> Controls | None:
    """Sequence controls of one request, or None for a READY = 0 padding request (skip it)."""

    def value(name: str, default: Any = 0) -> Any:
        t = pb.get_input_tensor_by_name(request, name)
        return default if t is None else array(t).reshape(-1)[0]

    if not int(value("READY", 1)):
        return None
    return Controls(corrid=int(value("CORRID", 0)), start=bool(value("START")), end=bool(value("END")))


def inputs(pb: Any, request: Any, names: list[str]) -> dict[str, np.ndarray]:
    """The present inputs among ``names`` as numpy arrays (optional inputs may be absent)."""
    out = {}
    for n in names:
        t = pb.get_input_tensor_by_name(request, n)
        if t is not None:
            out[n] = array(t)
    return out


def array(t: Any) -> np.ndarray:
    """A request tensor as an owned numpy array, read through DLPack (``as_numpy`` is wrong under numpy 2)."""
    return np.array(np.from_dlpack(t), copy=True)


def tensor(pb: Any, name: str, array: np.ndarray) -> Any:
    a = np.ascontiguousarray(array)
    if not a.flags.writeable:  # DLPack 0.x cannot export read-only arrays
        a = a.copy()
    return pb.Tensor.from_dlpack(name, a.__dlpack__())


def json_tensor(pb: Any, name: str, obj: dict) -> Any:
    """A JSON status as a uint8 [1, n] tensor (BYTES outputs hit the same numpy-ABI problem as ``tensor``)."""
    return tensor(pb, name, np.frombuffer(json.dumps(obj).encode(), np.uint8)[None])


def error(pb: Any, message: str) -> Any:
    return pb.InferenceResponse(output_tensors=[], error=pb.TritonError(message))


def gauge(pb: Any, model: str):
    """Setter for this model's live-sequence gauge (a no-op where custom metrics are unavailable)."""
    try:
        fam = pb.MetricFamily(name=GAUGE_NAME, description="live sequences (per-correlation-id state) per model",
                              kind=pb.MetricFamily.GAUGE)
        metric = fam.Metric(labels={"model": model})
    except Exception:  # noqa: BLE001 (metrics are optional)
        return lambda n: None
    keep = (fam, metric)  # the family must outlive its metric (Triton deletes the metric with it)

    def set_value(n: int) -> None:
        try:
            keep[1].set(float(n))
        except Exception:  # noqa: BLE001 (a metric must never fail a request)
            pass

    set_value(0)
    return set_value

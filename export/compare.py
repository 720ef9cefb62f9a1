"""Numeric comparison rows shared by verify's backends (numpy only: no torch, so the TensorRT check runs
in NVIDIA's container without PyTorch)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

FLOAT_ATOL, FLOAT_RTOL = 1e-4, 1e-3  # per-graph float outputs and streamed K/V state
PIXEL_TOL = 2  # uint8 levels (2/255) on end-to-end frames
Runner = Callable[[str, dict[str, np.ndarray]], dict[str, np.ndarray]]


@dataclass
class Check:
    graph: str
    tensor: str
    what: str
    max_abs: float
    max_rel: float
    tol: str
    ok: bool

    def line(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return (f"{mark} {self.what:10s} {self.graph:18s} {self.tensor:16s} max_abs {self.max_abs:.3g}  "
                f"max_rel {self.max_rel:.3g}  ({self.tol})")


def compare(graph: str, tensor: str, what: str, got: np.ndarray, ref: np.ndarray,
            atol: float = FLOAT_ATOL, rtol: float = FLOAT_RTOL) -> Check:
    """Elementwise |got - ref| <= atol + rtol*|ref| (integers: atol only); shapes must match exactly."""
    got, ref = np.asarray(got), np.asarray(ref)
    if got.shape != ref.shape:
        return Check(graph, tensor, what, float("inf"), float("inf"), f"shape {got.shape} vs {ref.shape}", False)
    integer = np.issubdtype(ref.dtype, np.integer)
    rtol = 0.0 if integer else rtol
    diff = np.abs(got.astype(np.float64) - ref.astype(np.float64))
    max_abs = float(diff.max()) if diff.size else 0.0
    max_rel = float((diff / np.maximum(np.abs(ref.astype(np.float64)), 1e-6)).max()) if diff.size else 0.0
    ok = bool(np.all(diff <= atol + rtol * np.abs(ref.astype(np.float64)))) and bool(np.isfinite(got).all())
    tol = "exact" if integer and atol == 0 else f"atol {atol:g}" + (f" rtol {rtol:g}" if rtol else "")
    return Check(graph, tensor, what, max_abs, max_rel, tol, ok)

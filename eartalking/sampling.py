"""Deterministic sampling noise shared by every backend (numpy only, no torch).

Seeded sampling in the step decoder is ``argmax(topk(logits) / temperature + gumbel)``. TensorRT ignores
the seeds of random ops, so the graph never draws random numbers itself: the host computes the Gumbel
noise from ``(seed, frame)`` with this function and feeds it as the ``gumbel`` input. The same
``(seed, frame)`` gives the same noise on every machine, so PyTorch, ONNX Runtime, TensorRT and Triton
sample the same tokens.

The generator is numpy's Philox counter-based bit generator keyed by ``(seed, frame)``: frame ``f`` of a
session is addressable directly (no need to replay frames ``0..f-1``), and distinct frames/seeds give
independent streams.
"""

from __future__ import annotations

import numpy as np

_U64 = 1 << 64


def gumbel_noise(seed: int, frame: int, shape: tuple[int, ...] | list[int]) -> np.ndarray:
    """Standard Gumbel(0, 1) noise, float32 array of ``shape``, a pure function of ``(seed, frame, shape)``.

    ``seed`` and ``frame`` must be integers in ``[0, 2**64)``.
    """
    seed, frame = int(seed), int(frame)
    if not (0 <= seed < _U64) or not (0 <= frame < _U64):
        raise ValueError(f"seed and frame must be integers in [0, 2**64), got seed={seed}, frame={frame}")
    bitgen = np.random.Philox(key=np.array([seed, frame], dtype=np.uint64))
    u = np.random.Generator(bitgen).random(tuple(shape), dtype=np.float64)
    u = np.clip(u, 1e-12, 1.0 - 1e-12)  # keep both logs finite
    return (-np.log(-np.log(u))).astype(np.float32)


def gumbel_batch(seeds: list[int] | tuple[int, ...], frames: list[int] | tuple[int, ...],
                 shape: tuple[int, ...]) -> np.ndarray:
    """Noise for a batch of sessions: one ``gumbel_noise(seed_b, frame_b, shape)`` per row -> [B, *shape]."""
    if len(seeds) != len(frames):
        raise ValueError(f"need one frame per seed, got {len(seeds)} seeds and {len(frames)} frames")
    return np.stack([gumbel_noise(s, f, shape) for s, f in zip(seeds, frames, strict=True)])

"""Fresh random feeds for a graph spec (export tracing, verify, tests): never zeros, always in range.

``random_feed(spec, cfg, sizes, rng)`` -> {input name: numpy array} with the spec's dtypes and shapes.
Values follow what each input means: images in 0..1, PCM in -1..1, token ids in 0..K-1, controls within
``CONTROL_RANGES`` with a random presence mask, temperature 0 (greedy) or > 0 per row, Gumbel noise from
uniforms, state K/V ~ N(0, 0.5), frame counters spanning several window wraps, ``start`` mixed 0/1.
"""

from __future__ import annotations

import numpy as np

from eartalking.config import CONTROL_NAMES, CONTROL_RANGES, ModelConfig
from eartalking.export.specs import GraphSpec, resolve_shape


def random_feed(spec: GraphSpec, cfg: ModelConfig, sizes: dict[str, int], rng: np.random.Generator,
                start: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Random inputs for ``spec`` with symbolic axes resolved by ``sizes``; ``start`` overrides that input."""
    K = cfg.tokenizer.codebook_size
    feed: dict[str, np.ndarray] = {}
    for t in spec.inputs:
        shape = resolve_shape(t.shape, sizes)
        n = t.name
        if n == "start":
            v = rng.integers(0, 2, shape) if start is None else np.broadcast_to(start, shape)
        elif n == "image":
            v = rng.random(shape)
        elif n == "pcm":
            v = np.clip(rng.standard_normal(shape) * 0.2, -1.0, 1.0)
        elif n == "controls":
            lo = np.array([CONTROL_RANGES[c][0] for c in CONTROL_NAMES])
            hi = np.array([CONTROL_RANGES[c][1] for c in CONTROL_NAMES])
            v = lo + (hi - lo) * rng.random(shape)
        elif n == "control_mask":
            v = rng.integers(0, 2, shape)
        elif n == "temperature":
            v = np.where(rng.random(shape) < 0.5, 0.0, rng.uniform(0.5, 1.5, shape))
        elif n == "gumbel":
            v = -np.log(-np.log(rng.uniform(1e-9, 1.0 - 1e-9, shape)))
        elif n == "in_frame":
            v = rng.integers(0, 4 * cfg.decoder.window, shape)
        elif t.dtype == "int32":
            v = rng.integers(0, K, shape)
        else:
            v = rng.standard_normal(shape) * 0.5
        feed[n] = np.ascontiguousarray(v, dtype=np.dtype(t.dtype))
    return feed

"""Test audio for the runtime tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

import numpy as np


def speechlike(seconds: float, seed: int) -> np.ndarray:
    """Fresh random 16 kHz test audio with speech-like amplitude modulation, float32 in [-1, 1]."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * 16000))
    t = np.arange(n) / 16000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 6) * t + rng.uniform(0, 6))
    x = env * (0.3 * np.sin(2 * np.pi * rng.uniform(100, 300) * t) + 0.05 * rng.standard_normal(n))
    return np.clip(x, -1, 1).astype(np.float32)

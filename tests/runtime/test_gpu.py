"""The torch backend on a CUDA GPU gives the CPU's tokens (skipped where no GPU is visible)."""

from __future__ import annotations

import numpy as np
import pytest
from runtime_helpers import speechlike

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.gpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none visible)")
def test_torch_cuda_session_equals_cpu(small_model):
    from eartalking.runtime import faces
    from eartalking.runtime.session import Engine, Session, step_many
    from eartalking.runtime.torch_backend import TorchBackend

    crop = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    face = faces.from_crop(crop)
    pcm = speechlike(1.6, seed=91)
    out = {}
    for device in ("cpu", "cuda"):
        eng = Engine(TorchBackend(model=small_model, device=device), load_faces=False)
        sessions = [Session(eng, crop, face=face, crop_only=True, temperature=t, seed=5) for t in (0.0, 0.7)]
        for s in sessions:
            s.feed(pcm)
            s.finish()
        out[device] = [np.stack([f.tokens for f in fr]) for fr in step_many(sessions)]
    for a, b in zip(out["cpu"], out["cuda"], strict=True):
        assert a.shape == (40, 16)
        assert (a == b).mean() >= 0.99  # fp32 on two devices: a rare near-tie may flip one token

"""Export + parity of the shipped checkpoint (checkpoints/tiny), when it is present."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

CKPT = Path(__file__).resolve().parents[2] / "checkpoints" / "tiny"


@pytest.mark.slow
@pytest.mark.skipif(not (CKPT / "model.safetensors").is_file(), reason=f"no shipped checkpoint at {CKPT}")
def test_shipped_checkpoint_exports_and_matches_pytorch(tmp_path):
    from eartalking.export import parity
    from eartalking.export.onnx import export_all, load_model
    from eartalking.export.verify import ort_runner, static_checks

    model, cfg, source = load_model(str(CKPT), None, 0)
    manifest = export_all(model, cfg, tmp_path, source)
    run = ort_runner(tmp_path)
    rng = np.random.default_rng()
    checks = static_checks(cfg, model, tmp_path, manifest)
    checks += parity.graph_parity(model, cfg, run, rng)[0]
    checks += parity.streaming_parity(model, cfg, run, rng)
    assert [c.line() for c in checks if not c.ok] == []

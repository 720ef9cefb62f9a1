"""The shipped checkpoint (checkpoints/tiny): it exports, matches PyTorch in ONNX Runtime, and its weights
are trained (not random): the tokenizer reconstructs the bundled public-domain portraits far better than a
random model of the same config. This is the one test of `make test` that uses the committed weights."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

CKPT = Path(__file__).resolve().parents[2] / "checkpoints" / "tiny"


def test_shipped_checkpoint_exports_and_matches_pytorch(tmp_path):
    from eartalking.export import parity
    from eartalking.export.onnx import export_all, load_model
    from eartalking.export.verify import ort_runner, static_checks

    assert (CKPT / "model.safetensors").is_file() and (CKPT / "config.json").is_file(), f"no checkpoint in {CKPT}"
    model, cfg, source = load_model(str(CKPT), None, 0)
    manifest = export_all(model, cfg, tmp_path, source)
    run = ort_runner(tmp_path)
    rng = np.random.default_rng()
    checks = static_checks(cfg, model, tmp_path, manifest)
    checks += parity.graph_parity(model, cfg, run, rng)[0]
    checks += parity.streaming_parity(model, cfg, run, rng)
    assert [c.line() for c in checks if not c.ok] == []


def test_shipped_tokenizer_is_trained():
    """PSNR of portrait -> tokens -> image (the portrait as reference) on the two bundled fixtures: measured
    23.1 and 19.1 dB for the shipped weights vs 9.1 and 9.5 dB for random weights; 15 dB separates them."""
    from eartalking.data import faces
    from eartalking.model import checkpoint

    model, cfg = checkpoint.load(CKPT)
    random = checkpoint.random_model(cfg, seed=int(np.random.default_rng().integers(1 << 16)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idents = faces.fixture_identities(cfg.tokenizer.image_size)
    for ident in idents:
        x = torch.from_numpy(ident.image).permute(2, 0, 1)[None].float() / 255.0
        trained, untrained = _psnr(model, x), _psnr(random, x)
        assert trained > 15.0 > untrained, (ident.id, trained, untrained)


def _psnr(model, x: torch.Tensor) -> float:
    with torch.no_grad():
        y = model.tokenizer.decode(model.tokenizer.encode(x), model.tokenizer.reference(x))
    return 10.0 * float(np.log10(1.0 / float(((y - x) ** 2).mean())))


def _ship_main():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "scripts" / "ship_checkpoint.py"
    spec = importlib.util.spec_from_file_location("ship_checkpoint", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


def test_ship_checkpoint_sets_the_decoding_options_and_keeps_the_weights(tmp_path):
    """scripts/ship_checkpoint.py on a random decoder run: --greedy, --code-mean-temperature and --anchor-regions
    land in the shipped config, every weight is byte-identical, and a temperature <= 0 is refused by name."""
    import pytest

    from eartalking import config
    from eartalking.model import checkpoint

    cfg = config.preset("test_small")
    model = checkpoint.random_model(cfg, seed=int(np.random.default_rng().integers(1 << 20)))
    checkpoint.save(tmp_path / "dec", model, cfg, metadata={})
    main = _ship_main()
    out = tmp_path / "ship"
    assert main(["--decoder", str(tmp_path / "dec"), "--out", str(out), "--runs", "--anchor-regions",
                 "--greedy", "code_mean", "--code-mean-temperature", "1.6"]) == 0
    shipped, scfg = checkpoint.load(out)
    assert scfg.decoder.greedy == "code_mean" and scfg.decoder.code_mean_temperature == 1.6
    assert shipped.decoder.code_mean_temperature == 1.6 and len(scfg.decoder.anchor_cells) > 0
    a, b = model.state_dict(), shipped.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(SystemExit):
        main(["--decoder", str(tmp_path / "dec"), "--out", str(tmp_path / "bad"), "--runs",
              "--code-mean-temperature", "0"])
    assert not (tmp_path / "bad").exists()


def test_ship_checkpoint_eye_unblend_needs_an_eye_code_and_keeps_the_weights(tmp_path):
    """--eye-unblend and --eye-state-threshold: refused (exit 2, nothing written) for a tokenizer without an eye
    code; with one they land in the shipped config (the state cells are the eye cells, their open_max the eye
    code's) and every weight stays byte-identical (they add no weights)."""
    import dataclasses

    from eartalking import config
    from eartalking.model import checkpoint

    cfg = config.preset("test_small")
    model = checkpoint.random_model(cfg, seed=int(np.random.default_rng().integers(1 << 20)))
    checkpoint.save(tmp_path / "plain", model, cfg, metadata={})
    main = _ship_main()
    assert main(["--decoder", str(tmp_path / "plain"), "--out", str(tmp_path / "bad"), "--runs", "--eye-unblend"]) == 2
    assert not (tmp_path / "bad").exists()
    cfg = dataclasses.replace(cfg, tokenizer=dataclasses.replace(cfg.tokenizer, eye_code=(1,)))
    checkpoint.save(tmp_path / "coded", model, cfg, metadata={})
    assert main(["--decoder", str(tmp_path / "plain"), "--out", str(tmp_path / "bad2"), "--runs",
                 "--eye-state-threshold", "0.5"]) == 2
    assert not (tmp_path / "bad2").exists()
    assert main(["--decoder", str(tmp_path / "coded"), "--out", str(tmp_path / "bad3"), "--runs",
                 "--eye-unblend-axes", "0.1", "0.06"]) == 2  # no eye_unblend to size
    assert not (tmp_path / "bad3").exists()
    assert main(["--decoder", str(tmp_path / "coded"), "--out", str(tmp_path / "bad4"), "--runs", "--eye-unblend",
                 "--eye-unblend-axes", "0.3", "0.06"]) == 2  # the model's own bound, (0, 0.25)
    assert not (tmp_path / "bad4").exists()
    assert main(["--decoder", str(tmp_path / "coded"), "--out", str(tmp_path / "ship"), "--runs", "--eye-unblend",
                 "--eye-state-threshold", "0.4", "--eye-unblend-axes", "0.1", "0.06"]) == 0
    shipped, scfg = checkpoint.load(tmp_path / "ship")
    from eartalking.train.decoder import eye_cells

    assert scfg.tokenizer.eye_unblend and scfg.decoder.eye_state_cells == tuple(eye_cells(scfg))
    assert scfg.decoder.eye_state_open_max == 1 and scfg.decoder.eye_state_threshold == 0.4
    assert scfg.tokenizer.eye_unblend_axes == (0.1, 0.06)
    assert bool(shipped.decoder.eye_state_cells.any())
    assert shipped.tokenizer.shut_map(torch.zeros(1, cfg.tokens_per_frame, dtype=torch.long)) is not None
    a, b = model.state_dict(), shipped.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

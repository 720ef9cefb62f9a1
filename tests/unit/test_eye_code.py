"""``tokenizer.eye_code``: the blink label written into the eye cells' tokens, for the image
side (``train-tokenizer --eye-code``) and the step decoder's targets (``train`` on such a tokenizer)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from eartalking.cli import main
from eartalking.config import CONTROL_NAMES
from eartalking.model import checkpoint
from eartalking.model.tokenizer import ENCODER_PARTS
from eartalking.train.common import MemClip
from eartalking.train.decoder import tokenize_clips
from eartalking.train.eye_code import eye_code_tokens, eye_state

BLINK = CONTROL_NAMES.index("blink")


def _digits(idx: torch.Tensor, levels: int) -> torch.Tensor:
    """int [..] -> its FSQ digits [.., 3] (digit i has weight levels^i)."""
    return torch.stack([(idx // levels ** i) % levels for i in range(3)], -1)


def test_eye_code_moves_shut_frames_into_the_corner_and_keeps_open_ones_out():
    levels, cells, code = 8, [3, 10, 20], (4,)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, levels ** 3, (6, 32), generator=g)
    idx[0, 3], idx[4, 10] = 5 + 8 * 6 + 64 * 7, 7 + 8 * 5 + 64 * 5  # the encoder's own corner tokens (open rows)
    blink = torch.tensor([0.0, 0.3, 0.5, 1.0, float("nan"), 0.9])
    shut = torch.tensor([False, False, True, True, False, True])
    out = eye_code_tokens(idx, blink, code, levels, cells)
    others = [c for c in range(32) if c not in cells]
    assert torch.equal(out[:, others], idx[:, others])
    d_in, d_out = _digits(idx[:, cells], levels), _digits(out[:, cells], levels)
    corner_in = (d_in > 4).all(-1)
    assert corner_in[0, 0] and corner_in[4, 1]
    keep = ~shut[:, None] & ~corner_in
    assert torch.equal(out[:, cells][keep], idx[:, cells][keep])  # open, outside the corner: untouched
    moved = ~shut[:, None] & corner_in  # open but in the corner: digit 0 capped, the rest kept
    assert (d_out[moved][:, 0] == 4).all() and torch.equal(d_out[moved][:, 1:], d_in[moved][:, 1:])
    assert (out[shut][:, cells] == levels ** 3 - 1).all()  # shut: the top corner (decoder targets)
    assert torch.equal(eye_state(out, code, levels, cells), shut.float())
    # with a generator (image-side training) each digit of a shut token is any level above open_max
    drawn = torch.stack([eye_code_tokens(idx, blink, code, levels, cells, g) for _ in range(40)])
    dd = _digits(drawn[:, shut][..., cells], levels)
    assert set(dd.unique().tolist()) == {5, 6, 7} and len(drawn[:, shut][..., cells].unique()) > 10
    assert torch.equal(drawn[:, ~shut], out[~shut].expand(40, -1, -1))
    assert torch.equal(eye_state(drawn[7], code, levels, cells), shut.float())
    with pytest.raises(ValueError, match="open_max 7"):
        eye_code_tokens(idx, blink, (7,), levels, cells)


def _clip(cfg, T: int, seed: int) -> MemClip:
    rng = np.random.default_rng(seed)
    S = cfg.tokenizer.image_size
    ctrl = np.full((T, len(CONTROL_NAMES)), np.nan, np.float32)
    ctrl[:, BLINK] = 0.0
    ctrl[3:6, BLINK] = (0.6, 1.0, 0.7)
    return MemClip("c", rng.integers(0, 256, (T, S, S, 3), dtype=np.uint8), np.zeros(0, np.float32), ctrl,
                   np.zeros(T, np.float32), rng.integers(0, 256, (S, S, 3), dtype=np.uint8), "p")


@torch.no_grad()
def test_tokenize_clips_writes_the_labels_into_the_frames_and_leaves_the_portrait_as_encoded():
    model = checkpoint.random_model("test_small", seed=2)
    tok = model.tokenizer
    eyes = [5, 6]  # test_small's eye cells (train.decoder.eye_cells)
    clip = _clip(model.cfg, 10, 0)
    plain_f, plain_p = tokenize_clips(tok, [clip], torch.device("cpu"))
    tok.cfg.eye_code = (tok.levels - 3,)
    coded_f, coded_p = tokenize_clips(tok, [clip], torch.device("cpu"))
    assert np.array_equal(coded_p[0], plain_p[0])  # the sink: the encoder's own tokens, as at inference
    want = eye_code_tokens(torch.from_numpy(plain_f[0]), torch.from_numpy(clip.controls[:, BLINK]), tok.cfg.eye_code,
                           tok.levels, eyes).numpy()
    assert np.array_equal(coded_f[0], want)
    state = eye_state(torch.from_numpy(coded_f[0]), tok.cfg.eye_code, tok.levels, eyes)
    assert state.tolist() == [0.0] * 3 + [1.0] * 3 + [0.0] * 4
    assert not np.array_equal(coded_f[0][3:6], plain_f[0][3:6])


def _tok(data, out, steps: int) -> list[str]:
    return ["train-tokenizer", "--data", str(data), "--out", str(out), "--preset", "test_small", "--steps",
            str(steps), "--batch", "2", "--threads", "1", "--device", "cpu", "--minutes", "0", "--seed", "5"]


def test_train_tokenizer_eye_code_cli(corpus_dir, tmp_path, capsys):
    """Refused without --freeze-encoder, with --decoder-tokens, or malformed; a run keeps the encoder
    bit-identical, trains the image side and records the code in config.json for `train` to read."""
    base = tmp_path / "base"
    assert main(_tok(corpus_dir, base, 1)) == 0
    capsys.readouterr()
    assert main(_tok(corpus_dir, tmp_path / "a", 1) + ["--init", str(base), "--eye-code", "1"]) == 2
    assert "--freeze-encoder" in capsys.readouterr().err
    for bad in ("3", "-1"):  # test_small: 4 levels, so OPEN_MAX 0..2
        assert main(_tok(corpus_dir, tmp_path / "b", 1) + ["--freeze-encoder", "--eye-code", bad]) == 2
        assert "OPEN_MAX must be 0..2" in capsys.readouterr().err
    assert main(_tok(corpus_dir, tmp_path / "c", 1) + ["--freeze-encoder", "--eye-code", "1",
                                                       "--decoder-tokens", str(base)]) == 2
    assert "use one of them" in capsys.readouterr().err
    out = tmp_path / "eyes"
    assert main(_tok(corpus_dir, out, 3) + ["--init", str(base), "--freeze-encoder", "--eye-code", "1"]) == 0
    assert json.loads((out / "config.json").read_text())["tokenizer"]["eye_code"] == [1]
    got, start = load_file(str(out / "tokenizer.safetensors")), load_file(str(base / "tokenizer.safetensors"))
    enc = [k for k in start if k.startswith(ENCODER_PARTS)]
    assert enc and all(torch.equal(got[k], start[k]) for k in enc)
    assert any(not torch.equal(got[k], start[k]) for k in start if k not in enc)
    assert checkpoint.load_tokenizer(out)[0].cfg.eye_code == (1,)


@torch.no_grad()
def test_evaluate_tokenizer_psnr_gives_an_eye_coded_tokenizer_the_labelled_eye_state():
    """evaluate's round trip decodes what the image side was trained on: the encoder's tokens with the
    clip's blink labels written in (open where a clip has no labels)."""
    from types import SimpleNamespace

    from eartalking.evaluate import generate_eval as ge
    from eartalking.evaluate.report import tokenizer_psnr

    model = checkpoint.random_model("test_small", seed=4)
    tok = model.tokenizer
    g = torch.Generator().manual_seed(1)
    for w in (tok.from_fsq.weight, tok.from_code.weight):  # make the decoded image depend on the digits
        w.copy_(torch.randn(w.shape, generator=g) * 2)
    clip = _clip(model.cfg, 16, 3)
    blink = clip.controls[:, BLINK]

    def case(labels):
        return SimpleNamespace(video=clip.frames, portrait=clip.portrait, labels=labels, psnr=None)

    def manual(tokens_fn) -> float:
        img = torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 255.0
        ref = ge.portrait_tensor(clip.portrait, model.device).expand(len(img), -1, -1, -1)
        rec = tok.decode(tokens_fn(tok.encode(img)), tok.reference(ref)).clamp(0, 1)
        mse = ((rec - img) ** 2).mean(dim=(1, 2, 3)).clamp_min(1e-10)
        return float((10 * torch.log10(1.0 / mse)).mean())

    plain = tokenizer_psnr(model, [case({"blink": blink})])["psnr_db"]
    assert plain == pytest.approx(manual(lambda t: t), abs=1e-4)
    tok.cfg.eye_code = (tok.levels - 3,)
    eyes = [5, 6]
    coded = tokenizer_psnr(model, [case({"blink": blink})])["psnr_db"]
    want = manual(lambda t: eye_code_tokens(t, torch.from_numpy(blink), tok.cfg.eye_code, tok.levels, eyes))
    assert coded == pytest.approx(want, abs=1e-4) and abs(coded - plain) > 1e-3
    unlabelled = tokenizer_psnr(model, [case(None)])["psnr_db"]
    nan = torch.full((16,), float("nan"))
    assert unlabelled == pytest.approx(manual(lambda t: eye_code_tokens(t, nan, tok.cfg.eye_code, tok.levels, eyes)),
                                       abs=1e-4)

"""``train-tokenizer --decoder-tokens``: the step decoder's teacher-forced picks (checked against frame-by-frame
streaming), the tokenizer decoding given tokens in place of a frame's own, the sampler handing them out at the
requested share, and the CLI's refusals and training run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from eartalking.cli import main
from eartalking.model import checkpoint
from eartalking.model.tokenizer import ENCODER_PARTS
from eartalking.train.common import MemClip
from eartalking.train.decoder_tokens import clip_pcm, decoder_picks
from eartalking.train.tokenizer import FrameSampler


def _clip(cfg, T: int, seed: int) -> MemClip:
    rng = np.random.default_rng(seed)
    S = cfg.tokenizer.image_size
    frames = rng.integers(0, 256, (T, S, S, 3), dtype=np.uint8)
    pcm = (rng.standard_normal(T * cfg.audio.samples_per_frame) * 0.1).astype(np.float32)
    return MemClip("c", frames, pcm, np.full((T, 5), np.nan, np.float32), rng.uniform(0, 1, T).astype(np.float32),
                   rng.integers(0, 256, (S, S, 3), dtype=np.uint8), "p")


@torch.no_grad()
def test_decoder_picks_equal_frame_by_frame_streaming_with_the_true_previous_tokens():
    """One teacher-forced pass per clip (whole-clip audio) == the streaming step decoder fed, frame by frame,
    that frame's own audio chunk and the encoder's tokens of the previous frame (anchored cells from the
    portrait), over 3 windows; only the requested cells are filled, the rest is -1."""
    cfg = checkpoint.random_model("test_small").cfg
    cfg.decoder.anchor_cells = (5, 6, 9)
    model = checkpoint.random_model(cfg, seed=3)
    dec, tok, a = model.decoder, model.tokenizer, cfg.audio
    g = torch.Generator().manual_seed(0)
    for w in (dec.head.weight, dec.audio_proj.weight, dec.token_embedding.weight):  # init picks one token
        w.copy_(torch.randn(w.shape, generator=g))  # everywhere; these make the picks vary with the inputs
    T = 3 * dec.W + 2
    clip = _clip(cfg, T, 0)
    cells = [1, 5, 6, 12]
    got = decoder_picks(model, [clip], cells, torch.device("cpu"))[0]
    assert got.shape == (T, cfg.tokens_per_frame) and got.dtype == np.int64
    others = np.setdiff1d(np.arange(cfg.tokens_per_frame), cells)
    assert (got[:, others] == -1).all() and (got[:, cells] >= 0).all()

    frames = tok.encode(torch.from_numpy(clip.frames).permute(0, 3, 1, 2).float() / 255)
    ref = tok.encode(torch.from_numpy(clip.portrait[None]).permute(0, 3, 1, 2).float() / 255)
    sk, sv = dec.sink(ref)
    wk, wv = dec.empty_window(1)
    zeros = torch.zeros(1, dec.C)
    want = []
    for t in range(T):
        audio = model.audio(torch.from_numpy(clip_pcm(clip, a.samples_per_frame, a.lookahead_frames,
                                                      a.left_context, t, 1))[None])  # [1, 1, A, Da]
        prev = dec.anchor(ref if t == 0 else frames[t - 1:t], ref)
        logits, wk, wv = dec.step(audio[:, 0], zeros, zeros, sk, sv, wk, wv, prev, torch.tensor([[t]]))
        want.append(dec.pick(logits, torch.zeros(1, 1), torch.zeros_like(logits), ref)[0])
    want = torch.stack(want).numpy()
    assert len(np.unique(got[:, cells])) > T // 2  # a check that can fail: the picks differ
    assert np.array_equal(got[:, cells], want[:, cells])
    # the picks move with the audio: the same clip with other sound gives other mouth picks somewhere
    loud = MemClip(**{**clip.__dict__, "pcm": np.roll(clip.pcm, 5000) * 4})
    assert not np.array_equal(decoder_picks(model, [loud], cells, torch.device("cpu"))[0], got)


def test_tokenizer_decodes_the_given_tokens_in_place_of_the_frames_own():
    """forward(replace=...): -1 keeps the frame's token (replace = its own tokens changes nothing), given cells
    decode exactly as ``decode`` of the mixed tokens; indices and digits reported stay the frame's own."""
    tok = checkpoint.random_model("test_small", seed=1).tokenizer
    S, K = tok.cfg.image_size, tok.cfg.codebook_size
    g = torch.Generator().manual_seed(0)
    img, ref = torch.rand(3, 3, S, S, generator=g), torch.rand(3, 3, S, S, generator=g)
    plain, L0 = tok(img, ref)
    own = tok.encode(img)
    same, _ = tok(img, ref, own)
    assert torch.equal(same, plain)
    given = torch.randint(0, K, own.shape, generator=g)
    replace = torch.full_like(own, -1)
    replace[:, 3:7] = given[:, 3:7]
    mixed = own.clone()
    mixed[:, 3:7] = given[:, 3:7]
    out, L = tok(img, ref, replace)
    assert torch.allclose(out, tok.decode(mixed, tok.reference(ref)), atol=1e-6)
    assert (out - plain).abs().max() > 1e-3
    assert torch.equal(L["indices"], L0["indices"]) and torch.equal(L["bounded"], L0["bounded"])


def test_frame_sampler_hands_out_picks_at_the_share_and_never_flips_those_frames():
    T, S, N = 30, 16, 4
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (T, S, S, 3), dtype=np.uint8)
    frames[:, :, : S // 2, 0] = 0  # left half dark in red: a flipped frame has its dark half on the right
    frames[:, :, S // 2:, 0] = 255
    c = MemClip("c", frames, np.zeros(0, np.float32), np.full((T, 5), np.nan, np.float32),
                np.zeros(T, np.float32), frames[0].copy(), "p")
    picks = np.full((T, N), -1, np.int64)
    picks[:, 2] = np.arange(T) + 100  # the frame index, to check each pick belongs to its frame
    imgs, _, _, _, replace = FrameSampler([c], 1, picks=[picks], p_picks=0.4).labeled_batch(500)
    used = replace[:, 2] >= 0
    assert replace.shape == (500, N) and (replace[:, [0, 1, 3]] == -1).all()
    assert 0.33 < used.mean() < 0.47, used.mean()
    flipped = imgs[:, 0, 0, 0] == 255
    assert not flipped[used].any() and 0.4 < flipped[~used].mean() < 0.6
    t = replace[used, 2] - 100
    assert np.array_equal(imgs[used], frames[t])
    _, _, _, _, none = FrameSampler([c], 1, picks=[picks], p_picks=0.0).labeled_batch(50)
    assert (none == -1).all()
    with pytest.raises(ValueError, match="picks for 2 clips"):
        FrameSampler([c], 1, picks=[picks, picks], p_picks=0.5)


def _tok(data: Path, out: Path, steps: int, seed: int = 5) -> list[str]:
    return ["train-tokenizer", "--data", str(data), "--out", str(out), "--preset", "test_small", "--steps",
            str(steps), "--batch", "2", "--threads", "1", "--device", "cpu", "--minutes", "0", "--seed", str(seed)]


def test_train_tokenizer_learns_from_the_decoders_picks(corpus_dir, tmp_path, capsys):
    """The CLI: refused without --freeze-encoder, refused for a checkpoint whose encoder differs, a share
    outside 0..1 refused; from a full checkpoint (--init takes its tokenizer) it trains the image side on the
    picks with the encoder bit-identical."""
    tok = tmp_path / "tok"
    assert main(_tok(corpus_dir, tok, 1)) == 0
    dec = tmp_path / "dec"
    assert main(["train", "--data", str(corpus_dir), "--tokenizer", str(tok), "--out", str(dec), "--steps", "1",
                 "--batch", "2", "--frames", "8", "--threads", "1", "--device", "cpu", "--minutes", "0"]) == 0
    capsys.readouterr()
    base = _tok(corpus_dir, tmp_path / "bad", 1) + ["--init", str(dec), "--decoder-tokens", str(dec)]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "--decoder-tokens" in err and "--freeze-encoder" in err
    assert main(base + ["--freeze-encoder", "--decoder-token-share", "1.5"]) == 2
    assert "0..1" in capsys.readouterr().err
    other = tmp_path / "other"
    assert main(_tok(corpus_dir, other, 1, seed=9)) == 0
    capsys.readouterr()
    assert main(_tok(corpus_dir, tmp_path / "bad2", 1) + ["--init", str(other), "--freeze-encoder",
                                                         "--decoder-tokens", str(dec)]) == 2
    assert "encoder differs" in capsys.readouterr().err
    out = tmp_path / "picked"
    assert main(_tok(corpus_dir, out, 3) + ["--init", str(dec), "--freeze-encoder", "--decoder-tokens", str(dec),
                                            "--decoder-token-share", "1.0"]) == 0
    got, start = load_file(str(out / "tokenizer.safetensors")), load_file(str(tok / "tokenizer.safetensors"))
    enc = [k for k in start if k.startswith(ENCODER_PARTS)]
    assert enc and all(torch.equal(got[k], start[k]) for k in enc)
    assert any(not torch.equal(got[k], start[k]) for k in start if k not in enc)  # the image side trained
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 3
    # the picks are cached in the run folder: resuming reads them instead of running the decoder again
    assert (out / "decoder_picks.npz").is_file()
    capsys.readouterr()
    assert main(_tok(corpus_dir, out, 4) + ["--init", str(dec), "--freeze-encoder", "--decoder-tokens", str(dec),
                                            "--decoder-token-share", "1.0"]) == 0
    assert f"from {out / 'decoder_picks.npz'}" in capsys.readouterr().out
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 4
    # a cache written for anything else (another checkpoint, clips or cells) is recomputed, not trusted
    with np.load(out / "decoder_picks.npz") as z:
        kept = {k: z[k] for k in z.files if k != "key"}
    np.savez(out / "decoder_picks.npz", key=np.array("other"), **kept)
    assert main(_tok(corpus_dir, out, 5) + ["--init", str(dec), "--freeze-encoder", "--decoder-tokens", str(dec),
                                            "--decoder-token-share", "1.0"]) == 0
    assert "decoder_picks.npz" not in capsys.readouterr().out  # not read from the cache
    with np.load(out / "decoder_picks.npz") as z:
        assert str(z["key"]) != "other" and all(np.array_equal(z[k], v) for k, v in kept.items())

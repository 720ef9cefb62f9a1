"""The mouth critic (``train/mouth_critic.py``) and ``train-tokenizer --mouth-critic-weight``: it looks at the mouth
box of the frame and of the reference only, its openness projection moves the score, it learns to tell sharp
mouths from blurred ones on frames it never saw, its image-side term reaches the frames and never the critic's
weights, and the training run saves it, resumes it and changes what the image side learns. Also the other
term aimed at the mouth it is used with, ``--shut-mouth-weight``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from eartalking.cli import main
from eartalking.train import mouth_critic
from eartalking.train.mouth_reader import box_slices


def _box_mask(size: int) -> torch.Tensor:
    rows, cols = box_slices(size)
    keep = torch.zeros(size, size, dtype=torch.bool)
    keep[rows, cols] = True
    return keep


def test_critic_sees_only_the_mouth_boxes():
    torch.manual_seed(0)
    critic = mouth_critic.MouthCritic(64, width=8).eval()  # eval: no power-iteration step per call
    x, ref, o = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64), torch.rand(2)
    keep = _box_mask(64)
    x2, ref2 = x.clone(), ref.clone()
    x2[:, :, ~keep] = torch.rand_like(x2[:, :, ~keep])
    ref2[:, :, ~keep] = torch.rand_like(ref2[:, :, ~keep])
    base = critic(x, ref, o)
    assert torch.equal(base, critic(x2, ref2, o))
    ref2[:, :, keep] = torch.rand_like(ref2[:, :, keep])
    assert not torch.equal(base, critic(x2, ref2, o))  # the reference's mouth is seen
    with pytest.raises(ValueError, match="64 px"):
        critic(torch.rand(1, 3, 128, 128), torch.rand(1, 3, 128, 128), torch.rand(1))


def test_openness_enters_by_projection():
    torch.manual_seed(1)
    critic = mouth_critic.MouthCritic(64, width=8).eval()
    x, ref = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    shut, wide = critic(x, ref, torch.zeros(3)), critic(x, ref, torch.ones(3))
    assert not torch.allclose(shut, wide)
    middle = critic(x, ref, torch.full((3,), 0.5))
    torch.testing.assert_close(critic(x, ref, torch.full((3,), float("nan"))), middle)  # unknown = no projection
    torch.testing.assert_close(middle, 0.5 * (shut + wide))  # linear in the label


def _mouths(rng: np.random.Generator, n: int, size: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """n frames float [n,3,S,S]: noisy skin with a dark opening in the mouth box of random height (sharp
    edges), and the openness labels [n]."""
    rows, cols = box_slices(size)
    yy, xx = np.mgrid[0:size, 0:size]
    open_ = rng.uniform(0, 1, n).astype(np.float32)
    out = np.empty((n, size, size, 3), np.float32)
    for i in range(n):
        skin = rng.uniform(0.45, 0.85, 3)
        img = skin + rng.normal(0, 0.03, (size, size, 3))
        cy, cx = (rows.start + rows.stop) / 2 + rng.integers(-2, 3), (cols.start + cols.stop) / 2
        half_h, half_w = 0.5 + 0.4 * (rows.stop - rows.start) * open_[i], 0.3 * (cols.stop - cols.start)
        img[((yy - cy) / half_h) ** 2 + ((xx - cx) / half_w) ** 2 <= 1] = skin * 0.2
        out[i] = np.clip(img, 0, 1)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(open_)


def _blur(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, (3, 3, 3, 3), mode="replicate"), 7, stride=1)


def test_critic_tells_sharp_mouths_from_blurred_ones_it_never_saw():
    rng = np.random.default_rng()
    torch.manual_seed(int(rng.integers(1 << 30)))
    critic = mouth_critic.MouthCritic(64, width=16)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-3, betas=(0.5, 0.99))
    for _ in range(60):
        real, o = _mouths(rng, 16)
        loss, _ = mouth_critic.critic_loss(critic, real, _blur(real), real.flip(0), o)
        opt.zero_grad()
        loss.backward()
        opt.step()
    real, o = _mouths(rng, 64)
    with torch.no_grad():
        s_real = critic(real, real.flip(0), o).mean((1, 2, 3))
        s_fake = critic(_blur(real), real.flip(0), o).mean((1, 2, 3))
    assert float((s_real > s_fake).float().mean()) > 0.9, (s_real, s_fake)


def test_image_side_term_moves_the_frames_not_the_critic():
    torch.manual_seed(2)
    critic = mouth_critic.MouthCritic(64, width=8)
    fake = torch.rand(2, 3, 64, 64, requires_grad=True)
    loss = mouth_critic.image_side_loss(critic, fake, torch.rand(2, 3, 64, 64), torch.rand(2))
    loss.backward()
    assert all(p.grad is None for p in critic.parameters())
    assert all(p.requires_grad for p in critic.parameters())  # restored for the critic's own step
    keep = _box_mask(64)
    assert float(fake.grad[:, :, keep].abs().sum()) > 0
    assert float(fake.grad[:, :, ~keep].abs().sum()) == 0


def _tok_args(data, out, steps: int) -> list[str]:
    return ["train-tokenizer", "--data", str(data), "--out", str(out), "--preset", "test_small", "--steps",
            str(steps), "--batch", "2", "--threads", "1", "--device", "cpu", "--minutes", "0", "--seed", "5",
            "--bf16", "off"]


def test_train_tokenizer_with_a_mouth_critic(corpus_dir, tmp_path, capsys):
    """Bad settings are refused by name; with the critic on (no warmup) the image side learns something else
    than without it (same seed, same batches); the critic is saved beside the weights and resumed."""
    assert main(_tok_args(corpus_dir, tmp_path / "bad", 1) + ["--mouth-critic-weight", "-1"]) == 2
    assert "--mouth-critic-weight" in capsys.readouterr().err
    assert main(_tok_args(corpus_dir, tmp_path / "plain", 2)) == 0
    crit = ["--mouth-critic-weight", "5", "--mouth-critic-warmup", "0"]
    assert main(_tok_args(corpus_dir, tmp_path / "crit", 2) + crit) == 0
    a = load_file(str(tmp_path / "plain" / "tokenizer.safetensors"))
    b = load_file(str(tmp_path / "crit" / "tokenizer.safetensors"))
    assert [k for k in a if not torch.equal(a[k], b[k])]
    saved = load_file(str(tmp_path / "crit" / mouth_critic.WEIGHTS))
    assert main(_tok_args(corpus_dir, tmp_path / "crit", 3) + crit) == 0  # resumes at step 2, one more step
    assert "from step 2" in capsys.readouterr().out
    resumed = load_file(str(tmp_path / "crit" / mouth_critic.WEIGHTS))
    assert [k for k in saved if not torch.equal(saved[k], resumed[k])]  # the critic trained on
    critic = mouth_critic.MouthCritic(64)
    opt = torch.optim.Adam(critic.parameters())
    assert mouth_critic.load_into(critic, opt, tmp_path / "crit", torch.device("cpu"))
    assert not mouth_critic.load_into(critic, opt, tmp_path / "plain", torch.device("cpu"))


def test_shut_mouth_l1_counts_only_frames_labelled_shut():
    """``--shut-mouth-weight``'s term: the mouth box's L1 + gradient L1 on frames whose label is under the
    threshold; 0 on open frames, on unknown labels, and outside the mouth box."""
    from eartalking.train.tokenizer import box_grad_l1, box_l1, mouth_boxes, shut_mouth_l1

    box = mouth_boxes(64, torch.device("cpu"))
    x, target = torch.rand(4, 3, 64, 64), torch.rand(4, 3, 64, 64)
    openness = torch.tensor([0.05, 0.5, float("nan"), 0.14])
    got = shut_mouth_l1(x, target, openness, 0.15, box)
    full = box_l1(x, target, box) + box_grad_l1(x, target, box)
    torch.testing.assert_close(got, torch.tensor([1.0, 0.0, 0.0, 1.0]) * full)
    assert float(got[0]) > 0
    moved = x.clone()
    moved[:, :, ~(box[0, 0] > 0)] = torch.rand_like(moved[:, :, ~(box[0, 0] > 0)])
    torch.testing.assert_close(shut_mouth_l1(moved, target, openness, 0.15, box), got)


def test_train_tokenizer_refuses_bad_shut_mouth_settings(corpus_dir, tmp_path, capsys):
    assert main(_tok_args(corpus_dir, tmp_path / "bad", 1) + ["--shut-mouth-weight", "-1"]) == 2
    assert "--shut-mouth-weight" in capsys.readouterr().err
    assert main(_tok_args(corpus_dir, tmp_path / "bad2", 1) + ["--shut-mouth-weight", "1", "--shut-mouth-below",
                                                               "0"]) == 2
    assert "--shut-mouth-below" in capsys.readouterr().err
    assert main(_tok_args(corpus_dir, tmp_path / "ok", 1) + ["--shut-mouth-weight", "1"]) == 0

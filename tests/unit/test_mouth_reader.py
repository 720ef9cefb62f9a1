"""The mouth reader (``train/mouth_reader.py``) and ``train-tokenizer --mouth-reader``: it looks at the tokenizer's
mouth box only, learns openness from labelled frames (synthetic mouths here: a dark opening whose height is
the label), and its L1 reaches the image side's weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from eartalking.cli import main
from eartalking.train import mouth_reader
from eartalking.train.common import MemClip
from eartalking.train.tokenizer import mouth_boxes


@pytest.mark.parametrize("size", [64, 128])
def test_box_is_the_tokenizer_mouth_box(size):
    rows, cols = mouth_reader.box_slices(size)
    mask = np.zeros((size, size))
    mask[rows, cols] = 1
    assert np.array_equal(mask, mouth_boxes(size, torch.device("cpu"))[0, 0].numpy())


def test_reader_sees_only_the_mouth_box():
    reader = mouth_reader.MouthReader(64)
    x = torch.rand(2, 3, 64, 64)
    y = x.clone()
    rows, cols = mouth_reader.box_slices(64)
    keep = torch.zeros(64, 64, dtype=torch.bool)
    keep[rows, cols] = True
    y[:, :, ~keep] = torch.rand_like(y[:, :, ~keep])
    assert torch.equal(reader(x), reader(y))
    y[:, :, rows, cols] = torch.rand_like(y[:, :, rows, cols])
    assert not torch.equal(reader(x), reader(y))
    with pytest.raises(ValueError, match="64 px"):
        reader(torch.rand(1, 3, 128, 128))


def _mouth_clip(rng: np.random.Generator, n: int, size: int = 64) -> MemClip:
    """``n`` frames of a skin-coloured square with noise and a dark opening in the mouth box whose height is
    proportional to the frame's openness label (uniform 0..1), at a random small offset."""
    rows, cols = mouth_reader.box_slices(size)
    open_ = rng.uniform(0, 1, n).astype(np.float32)
    frames = np.empty((n, size, size, 3), np.uint8)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        skin = rng.uniform(120, 220, 3)
        img = skin + rng.normal(0, 8, (size, size, 3))
        cy = (rows.start + rows.stop) / 2 + rng.integers(-2, 3)
        cx = (cols.start + cols.stop) / 2 + rng.integers(-2, 3)
        half_h, half_w = 0.5 + 0.4 * (rows.stop - rows.start) * open_[i], 0.3 * (cols.stop - cols.start)
        inside = ((yy - cy) / half_h) ** 2 + ((xx - cx) / half_w) ** 2 <= 1
        img[inside] = skin * 0.2
        frames[i] = np.clip(img, 0, 255)
    return MemClip(name="synthetic", frames=frames, pcm=np.zeros(n * 640, np.float32),
                   controls=np.full((n, 5), np.nan, np.float32), openness=open_, portrait=frames[0],
                   identity="synthetic")


def test_reader_learns_openness_on_unseen_frames():
    rng = np.random.default_rng()
    train, held = [_mouth_clip(rng, 256)], [_mouth_clip(rng, 128)]
    reader, m = mouth_reader.train_reader(train, held, 64, steps=250, batch=32, lr=3e-3,
                                          seed=int(rng.integers(1 << 30)))
    assert m["held_r"] > 0.8 and m["held_frames"] == 128, m
    assert not any(p.requires_grad for p in reader.parameters())


def test_save_load_round_trip(tmp_path):
    reader = mouth_reader.MouthReader(64)
    x = torch.rand(3, 3, 64, 64)
    mouth_reader.save(reader, tmp_path / "r", {"held_r": 0.5})
    back = mouth_reader.load(tmp_path / "r")
    assert torch.equal(reader.eval()(x), back(x))
    from eartalking.cli import UserError

    with pytest.raises(UserError, match="no mouth_reader"):
        mouth_reader.load(tmp_path / "missing")


def _tok_args(data, out, steps: int) -> list[str]:
    return ["train-tokenizer", "--data", str(data), "--out", str(out), "--preset", "test_small", "--steps",
            str(steps), "--batch", "2", "--threads", "1", "--device", "cpu", "--minutes", "0", "--seed", "5",
            "--bf16", "off"]


def test_train_tokenizer_with_a_mouth_reader(corpus_dir, tmp_path, capsys):
    """Refused by name unless the reader and its weight come together or when the reader was trained for another
    frame size; with both, the reader's L1 changes what the image side learns (same seed, same batches)."""
    torch.manual_seed(0)
    mouth_reader.save(mouth_reader.MouthReader(64), tmp_path / "r64", {})
    mouth_reader.save(mouth_reader.MouthReader(128), tmp_path / "r128", {})
    assert main(_tok_args(corpus_dir, tmp_path / "bad", 1) + ["--mouth-read-weight", "1"]) == 2
    assert "--mouth-reader" in capsys.readouterr().err
    assert main(_tok_args(corpus_dir, tmp_path / "bad2", 1) + ["--mouth-reader", str(tmp_path / "r64")]) == 2
    assert "--mouth-read-weight" in capsys.readouterr().err
    assert main(_tok_args(corpus_dir, tmp_path / "bad3", 1) + ["--mouth-reader", str(tmp_path / "r128"),
                                                               "--mouth-read-weight", "1"]) == 2
    assert "128 px" in capsys.readouterr().err
    assert main(_tok_args(corpus_dir, tmp_path / "plain", 2)) == 0
    assert main(_tok_args(corpus_dir, tmp_path / "read", 2) + ["--mouth-reader", str(tmp_path / "r64"),
                                                               "--mouth-read-weight", "50"]) == 0
    a = load_file(str(tmp_path / "plain" / "tokenizer.safetensors"))
    b = load_file(str(tmp_path / "read" / "tokenizer.safetensors"))
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert differ

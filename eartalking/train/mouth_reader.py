"""A small CNN that reads mouth openness from the mouth box of an aligned frame: a judge for the image side.

What: ``MouthReader`` maps frames float [B,3,S,S] (0..1) to openness float [B] (0 shut .. 1 wide open), looking
only at the mouth box (``train.tokenizer.mouth_boxes``: x 0.30..0.70, y 0.56..0.84 of the side). ``train_reader``
fits it to the corpus's openness labels on its own video frames (shifts, brightness and flips as augmentation);
``train-tokenizer --mouth-reader DIR --mouth-read-weight W`` then asks the image side to draw mouths that the
frozen reader reads as open as the target frame's: an L1 between reader(decoded) and reader(target).

Why: the image side draws an uncertain open mouth as a light blur where the video has a dark cavity (MODEL_CARD,
session 10), and lip-sync is read from the lips' edges. An L1 over pixels cannot tell a blurred mouth from a
sharp one of the same mean colour; a reader trained on the corpus's sharp mouths reads a blur as less open, so
its gradient points at drawing the opening. The reader is ours and is used only in training; the measure that
judges the result stays dlib's (``eartalking measure``), which the reader has never seen.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm import tqdm

from eartalking.cli import UserError

WEIGHTS, CONFIG = "mouth_reader.safetensors", "mouth_reader.json"


@functools.cache
def box_slices(size: int) -> tuple[slice, slice]:
    """The mouth box of a ``size`` px crop (``train.tokenizer.mouth_boxes``, the one definition) as (rows, cols)
    slices; cached, since every reader and critic call crops with it."""
    from eartalking.train.tokenizer import mouth_boxes

    mask = mouth_boxes(size, torch.device("cpu"))[0, 0] > 0
    rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def crop_mouth(frames: torch.Tensor, size: int, who: str) -> torch.Tensor:
    """Frames [...,3,S,S] -> their mouth box [...,3,h,w] (``box_slices``); ValueError naming ``who`` (the network
    built for ``size`` px frames) when S is another size."""
    if frames.shape[-1] != size or frames.shape[-2] != size:
        raise ValueError(f"{who} was built for {size} px frames, got {tuple(frames.shape[-2:])}")
    rows, cols = box_slices(size)
    return frames[..., rows, cols]


class MouthReader(nn.Module):
    """Frames float [B,3,S,S] in 0..1 -> openness float [B] in 0..1, read from the mouth box only.

    Four 3x3 conv blocks (stride 2 after the first) over the box's luminance and colour, a global average and a
    linear head; ~25 k parameters, so it is cheap beside the tokenizer in every training step."""

    def __init__(self, size: int, width: int = 24):
        super().__init__()
        self.size, self.width = int(size), int(width)
        w = self.width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.GELU(),
            nn.Conv2d(w, w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.GELU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.GELU(),
        )
        self.head = nn.Linear(2 * w, 1)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = crop_mouth(frames, self.size, "MouthReader") * 2.0 - 1.0
        return torch.sigmoid(self.head(self.body(x).mean((-2, -1)))).squeeze(-1)


def save(reader: MouthReader, out: Path, extra: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in reader.state_dict().items()}, str(out / WEIGHTS))
    (out / CONFIG).write_text(json.dumps({"size": reader.size, "width": reader.width, **extra}, indent=1))


def load(path: str | Path, device: torch.device | str = "cpu") -> MouthReader:
    """A saved reader (its folder), frozen, in eval mode. UserError when the folder holds none."""
    p = Path(path)
    if not (p / WEIGHTS).is_file() or not (p / CONFIG).is_file():
        raise UserError(f"--mouth-reader {path}: no {WEIGHTS} + {CONFIG} there (train one with "
                        "scripts/train_mouth_reader.py)")
    cfg = json.loads((p / CONFIG).read_text())
    reader = MouthReader(cfg["size"], cfg.get("width", 24))
    reader.load_state_dict(load_file(str(p / WEIGHTS)))
    return reader.to(device).eval().requires_grad_(False)


def _frames_with_labels(clips) -> tuple[np.ndarray, np.ndarray]:
    """Every labelled frame of ``clips`` (common.MemClip) -> (uint8 [M,S,S,3], float32 [M] openness)."""
    imgs, opens = [], []
    for c in clips:
        ok = np.isfinite(c.openness[:len(c.frames)])
        imgs.append(c.frames[:len(ok)][ok])
        opens.append(c.openness[:len(ok)][ok])
    if not imgs or sum(len(o) for o in opens) == 0:
        raise UserError("no frames with an openness label to train the mouth reader on")
    return np.concatenate(imgs), np.concatenate(opens).astype(np.float32)


def _augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """[B,3,S,S] -> the same with a random shift of up to 4 px, a flip, and brightness/contrast jitter."""
    B = x.shape[0]
    u = lambda *s: torch.rand(*s, generator=gen)  # noqa: E731
    dy, dx = (int(v) for v in torch.randint(-4, 5, (2,), generator=gen))
    x = torch.roll(x, (dy, dx), (-2, -1))
    flip = u(B) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    gain, bias = 0.8 + 0.4 * u(B, 1, 1, 1), 0.1 * (u(B, 1, 1, 1) - 0.5)
    return ((x - 0.5) * gain + 0.5 + bias).clamp(0, 1)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """``measure``'s Pearson r (``evaluate.signals.pearson``), 0.0 where it is undefined (a constant reading)."""
    from eartalking.evaluate.signals import pearson as r

    v = r(a, b)
    return 0.0 if v is None else v


@torch.no_grad()
def read_all(reader: MouthReader, frames: np.ndarray, batch: int = 256) -> np.ndarray:
    """uint8 [M,S,S,3] -> the reader's openness float [M]."""
    from eartalking.train.common import to_image_tensor

    dev = next(reader.parameters()).device
    return np.concatenate([reader(to_image_tensor(frames[i:i + batch], dev)).cpu().numpy()
                           for i in range(0, len(frames), batch)]) if len(frames) else np.zeros(0, np.float32)


def train_reader(train_clips, held_clips, size: int, steps: int, batch: int = 64, lr: float = 2e-3,
                 seed: int = 0, minutes: float = 0.0) -> tuple[MouthReader, dict]:
    """Fit a ``MouthReader`` to the openness labels of ``train_clips``' frames (L1) -> (reader, metrics with
    the held-out r between its reading and the labels of ``held_clips``' frames)."""
    from eartalking.train.common import to_image_tensor

    torch.manual_seed(seed)
    imgs, opens = _frames_with_labels(train_clips)
    reader = MouthReader(size)
    opt = torch.optim.AdamW(reader.parameters(), lr=lr, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    step = 0
    for step in tqdm(range(1, steps + 1), desc="mouth reader", unit="step"):
        for g in opt.param_groups:
            g["lr"] = lr * 0.5 * (1 + np.cos(np.pi * step / steps))
        idx = rng.integers(len(imgs), size=batch)
        x = _augment(to_image_tensor(imgs[idx], torch.device("cpu")), gen)
        loss = F.l1_loss(reader(x), torch.from_numpy(opens[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if minutes and time.perf_counter() - t0 > 60 * minutes:
            break
    reader.eval()
    h_imgs, h_opens = _frames_with_labels(held_clips)
    pred = read_all(reader, h_imgs)
    metrics = {"steps": step, "train_frames": int(len(imgs)), "held_frames": int(len(h_imgs)),
               "held_r": pearson(pred, h_opens), "held_l1": float(np.abs(pred - h_opens).mean()),
               "seconds": round(time.perf_counter() - t0, 1)}
    return reader.requires_grad_(False), metrics

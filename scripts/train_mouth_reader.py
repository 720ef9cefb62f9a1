"""Train the mouth reader that ``train-tokenizer --mouth-reader`` uses as a judge of the image side's mouths.

Usage: .venv/bin/python scripts/train_mouth_reader.py --data corpus500 --out runs/mouth_reader [--steps 3000]
       [--minutes 10] [--batch 64] [--seed 0] [--threads 1] [--tokenizer checkpoints/tiny]

Fits ``eartalking.train.mouth_reader.MouthReader`` to the openness labels of the corpus's training frames and
prints its held-out r (the corpus's ``eval`` split: people, voices and sentences it never saw). With
``--tokenizer``, it also reads the held-out frames after a round trip through that tokenizer (encode, decode
with the clip's portrait): a reader that reads the round trip lower than the video sees what the image side
loses at the mouth, which is what it is meant to teach.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


@torch.no_grad()
def round_trip_r(reader, clips, tokenizer: str, size: int) -> float:
    """r between the reader's openness on ``clips``' frames after a round trip through ``tokenizer`` and the
    labels."""
    from eartalking.model import checkpoint
    from eartalking.train import common
    from eartalking.train.mouth_reader import pearson

    model, _ = checkpoint.load(tokenizer, device=torch.device("cpu"))
    tok = model.tokenizer.eval()
    preds, labels = [], []
    for c in clips:
        ok = np.isfinite(c.openness[:len(c.frames)])
        idx = np.nonzero(ok)[0]
        for i in range(0, len(idx), 64):
            sel = idx[i:i + 64]
            img = common.to_image_tensor(c.frames[sel], torch.device("cpu"))
            ref = common.to_image_tensor(np.repeat(c.portrait[None], len(sel), 0), torch.device("cpu"))
            rec = tok(img, ref)[0].clamp(0, 1)
            preds.append(reader(rec).numpy())
            labels.append(c.openness[sel])
    return pearson(np.concatenate(preds), np.concatenate(labels))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="corpus500", help="corpus folder (training frames and its eval split)")
    p.add_argument("--out", required=True, help="output folder (mouth_reader.safetensors + mouth_reader.json)")
    p.add_argument("--size", type=int, default=128, help="frame side in px (the tokenizer's image_size)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--minutes", type=float, default=0.0, help="wall-time budget (0 = none)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--limit-clips", type=int, default=0, help="at most this many training clips (0 = all)")
    p.add_argument("--tokenizer", default="", help="also read the held-out frames' round trip through this "
                                                   "checkpoint's tokenizer")
    a = p.parse_args(argv)
    if a.steps < 1 or a.batch < 1:
        raise SystemExit("--steps and --batch must be >= 1")
    torch.set_num_threads(max(1, a.threads))
    from eartalking.train import common, mouth_reader

    train = common.load_corpus(a.data, "train", a.limit_clips, size=a.size)
    held = common.load_heldout(a.data, train, 0, size=a.size)
    reader, metrics = mouth_reader.train_reader(train, held, a.size, a.steps, a.batch, a.lr, a.seed, a.minutes)
    if a.tokenizer:
        metrics["held_round_trip_r"] = round_trip_r(reader, held, a.tokenizer, a.size)
    mouth_reader.save(reader, Path(a.out), {"data": a.data, "seed": a.seed, **metrics})
    print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Lip-sync of the generated mouth *tokens*, before the image side draws them.

Usage: .venv/bin/python scripts/token_lipsync.py [--checkpoint checkpoints/tiny] [--data corpus500]
       [--clips 40] [--digits picked|expected] [--threads 1]

For each held-out clip of ``--data`` it streams the clip greedily (evaluate's generator) and records, per
frame, the FSQ digits of the mouth cells' tokens (``region_cells`` minus ``eye_cells``): the tokens the
decoder picked (``picked``, default) or the expected digits under its distribution (``expected``, before
code_mean rounds them). A linear readout (least squares, with a bias) from those digits to the clip's
openness labels is fitted on the even-numbered clips and scored, as the mean per-clip r, on the odd ones,
per group (TTS voices, human voice).

Why: the measured lip-sync (dlib on the drawn 128 px frames) mixes two stages. This isolates the first:
whether the step decoder's mouth tokens follow the speech at all. A high token r with a low measured r puts
the loss in the image side (how it draws those tokens) and the instrument, not in the decoder or the audio.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np


def readout_r(digits: list[np.ndarray], labels: list[np.ndarray], groups: list[str]) -> dict[str, tuple[float, int]]:
    """digits: per clip float [T_i, F]; labels: per clip float [T_i]; groups: per clip name.
    Fit on clips 0, 2, 4, ...; score on 1, 3, 5, ... -> {group: (mean r, clips scored)} (r of a constant
    prediction or label track is left out)."""
    if len(digits) < 2:
        raise SystemExit("token_lipsync: needs at least 2 clips (one to fit the readout, one to score it)")
    fit = range(0, len(digits), 2)
    A = np.concatenate([np.c_[digits[i], np.ones(len(digits[i]))] for i in fit])
    b = np.concatenate([labels[i] for i in fit])
    w = np.linalg.lstsq(A, b, rcond=None)[0]
    rs: dict[str, list[float]] = {}
    for i in range(1, len(digits), 2):
        pred = np.c_[digits[i], np.ones(len(digits[i]))] @ w
        if np.std(pred) > 1e-9 and np.std(labels[i]) > 1e-9:
            rs.setdefault(groups[i], []).append(float(np.corrcoef(pred, labels[i])[0, 1]))
    return {g: (float(np.mean(v)), len(v)) for g, v in sorted(rs.items())}


def mouth_digits(model, case, cells: list[int], mode: str) -> np.ndarray:
    """Stream one case; -> float [T, len(cells) * FSQ digits] of its mouth cells' digits (``mode``)."""
    import torch

    from eartalking.evaluate import generate_eval as ge

    L = int(model.tokenizer.levels)
    # [K, d] digits of each token: Tokenizer.grid holds them mapped to [-1, 1]
    grid = torch.round((model.tokenizer.grid.float().cpu() + 1.0) * (L - 1) / 2.0)
    rows: list[torch.Tensor] = []
    original = model.decoder.pick

    def pick(logits, temperature, gumbel, ref_tokens, control_mask=None):
        out = original(logits, temperature, gumbel, ref_tokens, control_mask)
        if mode == "picked":
            rows.append(grid[out[0, cells].cpu()].flatten())
        else:
            p = torch.softmax(logits[0, cells].float().cpu() / model.decoder.code_mean_temperature, -1)
            rows.append((p @ grid).flatten())
        return out

    model.decoder.pick = pick
    try:
        ge.generate(model, case.portrait, case.pcm, case.n_frames)
    finally:
        model.decoder.pick = original
    return torch.stack(rows).numpy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/tiny")
    p.add_argument("--data", default="corpus500", help="corpus whose held-out (eval split) clips are used")
    p.add_argument("--clips", type=int, default=40, help="held-out clips: half fit the readout, half score it")
    p.add_argument("--digits", choices=("picked", "expected"), default="picked",
                   help="the picked tokens' digits, or the expected digits before code_mean rounds them")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    if args.clips < 2:
        p.error(f"--clips must be >= 2 (one clip fits the readout, one scores it), got {args.clips}")
    if not (Path(args.data) / "split.json").is_file():
        p.error(f"--data {args.data}: no split.json there (a corpus folder from `eartalking corpus`)")
    import torch
    from tqdm import tqdm

    from eartalking.evaluate import cases as casesmod
    from eartalking.model import checkpoint
    from eartalking.train.decoder import eye_cells, region_cells

    torch.set_num_threads(max(1, args.threads))
    model, cfg = checkpoint.load(args.checkpoint)
    cells = [c for c in region_cells(cfg) if c not in set(eye_cells(cfg))]
    cases = [c for c in casesmod.Corpus(args.data, cfg.tokenizer.image_size).heldout_cases(args.clips, human=0)
             if c.labels and "openness" in c.labels]
    X, Y, G = [], [], []
    for c in tqdm(cases, desc="clips", unit="clip", leave=False):
        X.append(mouth_digits(model, c, cells, args.digits))
        Y.append(np.nan_to_num(np.asarray(c.labels["openness"], np.float64)[: c.n_frames]))
        G.append("human" if c.human else "tts")
    res = readout_r(X, Y, G)
    print(f"mouth cells {cells}; {args.digits} digits; readout fitted on {len(range(0, len(X), 2))} clips")
    print("| voices | clips scored | token lip-sync r |\n|---|---|---|")
    for g, (r, n) in res.items():
        print(f"| {g} | {n} | {r:+.2f} |" if math.isfinite(r) else f"| {g} | {n} | - |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

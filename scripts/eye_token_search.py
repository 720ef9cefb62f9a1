"""Can any tokens make a tokenizer's image side draw shut eyes? Tells the encoder and the image decoder apart.

Usage: .venv/bin/python scripts/eye_token_search.py --tokenizer RUN_OR_CHECKPOINT [--data corpus] [--blinks 4]
       [--sweeps 2] [--png out/eye_token_search.png]

For each of the first ``--blinks`` training frames whose blink label peaks at >= 0.9, it decodes the frame's
own tokens with the clip's portrait as the reference (what a perfect step decoder would give), then searches
the tokens of the cells over and above the eyes (``train.decoder.eye_cells`` and the row above), one cell at
a time over all K tokens, ``--sweeps`` times, for the choice that brings the eye boxes
(``model.tokenizer.eye_boxes``) closest to the shut-eyed frame in L1. It prints, per blink, the eye-box L1 of
the frame's own tokens (``encoder``) and of the best tokens found (``best``), and writes a PNG:
ground truth | own tokens | best tokens around the eyes, one blink per row.

Read the PNG. If the best tokens still draw open eyes, no token the step decoder could emit shows a blink:
the image side copies the eyes from the reference, and only retraining it with shut-eyed frames weighted up
can fix blinks. If they draw shut eyes, the image side can, and the encoder is what fails to ask for them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


@torch.no_grad()
def search(tok, img: torch.Tensor, refs: list[torch.Tensor], cells: list[int], box: torch.Tensor,
           sweeps: int, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Coordinate search over ``cells``: tokens [1,N] -> (best tokens [1,N], own tokens [1,N])."""
    from eartalking.train.tokenizer import box_l1

    def errors(tokens: torch.Tensor) -> torch.Tensor:  # [B,N] -> [B], decoded in chunks
        out = []
        for part in tokens.split(chunk):
            out.append(box_l1(tok.decode(part, [r.expand(len(part), *r.shape[1:]) for r in refs]), img, box))
        return torch.cat(out)

    own = tok.encode(img)
    best = own.clone()
    best_err = float(errors(best)[0])
    K = tok.cfg.codebook_size
    for _ in range(sweeps):
        for cell in cells:
            cand = best.repeat(K, 1)
            cand[:, cell] = torch.arange(K)
            errs = errors(cand)
            k = int(errs.argmin())
            if float(errs[k]) < best_err:
                best_err, best[0, cell] = float(errs[k]), k
    return best, own


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tokenizer", required=True, help="a train-tokenizer run or a checkpoint folder")
    p.add_argument("--data", default="corpus")
    p.add_argument("--blinks", type=int, default=4, help="blinks to search (about 1.5 min each on one thread)")
    p.add_argument("--sweeps", type=int, default=2)
    p.add_argument("--png", default="out/eye_token_search.png")
    args = p.parse_args(argv)
    from PIL import Image

    from eartalking.config import CONTROL_NAMES
    from eartalking.model import checkpoint
    from eartalking.model.tokenizer import eye_boxes
    from eartalking.train import common
    from eartalking.train.decoder import eye_cells
    from eartalking.train.tokenizer import box_l1

    tok, cfg = checkpoint.load_tokenizer(args.tokenizer)
    S, g = tok.cfg.image_size, tok.cfg.grid
    eyes = eye_cells(cfg)
    cells = sorted(set(eyes) | {c - g for c in eyes if c >= g})  # the eye cells and the row above (brows, lids)
    box = eye_boxes(S, torch.device("cpu"))
    bi = CONTROL_NAMES.index("blink")
    rows, found = [], 0
    for clip in common.load_corpus(args.data, "train", 0, size=S):
        b = np.nan_to_num(clip.controls[:, bi])
        t = int(b.argmax())
        if b[t] < 0.9:
            continue
        img = common.to_image_tensor(clip.frames[[t]], "cpu")
        refs = tok.reference(common.to_image_tensor(clip.portrait[None], "cpu"))
        best, own = search(tok, img, refs, cells, box, args.sweeps)
        with torch.no_grad():
            out_own, out_best = tok.decode(own, refs), tok.decode(best, refs)
            e_own, e_best = (float(box_l1(x, img, box)[0]) for x in (out_own, out_best))
        print(f"{clip.name} frame {t} (blink {b[t]:.2f}): eye-box L1 encoder tokens {e_own:.4f} | best tokens "
              f"{e_best:.4f} ({int((best != own).sum())} of {len(cells)} cells changed)", flush=True)
        band = slice(int(0.25 * S), int(0.6 * S))
        rows.append(np.concatenate([(x[0].clamp(0, 1).permute(1, 2, 0).numpy()[band] * 255).astype(np.uint8)
                                    for x in (img, out_own, out_best)], 1))
        found += 1
        if found >= args.blinks:
            break
    if not rows:
        print(f"{args.data}: no training frame with a blink label >= 0.9")
        return 1
    Path(args.png).parent.mkdir(parents=True, exist_ok=True)
    strip = np.concatenate(rows, 0)
    Image.fromarray(strip).resize((strip.shape[1] * 2, strip.shape[0] * 2)).save(args.png)
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

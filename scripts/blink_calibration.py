"""Calibrate the evaluator's blink detector on ground truth: the corpus's own videos and blink labels.

Usage: .venv/bin/python scripts/blink_calibration.py [--data corpus] [--clips 60] [--drops 0.65,0.75,0.8,0.86,0.9]
       [--signal eye_signal|eye_openness] [--skip N] [--tokenizer RUN_OR_CHECKPOINT]

For each clip, ``measure`` gives the eye curve of the corpus video (``eye_signal``, what evaluate detects
blinks on, or the landmark-only ``eye_openness``) and the labels give the blinks
(``report.blink_peaks``: local maxima of the blink label >= 0.5). For each dip threshold of
``signals.detect_blinks`` it prints how many labelled blinks are found (the evaluate hit rule, -3..+5 frames)
and how many detected events match no labelled blink (per minute of video), plus the quantiles of the
dip at labelled blinks (minimum over the blink / running median). This is what says whether the blink target
can be read at this resolution, and where ``signals.BLINK_DROP`` comes from; it does not change the evaluator.
With --tokenizer the same is measured on the clips' tokenizer round trip (encode, decode with the clip's
portrait): the most of the labelled blinks a decoder predicting perfect tokens could show. A tokenizer
trained with ``--eye-code`` gets each frame's blink label written into its eye tokens first
(``train/eye_code.py``), as the step decoder's targets are. ``--split eval`` keeps to held-out people.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="corpus")
    p.add_argument("--clips", type=int, default=60)
    p.add_argument("--drops", default="0.65,0.75,0.8,0.83,0.86,0.9")
    p.add_argument("--signal", default="eye_signal", choices=("eye_signal", "eye_openness"))
    p.add_argument("--split", default="all", choices=("all", "train", "eval"))
    p.add_argument("--skip", type=int, default=0, help="leave out the first N clips (a second, unseen sample)")
    p.add_argument("--tokenizer", default="",
                   help="a train-tokenizer run or a checkpoint folder: measure its round trip of each clip instead")
    a = p.parse_args()
    from eartalking.config import CONTROL_NAMES
    from eartalking.evaluate import signals
    from eartalking.evaluate.measure import measure_frames
    from eartalking.evaluate.report import blink_hits, blink_peaks, blink_unmatched
    from eartalking.train import common

    drops = [float(x) for x in a.drops.split(",")]
    clips = common.load_corpus(a.data, a.split, a.skip + a.clips, size=128)[a.skip:]
    bi = CONTROL_NAMES.index("blink")
    found = {d: [0, 0] for d in drops}
    dips, labelled, frames = [], 0, 0
    roundtrip = _roundtrip(a.tokenizer) if a.tokenizer else None
    for c in clips:
        video = roundtrip(c) if roundtrip else c.frames
        m = measure_frames(video, None, portrait=None, every=10**9)
        eye = np.array([np.nan if v is None else v for v in m["curves"][a.signal]], float)
        peaks = blink_peaks(c.controls[:, bi])
        labelled += len(peaks)
        frames += len(eye)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # all-NaN windows where no face was found
            for t in peaks:
                dips.append(np.nanmin(eye[max(0, t - 1):t + 3]) / np.nanmedian(eye[max(0, t - 25):t + 26]))
        for d in drops:
            ev = signals.detect_blinks(eye, 25.0, drop=d)
            found[d][0] += len(blink_hits(peaks, ev))
            found[d][1] += len(blink_unmatched(peaks, ev))
    q = np.nanquantile(dips, [0.1, 0.25, 0.5, 0.75, 0.9]) if dips else []
    print(f"{len(clips)} clips, {frames} frames, {labelled} labelled blinks; {a.signal} dip at a blink "
          f"(10/25/50/75/90%): {np.round(q, 2).tolist()}")
    minutes = frames / 25.0 / 60.0
    for d, (hit, false) in found.items():
        print(f"drop {d:.2f}: found {hit}/{labelled} = {hit / max(labelled, 1):.0%}, "
              f"unmatched events {false} ({false / minutes:.1f} per minute)")


def _roundtrip(src: str):
    """clip -> uint8 [T,S,S,3]: the tokenizer of ``src`` encodes each frame and decodes it with the portrait."""
    import torch

    from eartalking.config import CONTROL_NAMES
    from eartalking.model import checkpoint
    from eartalking.train import common
    from eartalking.train.eye_code import tokenizer_eye_code

    tok = checkpoint.load_tokenizer(src)[0]
    cpu = torch.device("cpu")
    bi = CONTROL_NAMES.index("blink")

    def run(c) -> np.ndarray:
        with torch.no_grad():
            img = common.to_image_tensor(c.frames, cpu)
            ref = common.to_image_tensor(np.repeat(c.portrait[None], len(img), 0), cpu)
            toks = tokenizer_eye_code(tok, tok.encode(img), torch.from_numpy(c.controls[:, bi].astype(np.float32)))
            rec = tok.decode(toks, tok.reference(ref)).clamp(0, 1)
        return (rec.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)

    return run


if __name__ == "__main__":
    main()

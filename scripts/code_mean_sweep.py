"""Choose ``decoder.code_mean_temperature`` on training people and voices: lip-sync r for each temperature.

Usage: .venv/bin/python scripts/code_mean_sweep.py [--checkpoint checkpoints/tiny] [--data corpus]
       [--temperatures 1,1.5,2,3] [--train-clips 16] [--heldout-clips 0] [--human 0] [--threads 1]

``code_mean`` picks, per token cell, the token nearest the expected FSQ digits under softmax(logits / T).
T is a calibration of the trained head, not of the data, so it is chosen here on *training* clips (people
and voices the model was trained on; the corpus's train split, one clip per person first) and only then
read on held-out clips: picking it on the clips that ``eartalking evaluate`` reports would tune on the test.

For each T it generates every clip greedily from its portrait and speech (the streaming generator that
evaluate uses), measures mouth openness on the frames (``measure_frames``, as evaluate does) and prints the
mean r against the clip's ground-truth openness labels, per group, and the T with the best training r.
Ship the choice with ``scripts/ship_checkpoint.py ... --code-mean-temperature T``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import numpy as np


def parse_temperatures(text: str) -> list[float]:
    try:
        ts = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"--temperatures: comma-separated numbers, got {text!r}") from None
    if not ts or any(not (t > 0 and math.isfinite(t)) for t in ts):
        raise SystemExit(f"--temperatures: each must be a finite number > 0, got {text!r}")
    return ts


def openness_r(model, case) -> float | None:
    """Greedy generation of one case -> r between measured mouth openness and its labels (None if unmeasured)."""
    from eartalking.evaluate import generate_eval as ge
    from eartalking.evaluate.measure import measure_frames

    T = case.n_frames
    g = ge.generate(model, case.portrait, case.pcm, T)
    m = measure_frames(g.stack(), case.pcm, labels=ge.utterance_labels(case.labels, T), every=10**9)
    r = (m["labels"] or {}).get("openness_r")
    return float(r) if r is not None and math.isfinite(r) else None


def mean(xs: list[float | None]) -> float:
    v = [x for x in xs if x is not None]
    return float(np.mean(v)) if v else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/tiny")
    p.add_argument("--data", default="corpus")
    p.add_argument("--temperatures", default="1,1.5,2,3", help="comma-separated code_mean temperatures (> 0)")
    p.add_argument("--train-clips", type=int, default=16, help="training clips to choose on (default 16)")
    p.add_argument("--heldout-clips", type=int, default=0,
                   help="held-out eval clips to read the choice on afterwards (default 0: none)")
    p.add_argument("--human", type=int, default=0, help="held-out human-voice cases with --heldout-clips")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    temps = parse_temperatures(args.temperatures)
    if args.train_clips < 1:
        p.error(f"--train-clips must be >= 1, got {args.train_clips}")

    import torch
    from tqdm import tqdm

    from eartalking.evaluate import cases as casesmod
    from eartalking.model import checkpoint

    torch.set_num_threads(max(1, args.threads))
    model, cfg = checkpoint.load(args.checkpoint)
    if cfg.decoder.greedy != "code_mean":
        print(f"note: {args.checkpoint} ships greedy={cfg.decoder.greedy!r}; the sweep sets code_mean",
              file=sys.stderr)
    model.decoder.greedy = "code_mean"
    corpus = casesmod.Corpus(args.data, cfg.tokenizer.image_size)
    groups = {"train": corpus.train_cases(args.train_clips)}
    if args.heldout_clips > 0:
        held = corpus.heldout_cases(args.heldout_clips, human=args.human)
        groups["heldout_tts"] = [c for c in held if not c.human]
        groups["heldout_human"] = [c for c in held if c.human]
    table: dict[float, dict[str, float]] = {}
    for t in temps:
        model.decoder.code_mean_temperature = t
        t0 = time.time()
        row = {}
        for name, cases in groups.items():
            rs = [openness_r(model, c) for c in tqdm(cases, desc=f"T={t:g} {name}", unit="clip", leave=False)]
            row[name] = mean(rs)
        row["seconds"] = time.time() - t0
        table[t] = row
        print(f"T={t:<5g} " + "  ".join(f"{k} r {v:+.3f}" for k, v in row.items() if k != "seconds")
              + f"  ({row['seconds']:.0f} s)", flush=True)
    best = max(temps, key=lambda t: -1 if math.isnan(table[t]["train"]) else table[t]["train"])
    print("\n| T | " + " | ".join(groups) + " |\n|---|" + "---|" * len(groups))
    for t in temps:
        mark = " (best on train)" if t == best else ""
        print(f"| {t:g}{mark} | " + " | ".join(f"{table[t][g]:+.3f}" for g in groups) + " |")
    print(f"\nchosen on training clips: --code-mean-temperature {best:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Requested blinks over held-out people, with the eye signal's dip at each request: ``evaluate``'s blink check
(``report.blink_track``) on a chosen slice of people, e.g. the held-out photos evaluate does not use.

Usage: .venv/bin/python scripts/blink_requests.py [--checkpoint checkpoints/tiny] [--data corpus500]
       [--people 8] [--skip-people 0] [--frames 150]
       [--split eval]

For each of the first ``--people`` distinct people of the split, the PyTorch streaming generator speaks that
clip's audio with the blink control set as ``evaluate`` sets it (``generate_eval.control_track``: a blink
peaking every 25 frames from frame 12, eyes explicitly open elsewhere), ``measure`` finds blinks on the
eye signal, and a requested blink counts as a hit under evaluate's rule (a measured blink -3..+5 frames
from it). Prints hits per person, the total hit rate, unrequested events, and the quantiles of the eye
signal's dip at requested blinks (minimum over the blink / running median; the detector fires below
``signals.BLINK_DROP``). ``--skip-people 8`` is a validation set apart from evaluate's people.
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/tiny")
    p.add_argument("--data", default="corpus500")
    p.add_argument("--split", default="eval", choices=("eval", "train"))
    p.add_argument("--people", type=int, default=8)
    p.add_argument("--skip-people", type=int, default=0,
                   help="leave out the first N people: a validation set apart from evaluate's (e.g. to choose "
                        "ship_checkpoint.py --eye-temperature)")
    p.add_argument("--frames", type=int, default=150)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    import torch

    from eartalking.evaluate.report import blink_track
    from eartalking.model import checkpoint
    from eartalking.train import common

    torch.set_num_threads(a.threads)
    model, _ = checkpoint.load(a.checkpoint)
    model.eval()
    seen, people = set(), []
    for c in common.load_corpus(a.data, a.split, 0, size=model.cfg.tokenizer.image_size):
        if c.identity not in seen:
            seen.add(c.identity)
            people.append(c)
    people = people[a.skip_people:a.skip_people + a.people]
    if not people:
        raise SystemExit(f"no people left in the {a.split} split after --skip-people {a.skip_people}")
    T = a.frames
    hits = requested = unrequested = 0
    dips = []
    for c in people:
        with torch.no_grad():
            b, _ = blink_track(model, c.portrait, None, c.pcm, T)
        dips += [d for d in b["dips"] if d is not None]
        hits, requested, unrequested = hits + b["hits"], requested + b["requested"], unrequested + b["unrequested"]
        print(f"{c.identity}: {b['hits']}/{b['requested']} requested blinks measured, {b['unrequested']} unrequested",
              flush=True)
    q = np.round(np.quantile(dips, [0.1, 0.25, 0.5, 0.75, 0.9]), 2).tolist() if dips else []
    print(f"{len(people)} people: {hits}/{requested} = {hits / max(requested, 1):.0%} requested blinks measured, "
          f"{unrequested} unrequested; eye-signal dip at a requested blink (10/25/50/75/90%): {q}")


if __name__ == "__main__":
    main()

"""Choose ``decoder.code_mean_temperature`` (and the mouth's ``code_mean_gain``): lip-sync r for each setting,
on clips evaluate does not report.

Usage: .venv/bin/python scripts/code_mean_sweep.py [--checkpoint checkpoints/tiny] [--data corpus500]
       [--temperatures 1,1.2,1.3,1.4,1.5,1.75] [--mouth-gains 1,1.25,1.5] [--clips 40] [--human-prompts 24]
       [--train-clips 8] [--threads 1] [--json OUT] [--paired-with PREV.json]

``code_mean`` picks, per token cell, the token nearest the expected FSQ digits under softmax(logits / T).
On people and voices the model knows its distributions are sharp and T hardly matters; on new ones the mass
spreads and the closed-mouth mode wins at T = 1, so the mouth under-moves. T is a calibration of the trained
head for *unseen* input, so it is chosen on held-out clips, but not on the ones ``eartalking evaluate``
reports: pass a validation corpus rendered from the same split with another size or seed (``eartalking
corpus --out corpus500 --clips 500``: its eval clips pair the held-out people, voices and sentences
differently and are rendered afresh; evaluate reads ``corpus``). Training clips are printed beside it
as a check that seen input does not get worse. A corpus holds few human clips (corpus500: 7), so
``--human-prompts`` adds held-out recordings of the human voice that evaluate never reports
(``Corpus.validation_human_cases``; other sentences than the corpus's human clips), on held-out
portraits; they are printed as their own group and with the human clips (``human_all``), and do not
enter the choice, which stays the mean over the corpus's clips.

For each T (and each mouth gain G: ``decoder.code_mean_gain`` on the mouth cells, which moves their expected
digits G times as far from the portrait's) it generates every clip greedily from its portrait and speech (the
streaming generator that evaluate uses), measures mouth openness on the frames (``measure_frames``, as evaluate
does) and prints the mean r against the clip's ground-truth openness labels per group. With one gain, the T
with the best mean over all validation clips is the choice. With several gains, the choice is the setting
whose worse group of the two that evaluate holds to the same target, TTS voices (``validation_tts``) and the
human voice (``human_all``), is highest. With several settings it also prints, per group, each setting's mean
per-case difference from the first one with its standard error: every setting runs on the same cases, so the
paired difference is far less noisy than the difference of two group means (one-word human prompts score
r near +-1 either way). Ship it with ``scripts/ship_checkpoint.py ... --code-mean-temperature
T [--mouth-gain G]``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path


def parse_positive_list(text: str, flag: str = "--temperatures") -> list[float]:
    """Comma-separated finite numbers > 0 (``flag`` names the option in the error)."""
    try:
        ts = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"{flag}: comma-separated numbers, got {text!r}") from None
    if not ts or any(not (t > 0 and math.isfinite(t)) for t in ts):
        raise SystemExit(f"{flag}: each must be a finite number > 0, got {text!r}")
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


def join_cases(cases: list, k: int) -> list:
    """Human prompt cases -> long ones: each person's cases (in order) joined ``k`` at a time (the last, shorter
    group too when it has 2 or more) into one case whose pcm and per-frame labels are the parts' end to end
    (each part's pcm is a whole number of frames, ``human_utterances``). Named ``long_<i>@<portrait>``."""
    import dataclasses

    import numpy as np

    by_person: dict[str, list] = {}
    for c in cases:
        by_person.setdefault(c.portrait_key, []).append(c)
    out = []
    for key, cs in by_person.items():
        for j in range(0, len(cs), k):
            part = cs[j:j + k]
            if len(part) < 2:
                continue
            labels = {n: np.concatenate([np.asarray(c.labels[n])[:c.n_frames] for c in part]) for n in part[0].labels}
            out.append(dataclasses.replace(part[0], name=f"long_{len(out)}@{key}", pcm=np.concatenate(
                [c.pcm[:c.n_frames * 640] for c in part]), labels=labels, text=" / ".join(c.text for c in part)))
    return out


def paired(a: dict[int, float | None], b: dict[int, float | None], cases: list) -> str:
    """'+d +- se, median +m (n)' of b - a over ``cases`` (keyed by id) that both measured ('+d (1)' for one, '-'
    for none). The median is printed because a one-word prompt can swing r from +1 to -1 (a difference of 2)
    and move the mean of 50 cases by 0.04 on its own."""
    return _differences([b[id(c)] - a[id(c)] for c in cases if a.get(id(c)) is not None and b.get(id(c)) is not None])


def paired_by_name(a: dict[str, float | None], b: dict[str, float | None], names: list[str]) -> str:
    """``paired`` for per-case r keyed by case name: two runs (e.g. two checkpoints) on the same cases."""
    return _differences([b[n] - a[n] for n in names if a.get(n) is not None and b.get(n) is not None])


def _differences(d: list[float]) -> str:
    if not d:
        return "-"
    mean = statistics.fmean(d)
    if len(d) == 1:
        return f"{mean:+.3f} (1)"
    se = statistics.stdev(d) / math.sqrt(len(d))
    return f"{mean:+.3f} +- {se:.3f}, median {statistics.median(d):+.3f} ({len(d)})"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default="checkpoints/tiny")
    p.add_argument("--data", default="corpus500",
                   help="validation corpus: the same split as the evaluated corpus, other clips (default corpus500)")
    p.add_argument("--temperatures", default="1,1.2,1.3,1.4,1.5,1.75",
                   help="comma-separated code_mean temperatures (> 0)")
    p.add_argument("--mouth-gains", default=None,
                   help="comma-separated code_mean gains (> 0) for the mouth cells (default: the checkpoint's own)")
    p.add_argument("--clips", type=int, default=40, help="held-out (eval split) clips of --data to choose on")
    p.add_argument("--human-prompts", type=int, default=24,
                   help="held-out human-voice prompts that evaluate does not report, printed beside them (needs the "
                        "asset cache; 0 = none)")
    p.add_argument("--human-long", type=int, default=0, metavar="K",
                   help="also measure long human recordings made of those prompts: each held-out person's prompts "
                        "joined K at a time into one continuous utterance, generated in one stream (group "
                        "human_long; evaluate's human recordings are long, the prompts mostly a few words; 0 = none)")
    p.add_argument("--train-clips", type=int, default=8, help="training clips printed beside them (0 = none)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default="", metavar="OUT",
                   help="also write each setting's group means and per-case r (keyed by case name) to this file")
    p.add_argument("--paired-with", default="", metavar="PREV",
                   help="a --json file of an earlier run on the same cases (e.g. another checkpoint): print each "
                        "setting's per-case difference from PREV's first setting, per group")
    args = p.parse_args(argv)
    prev = None
    if args.paired_with:
        try:
            prev = json.loads(Path(args.paired_with).read_text())["settings"][0]["cases"]
        except (OSError, ValueError, KeyError, IndexError) as e:
            p.error(f"--paired-with {args.paired_with}: not a --json file of this script ({type(e).__name__}: {e})")
    temps = parse_positive_list(args.temperatures)
    gains = parse_positive_list(args.mouth_gains, "--mouth-gains") if args.mouth_gains else None
    if args.human_long < 0 or args.human_long == 1 or (args.human_long and not args.human_prompts):
        p.error(f"--human-long K joins K of the --human-prompts per person: give K >= 2 and --human-prompts, got "
                f"--human-long {args.human_long} --human-prompts {args.human_prompts}")
    if args.clips < 1 or args.train_clips < 0 or args.human_prompts < 0:
        p.error(f"--clips must be >= 1, --train-clips and --human-prompts >= 0, got {args.clips}, "
                f"{args.train_clips} and {args.human_prompts}")
    if not (Path(args.data) / "split.json").is_file():
        p.error(f"--data {args.data}: no split.json there; render a validation corpus first "
                "(eartalking corpus --out corpus500 --clips 500)")
    import torch
    from tqdm import tqdm

    from eartalking.evaluate import cases as casesmod
    from eartalking.evaluate import report
    from eartalking.model import checkpoint

    torch.set_num_threads(max(1, args.threads))
    model, cfg = checkpoint.load(args.checkpoint)
    if cfg.decoder.greedy != "code_mean":
        print(f"note: {args.checkpoint} ships greedy={cfg.decoder.greedy!r}; the sweep sets code_mean",
              file=sys.stderr)
    model.decoder.greedy = "code_mean"
    if gains and not bool(model.decoder.code_mean_gain_cells.any()):
        from eartalking.train.decoder import mouth_cells

        cells = mouth_cells(cfg)
        if not cells:
            p.error(f"--mouth-gains: {args.checkpoint}'s token grid has no mouth cells")
        model.decoder.code_mean_gain_cells[cells] = True
    gains = gains or [model.decoder.code_mean_gain]
    corpus = casesmod.Corpus(args.data, cfg.tokenizer.image_size)
    held = corpus.heldout_cases(args.clips, human=0)  # the eval clips only: no top-up from the asset cache
    human_clips = [c for c in held if c.human]
    clip_texts = {c.text for c in human_clips}  # one recording per prompt: never measure it twice
    prompts = corpus.validation_human_cases(args.human_prompts, exclude=clip_texts) if args.human_prompts else []
    if args.human_prompts and not prompts:
        print("note: no held-out human prompts (no asset cache with the allison recordings); --human-prompts skipped",
              file=sys.stderr)
    longs = join_cases(prompts, args.human_long) if args.human_long else []
    groups = {"validation": held, "validation_tts": [c for c in held if not c.human],
              "validation_human": human_clips, "human_prompts": prompts,
              "human_all": human_clips + prompts, "human_long": longs, "train": corpus.train_cases(args.train_clips)}
    groups = {k: v for k, v in groups.items() if v}
    measured = held + prompts + longs + groups.get("train", [])  # each case once per setting
    print("clips: " + ", ".join(f"{k} {len(v)}" for k, v in groups.items()), flush=True)
    table: dict[tuple[float, float], dict[str, float]] = {}
    per_case: dict[tuple[float, float], dict[int, float | None]] = {}
    settings = [(t, g) for g in gains for t in temps]
    for t, gain in settings:
        model.decoder.code_mean_temperature, model.decoder.code_mean_gain = t, gain
        t0 = time.time()
        row, rs = {}, {}
        name = f"T={t:g}" + (f" gain {gain:g}" if len(gains) > 1 else "")
        for c in tqdm(measured, desc=name, unit="clip", leave=False):
            rs[id(c)] = openness_r(model, c)
        for group, cases in groups.items():
            m = report._mean(rs[id(c)] for c in cases)  # evaluate's mean: unmeasured clips left out
            row[group] = float("nan") if m is None else m
        row["seconds"] = time.time() - t0
        table[(t, gain)] = row
        per_case[(t, gain)] = rs
        print(f"{name:<14} " + "  ".join(f"{k} r {v:+.3f}" for k, v in row.items() if k != "seconds")
              + f"  ({row['seconds']:.0f} s)", flush=True)
    if len(gains) > 1:  # both of evaluate's lip-sync targets: the worse of TTS and human
        pair = [k for k in ("validation_tts", "human_all") if k in groups] or ["validation"]
        rule = f"the worse of {' and '.join(pair)}"
    else:
        pair, rule = ["validation"], f"mean r over the {len(held)} validation clips"

    def score(k: tuple[float, float]) -> float:
        v = min(table[k][g] for g in pair)
        return -2.0 if math.isnan(v) else v

    best = max(settings, key=score)
    print("\n| T | gain | " + " | ".join(groups) + " |\n|---|---|" + "---|" * len(groups))
    for k in settings:
        mark = " (chosen)" if k == best else ""
        print(f"| {k[0]:g}{mark} | {k[1]:g} | " + " | ".join(f"{table[k][g]:+.3f}" for g in groups) + " |")
    if len(settings) > 1:  # the same cases under two settings: their per-case differences are far less noisy
        print(f"\npaired against T={settings[0][0]:g} gain {settings[0][1]:g} (mean per-case difference "
              "+- its standard error, cases measured in both):")
        for k in settings[1:]:
            print(f"  T={k[0]:g} gain {k[1]:g}: " + "  ".join(
                f"{g} {paired(per_case[settings[0]], per_case[k], groups[g])}" for g in groups))
    by_name = {k: {c.name: rs[id(c)] for c in measured} for k, rs in per_case.items()}
    if prev is not None:
        print(f"\npaired against {args.paired_with} (mean per-case difference +- its standard error):")
        for k in settings:
            print(f"  T={k[0]:g} gain {k[1]:g}: " + "  ".join(
                f"{g} {paired_by_name(prev, by_name[k], [c.name for c in groups[g]])}" for g in groups))
    if args.json:
        runs = [{"temperature": k[0], "gain": k[1], "means": table[k], "cases": by_name[k]} for k in settings]
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "data": args.data, "settings": runs,
                                               "groups": {g: [c.name for c in v] for g, v in groups.items()}},
                                              indent=1))
    print(f"\nbest {rule}: --code-mean-temperature {best[0]:g}"
          + (f" --mouth-gain {best[1]:g}" if len(gains) > 1 else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())

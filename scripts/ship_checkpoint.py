"""Assemble the shipped checkpoint from the training runs.

Usage: .venv/bin/python scripts/ship_checkpoint.py --decoder runs/decoder [--tokenizer-ft runs/tokenizer_ft]
       [--anchor-regions] [--greedy code_mean] [--out checkpoints/tiny]

Takes the full model written by `eartalking train` (audio encoder + step decoder + the tokenizer it was
trained against) and, when given, the image side of `eartalking train-tokenizer --freeze-encoder` (reference
encoder + image decoder fine-tuned beside it). The tokenizer's encoder must be bit-identical in both, so the
token indices the step decoder learned are exactly the ones the shipped tokenizer produces; anything else is
refused. The shipped config takes the fine-tuned run's tokenizer config, so its image-side options (the
reference aligner ``flow_at``, the pixel path ``ref_pixels``) come with it; the fields that define the tokens
(``TOKEN_FIELDS``) must match. Writes config.json + model.safetensors and copies each run's metrics,
summary and loss plot into OUT/training/ for the model card.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file

#: tokenizer config fields that decide which token an image gets (with the encoder weights, ENCODER_PARTS)
TOKEN_FIELDS = ("image_size", "downsample", "codebook_size", "code_dim", "enc_channels")


def positive(text: str) -> float:
    """argparse type: a number > 0 (argparse names the flag in the error)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return v


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--decoder", default="runs/decoder")
    p.add_argument("--tokenizer-ft", default="")
    p.add_argument("--runs", nargs="*", default=["runs/audio", "runs/tokenizer", "runs/tokenizer_ft", "runs/decoder"],
                   help="run folders whose metrics/summary/loss plot go into OUT/training/")
    p.add_argument("--out", default="checkpoints/tiny")
    p.add_argument("--anchor-regions", action="store_true",
                   help="ship with the mouth/eye token cells anchored to the portrait (decoder.anchor_cells): "
                        "for a decoder trained with `eartalking train --region-drop`")
    p.add_argument("--isolate-eyes", action="store_true",
                   help="ship with the eye cells and the blink control as the decoder's isolated group "
                        "(decoder.isolated_cells / isolated_controls; no other cell reads them). A run trained with "
                        "`eartalking train --isolate-eyes` already records it; this switches it on for any "
                        "decoder (it changes what one trained without it computes: measure first)")
    p.add_argument("--greedy", choices=("argmax", "code_mean"), default=None,
                   help="temperature-0 token choice to ship (decoder.greedy; default: keep the run's)")
    p.add_argument("--eye-temperature", type=positive, default=None, metavar="T",
                   help="code_mean temperature of the eye cells alone (decoder.code_mean_cells = the eye cells, "
                        "decoder.code_mean_cells_temperature = T > 0): for an eye-coded tokenizer, whose shut eye "
                        "is one token state that a mouth-tuned temperature above 1 spreads out; default: none")
    p.add_argument("--mouth-gain", type=positive, default=None, metavar="G",
                   help="code_mean motion gain of the mouth cells (decoder.code_mean_gain_cells = the mouth cells, "
                        "decoder.code_mean_gain = G > 0): their expected FSQ digits are moved G times as far from "
                        "the portrait's before rounding, so the image side draws the mouth moves the step decoder "
                        "predicts large enough to see; default: none (1). Choose it with "
                        "scripts/code_mean_sweep.py --mouth-gains")
    p.add_argument("--eye-state-threshold", type=positive, default=None, metavar="P",
                   help="pick the eye cells as one binary state (decoder.eye_state_cells = the eye cells, "
                        "decoder.eye_state_open_max from tokenizer.eye_code, decoder.eye_state_threshold = P in "
                        "(0, 1)): all shut when their mean shut mass is above P, else all open; for an eye-coded "
                        "tokenizer, whose shut eye code_mean alone can round into from open-eye tokens; default: "
                        "none")
    p.add_argument("--eye-state-absent-threshold", type=positive, default=None, metavar="P",
                   help="with --eye-state-threshold: the threshold for frames without a blink control "
                        "(decoder.eye_state_absent_threshold, 0 < P <= 1; 1 = eyes open unless a blink is asked "
                        "for); default: the same as --eye-state-threshold")
    p.add_argument("--eye-unblend", action="store_true",
                   help="ship with tokenizer.eye_unblend on (no weights): over eye cells whose token is the eye "
                        "code's shut corner the pixel path does not blend in the portrait's open eyes; needs an "
                        "eye-coded tokenizer with a pixel path. Measure it first (scripts/blink_requests.py)")
    p.add_argument("--eye-unblend-axes", type=positive, nargs=2, default=None, metavar=("AX", "AY"),
                   help="with --eye-unblend (or a tokenizer that has it): the semi-axes of the portrait's eye "
                        "ellipses it holds back (tokenizer.eye_unblend_axes, fractions of the side in (0, 0.25); "
                        "default: keep the config's, 0.08 0.05)")
    p.add_argument("--code-mean-temperature", type=positive, default=None, metavar="T",
                   help="softmax temperature of code_mean (decoder.code_mean_temperature, > 0; default: keep the "
                        "run's). Choose it on a validation corpus with scripts/code_mean_sweep.py")
    args = p.parse_args(argv)
    from eartalking.config import ModelConfig
    from eartalking.model import checkpoint
    from eartalking.model.tokenizer import encoder_differs

    model, cfg = checkpoint.load(args.decoder)
    state = model.state_dict()
    if args.tokenizer_ft:
        ft = load_file(str(Path(args.tokenizer_ft) / "tokenizer.safetensors"))
        changed = encoder_differs(model.tokenizer.state_dict(), ft)
        if changed:
            print(f"refusing: the fine-tuned tokenizer's encoder differs ({changed[:3]}...): tokens would change",
                  file=sys.stderr)
            return 1
        ft_cfg = ModelConfig.load(Path(args.tokenizer_ft) / "config.json").tokenizer
        differ = [f for f in TOKEN_FIELDS if getattr(ft_cfg, f) != getattr(cfg.tokenizer, f)]
        if differ:
            print(f"refusing: the fine-tuned tokenizer's {differ} differ: tokens would change", file=sys.stderr)
            return 1
        cfg.tokenizer = ft_cfg  # the image side (aligner, pixel path, ...) as the fine-tuned run built it
        state = {k: v for k, v in state.items() if not k.startswith("tokenizer.")}
        state.update({f"tokenizer.{k}": v for k, v in ft.items()})
        if cfg.tokenizer.flow_at:
            print(f"reference aligner at {cfg.tokenizer.flow_at} px" + (", pixel path" if ft_cfg.ref_pixels else ""))
    if args.anchor_regions:
        from eartalking.train.decoder import region_cells

        cfg.decoder.anchor_cells = tuple(region_cells(cfg))
        print(f"anchor cells {list(cfg.decoder.anchor_cells)}")
    if args.isolate_eyes:
        from eartalking.train.decoder import isolate_eyes

        isolate_eyes(cfg)
        print(f"isolated cells {list(cfg.decoder.isolated_cells)}, controls {list(cfg.decoder.isolated_controls)}")
    if args.greedy:
        cfg.decoder.greedy = args.greedy
    if args.code_mean_temperature is not None:
        cfg.decoder.code_mean_temperature = args.code_mean_temperature
    if args.eye_temperature is not None:
        from eartalking.train.decoder import eye_cells

        cfg.decoder.code_mean_cells = tuple(eye_cells(cfg))
        cfg.decoder.code_mean_cells_temperature = args.eye_temperature
        print(f"code_mean cells {list(cfg.decoder.code_mean_cells)} at temperature {args.eye_temperature}")
    if args.mouth_gain is not None:
        from eartalking.train.decoder import mouth_cells

        cfg.decoder.code_mean_gain_cells = tuple(mouth_cells(cfg))
        cfg.decoder.code_mean_gain = args.mouth_gain
        print(f"code_mean gain {args.mouth_gain} on cells {list(cfg.decoder.code_mean_gain_cells)}")
    if args.eye_state_threshold is not None:
        from eartalking.train.decoder import eye_cells

        if not cfg.tokenizer.eye_code or not args.eye_state_threshold < 1.0:
            print("refusing: --eye-state-threshold needs an eye-coded tokenizer (tokenizer.eye_code) and a "
                  f"threshold in (0, 1), got {args.eye_state_threshold}", file=sys.stderr)
            return 2
        cfg.decoder.eye_state_cells = tuple(eye_cells(cfg))
        cfg.decoder.eye_state_open_max = int(cfg.tokenizer.eye_code[0])
        cfg.decoder.eye_state_threshold = args.eye_state_threshold
        absent = args.eye_state_absent_threshold
        absent = args.eye_state_threshold if absent is None else absent
        if not absent <= 1.0:
            print(f"refusing: --eye-state-absent-threshold must be in (0, 1], got {absent}", file=sys.stderr)
            return 2
        cfg.decoder.eye_state_absent_threshold = absent
        print(f"eye state cells {list(cfg.decoder.eye_state_cells)}: shut above {args.eye_state_threshold} mass "
              f"({absent} without a blink control)")
    if args.eye_unblend:
        if not (cfg.tokenizer.eye_code and cfg.tokenizer.ref_pixels):
            print("refusing: --eye-unblend needs an eye-coded tokenizer (tokenizer.eye_code) with a pixel path "
                  "(tokenizer.ref_pixels)", file=sys.stderr)
            return 2
        cfg.tokenizer.eye_unblend = True
        print("eye unblend: no portrait pixels over shut eye cells")
    if args.eye_unblend_axes is not None:
        from eartalking.model.tokenizer import check_eye_axes

        if not cfg.tokenizer.eye_unblend:
            print("refusing: --eye-unblend-axes sizes tokenizer.eye_unblend's ellipses: it needs --eye-unblend",
                  file=sys.stderr)
            return 2
        try:
            cfg.tokenizer.eye_unblend_axes = check_eye_axes(args.eye_unblend_axes)
        except ValueError as e:
            print(f"refusing: --eye-unblend-axes: {e}", file=sys.stderr)
            return 2
        print(f"eye unblend ellipses: semi-axes {list(cfg.tokenizer.eye_unblend_axes)} of the side")
    model = checkpoint.random_model(cfg, seed=0)  # the final config's modules and buffers (anchors) ...
    missing, unexpected = model.load_state_dict(state, strict=False)  # ... with the trained weights
    if missing or unexpected:
        print(f"refusing: weights do not fit the config (missing {missing[:3]}, unexpected {unexpected[:3]})",
              file=sys.stderr)
        return 1
    out = Path(args.out)
    checkpoint.save(out, model, cfg, metadata={"source": f"{args.decoder} + {args.tokenizer_ft or 'same tokenizer'}"})
    train_dir = out / "training"
    train_dir.mkdir(exist_ok=True)
    for run in map(Path, args.runs):
        for name in ("metrics.jsonl", "summary.json", "loss.png"):
            if (run / name).is_file():
                shutil.copy(run / name, train_dir / f"{run.name}_{name}")
    size = (out / checkpoint.WEIGHTS_FILE).stat().st_size / 2**20
    print(f"wrote {out} ({size:.1f} MiB weights) with {sum(1 for _ in train_dir.iterdir())} training logs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""How well an audio encoder alone predicts mouth openness, per speech source: the audio side's ceiling.

Usage: .venv/bin/python scripts/audio_openness.py [--data corpus500] [--audio runs/audio | --decoder runs/decoder_rd]
       [--lag 0]

Runs the audio encoder and its openness head (what ``eartalking train-audio`` and ``eartalking train`` fit
beside it) over each eval clip's PCM (``AudioEncoder.encode_utterance``: each video frame paired with its
lookahead, as streaming does) and prints, per speech source, the mean Pearson r between the predicted and the
labelled openness, optionally with the prediction shifted by ``--lag`` more frames. A step
decoder cannot move the mouth with the audio better than its audio encoder hears it, so this tells whether a
voice's lip-sync is bounded by the audio side or by the decoder and image side.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def source_r(data: str, predict, lag: int, size: int) -> dict[str, list[float]]:
    """Per speech source of ``data``'s eval clips, the r of ``predict(pcm float32 [n*640]) -> [n]`` shifted by
    ``lag`` frames against the clip's openness labels."""
    from eartalking.train import common

    per_source: dict[str, list[float]] = {}
    for c in common.load_corpus(data, "eval", 0, size=size):
        meta = json.loads((Path(data) / f"{c.name}.json").read_text())
        pred = np.asarray(predict(c.pcm), np.float64)
        pred = pred[lag:] if lag >= 0 else np.concatenate([np.full(-lag, pred[0]), pred])
        gt = c.openness[:len(pred)]
        pred = pred[:len(gt)]
        ok = np.isfinite(gt)
        if ok.sum() > 10 and np.std(gt[ok]) > 0 and np.std(pred[ok]) > 0:
            per_source.setdefault(meta.get("speech_source", "?"), []).append(float(np.corrcoef(pred[ok], gt[ok])[0, 1]))
    return per_source


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="corpus500", help="corpus folder (its eval split is measured)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", help="a `train-audio` run folder (encoder + head)")
    src.add_argument("--decoder", help="a `train` run folder (its audio encoder + aux head)")
    p.add_argument("--lag", type=int, default=0,
                   help="extra frames the prediction is shifted by (0: as the encoder pairs it with the video)")
    p.add_argument("--preset", default="tiny")
    a = p.parse_args(argv)

    from safetensors.torch import load_file

    from eartalking.config import preset
    from eartalking.model import checkpoint
    from eartalking.model.audio import AudioEncoder
    from eartalking.train.audio import load_pretrained
    from eartalking.train.decoder import AUX

    torch.set_num_threads(1)
    if a.audio:
        cfg = preset(a.preset)
        audio = AudioEncoder(cfg.audio)
        head = torch.nn.Linear(cfg.audio.tokens_per_frame * cfg.audio.dim, 1)
        load_pretrained(a.audio, audio, head, torch.device("cpu"))
    else:
        model, cfg = checkpoint.load(a.decoder)
        audio = model.audio
        head = torch.nn.Linear(cfg.audio.tokens_per_frame * cfg.audio.dim, 1)
        head.load_state_dict(load_file(str(Path(a.decoder) / AUX)))
    audio.eval()
    spf = cfg.audio.samples_per_frame

    @torch.no_grad()
    def predict(pcm: np.ndarray) -> np.ndarray:
        tokens = audio.encode_utterance(torch.from_numpy(pcm)[None], len(pcm) // spf)
        return head(tokens.flatten(2))[0, :, 0].numpy()

    per_source = source_r(a.data, predict, a.lag, cfg.tokenizer.image_size)
    print(f"\n| speech source | clips | openness r from audio alone (lag {a.lag}) |\n|---|---|---|")
    for name, rs in sorted(per_source.items()):
        print(f"| {name} | {len(rs)} | {np.mean(rs):+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

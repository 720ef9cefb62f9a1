"""Pretrain the streaming audio encoder on mouth openness (no tokenizer needed), to start `train` from.

Usage: eartalking train-audio --data corpus --out runs/audio [--minutes 30]

The audio encoder + a linear head regress each frame's ground-truth mouth openness from its A audio
tokens, on the same causal windows (left context + lookahead) and the same gain / noise / telephone-band
augmentation as decoder training. It can run beside the tokenizer training (they are independent), and
gives the decoder an encoder that already hears lip-relevant structure in every voice of the corpus.
Writes ``audio.safetensors`` (encoder + head, prefixed ``audio.`` / ``aux.``), metrics.jsonl and loss.png;
the held-out Pearson r (split ``eval``: unseen people, voices and sentences) is logged per source.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from eartalking.config import preset
from eartalking.train import common
from eartalking.train.decoder import WindowSampler, augment_audio

WEIGHTS = "audio.safetensors"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="corpus folder")
    p.add_argument("--out", default="runs/audio")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--frames", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=common.env_threads_default())


def load_pretrained(path: str | Path, audio: torch.nn.Module, aux: torch.nn.Module, device: torch.device) -> None:
    """Load what ``train-audio`` wrote into an AudioEncoder and its openness head."""
    p = Path(path)
    state = load_file(str(p / WEIGHTS if p.is_dir() else p), device=str(device))
    audio.load_state_dict({k[6:]: v for k, v in state.items() if k.startswith("audio.")})
    aux.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("aux.")})


@torch.no_grad()
def evaluate(audio, aux, clips: list[common.MemClip], device: torch.device) -> dict[str, float]:
    """Pearson r between predicted and ground-truth openness over whole held-out utterances."""
    audio.eval()
    preds, gts = [], []
    for c in clips:
        if np.isnan(c.openness).all():
            continue
        tok = audio.encode_utterance(torch.from_numpy(c.pcm)[None].to(device), len(c.frames))
        preds.append(aux(tok.flatten(2))[0, :, 0].float().cpu().numpy())
        gts.append(c.openness)
    audio.train()
    if not preds:
        return {}
    p, g = np.concatenate(preds), np.concatenate(gts)
    return {"eval_r": float(np.corrcoef(p, g)[0, 1])}


def run(args: argparse.Namespace) -> int:
    from eartalking.model.audio import AudioEncoder

    torch.manual_seed(args.seed)
    device = common.pick_device(args.device, args.threads)
    cfg = preset(args.preset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = common.load_corpus(args.data, "train")
    held = common.load_heldout(args.data, train, 30)
    audio = AudioEncoder(cfg.audio).to(device)
    aux = torch.nn.Linear(cfg.audio.tokens_per_frame * cfg.audio.dim, 1).to(device)
    if (out / WEIGHTS).is_file():
        load_pretrained(out, audio, aux, device)
    params = list(audio.parameters()) + list(aux.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    step = common.load_state(out, opt, device)
    sampler = WindowSampler(cfg, train, None, None, args.frames, args.seed + step)
    gen = torch.Generator().manual_seed(args.seed + step)
    log = common.MetricsLog(out / "metrics.jsonl")
    budget = common.Budget(args.steps, args.minutes)
    bar = tqdm(total=args.steps, initial=step, desc="train-audio", unit="step")
    while not budget.done(step):
        for g in opt.param_groups:
            g["lr"] = common.cosine_lr(step, args.steps, args.lr, warmup=100)
        b = {k: torch.from_numpy(v).to(device) for k, v in sampler.batch(args.batch).items()}
        pred = aux(audio(augment_audio(b["pcm"], gen)).flatten(2)).squeeze(-1)
        known = ~torch.isnan(b["openness"])
        loss = F.mse_loss(pred[known], b["openness"][known])
        common.optimizer_step(opt, loss, params)
        step += 1
        bar.update(1)
        if step % 100 == 0:
            row = {"step": step, "loss": loss.item()}
            if step % 500 == 0:
                row.update(evaluate(audio, aux, held, device))
                _save(out, audio, aux, opt, step)
            bar.set_postfix(loss=f"{loss.item():.4f}", r=row.get("eval_r", ""))
            log.write(**row)
    bar.close()
    _save(out, audio, aux, opt, step)
    final = {"step": step, **evaluate(audio, aux, held, device)}
    log.write(**final)
    (out / "summary.json").write_text(json.dumps(final, indent=1))
    log.plot(out / "loss.png", ("loss", "eval_r"))
    print(f"train-audio: step {step}, held-out openness r {final.get('eval_r', float('nan')):.3f}")
    return 0


def _save(out: Path, audio, aux, opt, step: int) -> None:
    state = {f"audio.{k}": v.detach().cpu().contiguous() for k, v in audio.state_dict().items()}
    state.update({f"aux.{k}": v.detach().cpu().contiguous() for k, v in aux.state_dict().items()})
    save_file(state, str(out / (WEIGHTS + ".tmp")))
    (out / (WEIGHTS + ".tmp")).replace(out / WEIGHTS)
    common.save_state(out, step, opt)

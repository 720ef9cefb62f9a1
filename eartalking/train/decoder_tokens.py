"""The step decoder's own picks for the mouth cells of corpus frames: what ``train-tokenizer --decoder-tokens``
teaches the image side to draw.

Why: the image side learns from the tokenizer encoder's tokens, but at inference it draws the step decoder's
picks. With ``decoder.greedy = "code_mean"`` a pick is the token nearest the *expected* FSQ digits, so over the
mouth it takes in-between digit combinations that the encoder seldom gives a real frame; the image side has
hardly seen them. Measured on the shipped model: the generated mouth tokens follow the human voice at r ~0.7,
the frames drawn from them at ~0.57 (MODEL_CARD.md, session 9). Training the image side on (portrait, frame's
own tokens with the mouth cells replaced by the decoder's picks) -> the real frame puts those tokens in its
training distribution, with the real frame's mouth as the target.

The picks are teacher-forced (one pass per clip: the previous frames' tokens are the encoder's), audio only (no
controls, as ``evaluate`` generates for lip-sync), with the checkpoint's own pick rule at temperature 0. The
shipped decoder anchors the previous frame's mouth cells to the portrait (``decoder.anchor_cells``), so its
mouth picks depend on the audio and the other cells, as in free-running generation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from eartalking.cli import UserError
from eartalking.model.tokenizer import encoder_differs
from eartalking.train import common


def clip_pcm(clip: common.MemClip, samples_per_frame: int, lookahead_frames: int, left_context: int,
             t0: int, frames: int) -> np.ndarray:
    """The PCM the audio encoder needs for video frames t0..t0+frames-1, in streaming coordinates (frame t is
    paired with its lookahead; ``left_context`` samples before; zero padded past either end) -> float32
    [(frames + lookahead) * spf + left_context - lookahead * spf] (the span ``model.audio`` turns into
    ``frames`` audio blocks)."""
    lo = (t0 + lookahead_frames) * samples_per_frame - left_context
    hi = (t0 + frames + lookahead_frames) * samples_per_frame
    out = np.zeros(hi - lo, np.float32)
    src = clip.pcm[max(lo, 0):min(hi, len(clip.pcm))]
    out[max(0, -lo):max(0, -lo) + len(src)] = src
    return out


def check_same_encoder(model_tokenizer: torch.nn.Module, tok: torch.nn.Module, source: str) -> None:
    """Refuse (UserError) unless ``tok``'s encoder is bit-identical to the checkpoint's: the decoder's picks
    are indices of the checkpoint's tokens, meaningless under another encoder."""
    differ = encoder_differs(tok.state_dict(), model_tokenizer.state_dict())
    if differ:
        raise UserError(f"--decoder-tokens {source}: its tokenizer encoder differs from the one trained here "
                        f"({len(differ)} tensors, e.g. {differ[0]}): start with --init from the same tokenizer "
                        f"and --freeze-encoder")


@torch.no_grad()
def decoder_picks(model, clips: list[common.MemClip], cells: list[int], device: torch.device
                  ) -> list[np.ndarray]:
    """Per clip int64 [T, N]: -1 everywhere except ``cells``, which hold the step decoder's teacher-forced,
    audio-only temperature-0 pick for that frame (``model`` = a full EARTalking, eval mode)."""
    from eartalking.model.decoder import teacher_prev_tokens
    from eartalking.train.decoder import tokenize_clips

    a = model.cfg.audio
    dec = model.decoder
    N = model.cfg.tokens_per_frame
    keep = torch.zeros(N, dtype=torch.bool, device=device)
    keep[cells] = True
    out = []
    all_frames, portraits = tokenize_clips(model.tokenizer, clips, device)
    for c, toks, por in tqdm(list(zip(clips, all_frames, portraits, strict=True)), desc="decoder picks", unit="clip"):
        T = len(c.frames)
        frames = torch.from_numpy(toks).to(device)[None]  # [1, T, N]
        ref = torch.from_numpy(por).to(device)[None]  # [1, N]
        pcm = clip_pcm(c, a.samples_per_frame, a.lookahead_frames, a.left_context, 0, T)
        audio = model.audio(torch.from_numpy(pcm)[None].to(device))  # [1, T, A, Da]
        zeros = torch.zeros(1, T, dec.C, device=device)
        logits = dec.forward_train(ref, audio, zeros, zeros, teacher_prev_tokens(ref, frames))  # [1, T, N, K]
        picks = dec.pick(logits[0], torch.zeros(T, 1, device=device), torch.zeros_like(logits[0]), ref)  # [T, N]
        out.append(torch.where(keep, picks, torch.full_like(picks, -1)).cpu().numpy())
    return out


CACHE = "decoder_picks.npz"  # in the train-tokenizer run folder: resuming (or a copy) skips the decoder pass


def _cache_key(source: Path, clips: list[common.MemClip], cells: list[int]) -> str:
    """What the picks depend on: the checkpoint's weights and config, the clips (names, frame counts) and cells."""
    from eartalking.model.checkpoint import CONFIG_FILE, WEIGHTS_FILE

    h = hashlib.sha256()
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        h.update((source / name).read_bytes())
    h.update(json.dumps([[c.name, len(c.frames)] for c in clips] + [list(cells)]).encode())
    return h.hexdigest()


def load_picks(source: str, tok: torch.nn.Module, clips: list[common.MemClip], cells: list[int],
               device: torch.device, cache: Path | None = None) -> list[np.ndarray]:
    """``--decoder-tokens SOURCE``: load the checkpoint, check its encoder against ``tok``'s, and return
    ``decoder_picks`` for ``clips``; with ``cache`` (a .npz path) they are read from there when it was written
    for the same checkpoint, clips and cells, else computed and written there."""
    from eartalking.model import checkpoint

    if not Path(source).is_dir():
        raise UserError(f"--decoder-tokens {source}: not a folder (give a checkpoint or `eartalking train` run)")
    model, _ = checkpoint.load(source, device)
    check_same_encoder(model.tokenizer, tok, source)
    key = _cache_key(Path(source), clips, cells)
    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            if str(z["key"]) == key:
                print(f"decoder picks: {len(clips)} clips from {cache}")
                return [z[f"clip{i}"] for i in range(len(clips))]
    picks = decoder_picks(model, clips, cells, device)
    if cache is not None:
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez_compressed(tmp, key=np.array(key), **{f"clip{i}": p.astype(np.int16) for i, p in enumerate(picks)})
        tmp.replace(cache)
    return picks

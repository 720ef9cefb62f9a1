"""A mouth critic: a small discriminator over the mouth box, trained against the image side while it trains.

What: ``MouthCritic`` scores the mouth box of a frame, float [B,3,S,S] in 0..1, next to the same box of the
session's reference (the portrait or another frame of the person, [B,3,S,S]) and the frame's openness label
(float [B], 0 shut .. 1 wide open, NaN = unknown), as a map of patch scores [B,1,h,w]: high = looks like a real
frame of this person at this openness. ``critic_loss`` (hinge) trains it on real frames against the image side's
decoded ones; ``image_side_loss`` is what ``train-tokenizer --mouth-critic-weight W`` adds to the image side's
loss, so it draws mouths the critic cannot tell from the video's.

Why: the image side, trained by L1, draws an uncertain open mouth as a light blur where the video has a dark
cavity (MODEL_CARD, sessions 10-11), and dlib reads lip-sync from the lips' edges. A frozen judge (the mouth
reader, session 19) was gamed: the image side painted a bright stripe between the lips that the reader read as
"open" and no video has. A critic that keeps training on the image side's own output learns to reject such a
stripe as soon as it appears, so the only way to satisfy it is to draw mouths like the video's. The openness
label enters by projection (Miyato & Koyama 2018's projection discriminator, the idea only): a blurred or
closed mouth on a frame labelled open scores low, which is the lip-sync direction. Used in training only; the
measure that judges the result stays dlib's (``eartalking measure``).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from eartalking.train.mouth_reader import crop_mouth

WEIGHTS = "mouth_critic.safetensors"


class MouthCritic(nn.Module):
    """(frames [B,3,S,S], references [B,3,S,S], openness [B]) in 0..1 -> patch scores [B,1,h,w].

    Input: the mouth box of the frame and of the reference, stacked (6 channels, scaled to -1..1). Body: four
    spectrally normalised convs (stride 2 twice; a 36x52 box at 128 px gives 9x13 patches), leaky ReLU. Head:
    a 1x1 conv for realness plus ``(2 * openness - 1)`` times a second 1x1 conv (the projection term; 0 where
    the label is unknown). 0.31 M parameters at width 32."""

    def __init__(self, size: int, width: int = 32):
        super().__init__()
        self.size, self.width = int(size), int(width)
        w = self.width
        self.body = nn.Sequential(
            spectral_norm(nn.Conv2d(6, w, 3, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(w, 2 * w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(2 * w, 4 * w, 4, stride=2, padding=1)), nn.LeakyReLU(0.2),
            spectral_norm(nn.Conv2d(4 * w, 4 * w, 3, padding=1)), nn.LeakyReLU(0.2),
        )
        self.real = spectral_norm(nn.Conv2d(4 * w, 1, 1))
        self.project = spectral_norm(nn.Conv2d(4 * w, 1, 1))

    def forward(self, frames: torch.Tensor, refs: torch.Tensor, openness: torch.Tensor) -> torch.Tensor:
        x = torch.cat([crop_mouth(frames, self.size, "the mouth critic"),
                       crop_mouth(refs, self.size, "the mouth critic")], dim=1) * 2.0 - 1.0
        h = self.body(x)
        c = torch.where(torch.isnan(openness), torch.zeros_like(openness), 2.0 * openness - 1.0)
        return self.real(h) + c[:, None, None, None].to(h.dtype) * self.project(h)


def critic_loss(critic: MouthCritic, real: torch.Tensor, fake: torch.Tensor, refs: torch.Tensor,
                openness: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Hinge loss of the critic on real frames [B,3,S,S] against decoded ones (detached here, so only the
    critic learns from it) -> (loss, share of patches it gets right: real > 0, fake < 0)."""
    s_real = critic(real, refs, openness)
    s_fake = critic(fake.detach(), refs, openness)
    loss = F.relu(1.0 - s_real).mean() + F.relu(1.0 + s_fake).mean()
    acc = 0.5 * ((s_real > 0).float().mean() + (s_fake < 0).float().mean())
    return loss, float(acc)


def image_side_loss(critic: MouthCritic, fake: torch.Tensor, refs: torch.Tensor,
                    openness: torch.Tensor) -> torch.Tensor:
    """The image side's adversarial term: -mean patch score of its decoded frames [B,3,S,S]. The gradient flows
    through the critic into the frames only: the critic's weights are left out of this graph, so the image
    side's backward gives them no gradient."""
    was = [p.requires_grad for p in critic.parameters()]
    critic.requires_grad_(False)
    try:
        return -critic(fake, refs, openness).mean()
    finally:
        for p, w in zip(critic.parameters(), was, strict=True):
            p.requires_grad_(w)


def save(critic: MouthCritic, opt: torch.optim.Optimizer, out: Path) -> None:
    """The critic and its optimizer next to a tokenizer run (for resuming)."""
    save_file({k: v.detach().cpu().contiguous() for k, v in critic.state_dict().items()}, str(out / WEIGHTS))
    torch.save(opt.state_dict(), out / "mouth_critic_opt.pt")


def load_into(critic: MouthCritic, opt: torch.optim.Optimizer, out: Path, device: torch.device) -> bool:
    """Resume a critic saved by ``save`` in ``out``; False when there is none."""
    if not (out / WEIGHTS).is_file():
        return False
    critic.load_state_dict(load_file(str(out / WEIGHTS), device=str(device)))
    if (out / "mouth_critic_opt.pt").is_file():
        opt.load_state_dict(torch.load(out / "mouth_critic_opt.pt", map_location=device))
    return True

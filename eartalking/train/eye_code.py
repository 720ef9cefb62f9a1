"""The eye-state digit of the eye tokens (``tokenizer.eye_code``; ``train-tokenizer --eye-code``).

Why: at 128 px an eyelid is a few pixels of one 16 px token cell. Trained on images alone, neither the
encoder (it did not put the eye state into any digit, even with a fixed blink code, in 30 CPU minutes) nor the
image side (it copies the portrait's open eyes) spends capacity on it, so no step decoder could show a
requested blink. Here the corpus's blink *label* writes the eye state into one FSQ digit of the eye cells'
tokens, and the image side and the step decoder are trained on those tokens:

- open frames (label < ``SHUT``, or unknown): digit ``d`` of each eye cell is capped at ``open_max``;
- shut frames (label >= ``SHUT``): digit ``d`` is set above ``open_max`` (the image side sees every level
  above it, so the step decoder's ``code_mean`` pick may land on any of them; decoder targets use the top).

The rest of each token (the other digits) stays the encoder's own, so the eye region keeps its pose and
appearance. Nothing changes at inference: the exported graphs take and give token indices as before; only
what the step decoder learned to predict (from the blink control) and what the image side learned to draw
carry the digit's meaning. The portrait's tokens (the sink, and the anchored eye cells) stay the encoder's
own, uncapped, exactly as ``tokenizer_encoder`` gives them at inference.

Shapes: ``indices`` int64 [B, N] (row-major cells), ``blink`` float [B] in 0..1 (NaN = unknown).
"""

from __future__ import annotations

import numpy as np
import torch

SHUT = 0.5  # blink label (0 open .. 1 shut) from which a frame's eye digit says "shut"


def eye_code_tokens(indices: torch.Tensor, blink: torch.Tensor, eye_code: tuple[int, ...], levels: int,
                    cells: list[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Tokens with the eye state written into digit ``eye_code[0]`` of the eye ``cells`` (module docstring).

    ``eye_code`` = (digit, open_max); ``levels``: FSQ levels per digit (digit i of token k is
    (k // levels^i) % levels). With ``generator`` a shut frame's digit is drawn uniformly from the levels
    above open_max (image-side training); without it, it is the top level (step decoder targets).
    Returns a new int64 tensor [B, N]; cells outside ``cells`` are unchanged.
    """
    digit, open_max = int(eye_code[0]), int(eye_code[1])
    if not 0 <= open_max < levels - 1:
        raise ValueError(f"eye_code open_max {open_max} must leave a level above it (levels 0..{levels - 1})")
    out = indices.clone()
    cells_t = torch.as_tensor(cells, dtype=torch.long, device=indices.device)
    tok = out[:, cells_t]  # [B, E]
    w = levels ** digit
    dig = (tok // w) % levels
    shut = (torch.nan_to_num(blink.to(indices.device).float(), nan=0.0) >= SHUT)[:, None].expand_as(dig)
    if generator is None:
        shut_level = torch.full_like(dig, levels - 1)
    else:
        draw = torch.randint(open_max + 1, levels, dig.shape, generator=generator)
        shut_level = draw.to(indices.device)
    new = torch.where(shut, shut_level, dig.clamp_max(open_max))
    out[:, cells_t] = tok + (new - dig) * w
    return out


def eye_state(indices: torch.Tensor, eye_code: tuple[int, ...], levels: int, cells: list[int]) -> torch.Tensor:
    """Share of the eye ``cells`` whose digit says shut (> open_max), float [B]: what a token sequence asks
    the image side to draw (for checks and diagnostics)."""
    digit, open_max = int(eye_code[0]), int(eye_code[1])
    dig = (indices[:, list(cells)] // levels ** digit) % levels
    return (dig > open_max).float().mean(1)


def clip_eye_code(frames: np.ndarray, blink: np.ndarray, eye_code: tuple[int, ...], levels: int,
                  cells: list[int]) -> np.ndarray:
    """A whole clip's frame tokens int64 [T, N] with its blink labels [T] written in (decoder targets)."""
    t = eye_code_tokens(torch.from_numpy(frames), torch.from_numpy(np.asarray(blink, np.float32)), eye_code,
                        levels, cells)
    return t.numpy()

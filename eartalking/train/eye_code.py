"""The eye state in the eye cells' tokens (``tokenizer.eye_code``; ``train-tokenizer --eye-code``).

Why: at 128 px an eyelid is a few pixels of one 16 px token cell. Trained on images alone, neither the
encoder (it did not put the eye state into any digit, even with a fixed blink code, in 30 CPU minutes) nor the
image side (it copies the portrait's open eyes) spends capacity on it, so no step decoder could show a
requested blink. Here the corpus's blink *label* writes the eye state into the eye cells' tokens, and the
image side and the step decoder are trained on those tokens. With ``eye_code = (open_max,)``, "shut" is the
corner of the FSQ cube where every digit is above ``open_max`` (tiny: levels 6-7 of 0-7, 8 of 512 tokens):

- shut frames (label >= ``SHUT``): each eye cell's token is moved into that corner (image-side training draws
  each digit at random among the corner's levels, so the step decoder's ``code_mean`` pick may land on any
  of them; decoder targets use the top level);
- open frames (label < ``SHUT``, or unknown): the rare token the encoder itself puts in the corner has its
  first digit capped at ``open_max``; every other token is left as the encoder gave it.

A corner, not one digit: moving all three digits changes the code vector the image side sees by far more
than any open-eye token does (one capped digit moved it by 1/7 of the range and was learned too slowly), and
it leaves 98% of open-eye tokens untouched. Shut frames lose their eye cells' other detail, which the
portrait and the neighbouring cells supply. Nothing changes at inference: the exported graphs take and give
token indices as before; only what the step decoder learned to predict (from the blink control) and what the
image side learned to draw carry the corner's meaning. The portrait's tokens (the sink, and the anchored
eye cells) stay the encoder's own, exactly as ``tokenizer_encoder`` gives them at inference.

Shapes: ``indices`` int64 [B, N] (row-major cells), ``blink`` float [B] in 0..1 (NaN = unknown).
"""

from __future__ import annotations

import torch

from eartalking.model.tokenizer import FSQ_DIMS

SHUT = 0.5  # blink label (0 open .. 1 shut) from which a frame's eye tokens say "shut"


def _digits(tok: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """int64 tokens -> their FSQ digits (digit i of token k is (k // levels^i) % levels)."""
    return [(tok // levels ** i) % levels for i in range(FSQ_DIMS)]


def _in_corner(tok: torch.Tensor, open_max: int, levels: int) -> torch.Tensor:
    """bool, same shape as ``tok``: every FSQ digit above ``open_max`` (the shut corner)."""
    return torch.stack([d > open_max for d in _digits(tok, levels)]).all(0)


def eye_code_tokens(indices: torch.Tensor, blink: torch.Tensor, eye_code: tuple[int, ...], levels: int,
                    cells: list[int], generator: torch.Generator | None = None) -> torch.Tensor:
    """Tokens with the eye state written into the eye ``cells`` (module docstring).

    ``eye_code`` = (open_max,); ``levels``: FSQ levels per digit. With ``generator`` each digit of a shut
    frame's eye token is drawn uniformly from the levels above open_max (image-side training); without it,
    it is the top level (step decoder targets). Returns a new int64 tensor [B, N]; other cells unchanged.
    """
    open_max = int(eye_code[0])
    if not 0 <= open_max < levels - 1:
        raise ValueError(f"eye_code open_max {open_max} must leave a level above it (levels 0..{levels - 1})")
    out = indices.clone()
    cells_t = torch.as_tensor(cells, dtype=torch.long, device=indices.device)
    tok = out[:, cells_t]  # [B, E]
    # the encoder's own corner tokens: digit 0 (weight 1, tok % levels) capped at open_max, out of the corner
    opened = tok - _in_corner(tok, open_max, levels) * (tok % levels - open_max)
    if generator is None:
        corner = torch.full_like(tok, levels ** FSQ_DIMS - 1)
    else:
        draw = torch.randint(open_max + 1, levels, (FSQ_DIMS, *tok.shape), generator=generator).to(tok.device)
        corner = sum(draw[i] * levels ** i for i in range(FSQ_DIMS))
    shut = (torch.nan_to_num(blink.to(indices.device).float(), nan=0.0) >= SHUT)[:, None].expand_as(tok)
    out[:, cells_t] = torch.where(shut, corner, opened)
    return out


def eye_state(indices: torch.Tensor, eye_code: tuple[int, ...], levels: int, cells: list[int]) -> torch.Tensor:
    """Share of the eye ``cells`` whose token is in the shut corner, float [B]: what a token sequence asks
    the image side to draw (for checks and diagnostics)."""
    return _in_corner(indices[:, list(cells)], int(eye_code[0]), levels).float().mean(1)


def tokenizer_eye_code(tok, indices: torch.Tensor, blink: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
    """``eye_code_tokens`` with the code, levels and eye cells of tokenizer ``tok``; ``indices`` unchanged when
    ``tok.cfg.eye_code`` is empty. The one entry for every caller that holds a tokenizer."""
    if not tok.cfg.eye_code:
        return indices
    from eartalking.config import ModelConfig
    from eartalking.train.decoder import eye_cells

    return eye_code_tokens(indices, blink, tuple(tok.cfg.eye_code), tok.levels,
                           eye_cells(ModelConfig(tokenizer=tok.cfg)), generator)


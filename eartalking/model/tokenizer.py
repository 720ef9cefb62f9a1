"""Portrait-conditioned VQ tokenizer (the ``tokenizer_encoder`` / ``tokenizer_decoder`` graphs).

- encoder: image [B,3,S,S] in 0..1 -> stride-2 conv stages (GroupNorm+SiLU resblocks) -> [B, code_dim, g, g]
  with g = S / downsample (8 for tiny) -> FSQ: d = 3 bounded scalars per position, each rounded to one of
  L = K^(1/3) levels (8 for K = 512) -> token = mixed-radix index of the d digits, int64 [B, N = g*g].
- reference encoder (run once per session on the portrait): its own conv stack, features at
  S/2, S/4, S/8, S/16 with ``cfg.ref_channels`` channels (finest first, ``cfg.ref_shapes``).
- decoder: code vectors (a learned linear map of the K grid points) at g x g -> stages coarse to fine
  (S/16 .. S/2): 1x1 channel change and
  nearest x2 (from the second stage on), concat the reference feature of that scale, fuse by a 3x3 conv,
  a resblock; one cross-attention from the decoder map to the reference map at ``cfg.attn_at`` px;
  -> nearest x2 -> GN-SiLU-3x3 conv to RGB -> sigmoid.
- reference alignment (``cfg.flow_at`` > 0, ``RefAlign``): after the stage at ``flow_at`` px the decoder map
  predicts a flow [B,2,h,w] (normalised coordinates, bounded to +-0.5, zero at initialisation); the finer
  stages fuse the reference features resampled along it (bilinear GridSample) instead of the raw ones, so
  the portrait's detail lands where the frame's pose puts it rather than where the portrait had it.
- pixel path (``cfg.ref_pixels``, ``PixelPath``): the portrait's own pixels are reference 0. The
  aligner's flow plus a residual predicted from the last decoder map (bounded to +-``PixelPath.MAX_RESIDUAL``),
  resized to full resolution, warps them to the frame; two per-pixel masks in [0, 1] then
  replace the generated image by the warped portrait (m1) and add the warped portrait's fine detail (its
  difference from a 3x3 box blur, m2): out = gen + m1 (warped - gen) + m2 detail, clipped to [0, 1]. The
  decoder's last stage works at S/2, so without it nothing finer than 2 px reaches the output.
- mouth hiding (``cfg.mouth_hide``): the pixel path blends nothing of the portrait inside an ellipse around its
  mouth, and (``cfg.mouth_hide_features``) the reference encoder sees the portrait with that ellipse filled
  with its mean colour (``hide_mouth``), so the mouth comes from the tokens (an open-mouthed portrait's own
  mouth is not painted into every frame).
- eye refiner (``cfg.eye_refiner`` > 0, ``EyeRefiner``): a residual from a small conv stack over the eye band,
  added inside the (grown) eye boxes only; everything outside them is untouched. With
  ``cfg.eye_refiner_shut_only`` only over eye cells whose token says shut (the ``eye_unblend`` shut map).
Tokens carry what changes (mouth, eyes, pose); the portrait carries identity.

Export-friendly: Conv, GroupNorm, nearest Upsample by 2, MatMul, Softmax, Gather, Sigmoid, Round, and with
alignment Tanh, linear Resize and GridSample (opset 16+, TensorRT IGridSampleLayer), with the pixel path
also AveragePool and Clip; no shape depends on
data. Quantisation is finite scalar quantisation (Mentzer et al. 2023) with a
straight-through rounding gradient: no codebook to collapse and no auxiliary losses (a learned Euclidean
and then a cosine VQ both collapsed to one code within 200 steps here, the decoder copying the portrait).
A usage EMA buffer feeds ``codebook_usage``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from eartalking.config import TokenizerConfig

FSQ_DIMS = 3  # scalars per token position; codebook_size = levels ** FSQ_DIMS
#: state-dict prefixes of the weights that decide which token a frame gets (``Tokenizer.encode``); the rest is
#: the image side (reference encoder, decoder), which can be fine-tuned without changing any token
ENCODER_PARTS = ("encoder.", "to_code.", "to_fsq.")


def encoder_differs(a: dict, b: dict) -> list[str]:
    """Encoder tensors (``ENCODER_PARTS``) of state dict ``a`` that ``b`` lacks or holds with other values:
    [] means the two tokenizers give every image the same tokens."""
    return [k for k, v in a.items() if k.startswith(ENCODER_PARTS)
            and (k not in b or not torch.equal(v.cpu(), b[k].cpu()))]


def _gn(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(8, ch), ch)


class ResBlock(nn.Module):
    """GN-SiLU-conv3x3 twice, plus identity: [B,C,H,W] -> [B,C,H,W]."""

    def __init__(self, ch: int):
        super().__init__()
        self.n1, self.c1 = _gn(ch), nn.Conv2d(ch, ch, 3, padding=1)
        self.n2, self.c2 = _gn(ch), nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x)))
        return x + self.c2(F.silu(self.n2(h)))


class DownStack(nn.Module):
    """Stride-2 stages, one per channel entry: [B,3,S,S] -> list of [B, C_i, S/2^(i+1), S/2^(i+1)]."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        stages, c_in = [], 3
        for c in channels:
            stages.append(nn.Sequential(nn.Conv2d(c_in, c, 4, stride=2, padding=1), ResBlock(c)))
            c_in = c
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for s in self.stages:
            x = s(x)
            feats.append(x)
        return feats


class CrossAttention(nn.Module):
    """Single-head attention from a decoder map [B,C,H,W] to a reference map [B,R,H',W'] (residual)."""

    def __init__(self, ch: int, ref_ch: int):
        super().__init__()
        self.norm = _gn(ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.kv = nn.Conv2d(ref_ch, 2 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        self.scale = ch ** -0.5

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q = self.q(self.norm(x)).flatten(2).transpose(1, 2)  # [B, HW, C]
        k, v = self.kv(ref).flatten(2).chunk(2, dim=1)  # [B, C, H'W'] each
        att = torch.softmax(torch.matmul(q, k) * self.scale, dim=-1)  # [B, HW, H'W']
        y = torch.matmul(att, v.transpose(1, 2)).transpose(1, 2).reshape(b, c, h, w)
        return x + self.out(y)


class RefAlign(nn.Module):
    """Flow from a decoder map [B,C,h,w] -> [B,2,h,w]; ``warp`` resamples a reference map along it.

    The flow is an offset in GridSample's normalised coordinates (-1..1 across the image), so one flow
    serves every finer scale after a bilinear resize. Its conv starts at zero: an untrained aligner is the
    identity (sampling exactly at pixel centres), so a tokenizer trained without alignment loads into one
    with it unchanged and fine-tuning starts from the same output.
    """

    MAX_SHIFT = 0.5  # a quarter of the image each way

    def __init__(self, ch: int):
        super().__init__()
        self.norm = _gn(ch)
        self.conv = nn.Conv2d(ch, 2, 3, padding=1)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def flow(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(F.silu(self.norm(x)))) * self.MAX_SHIFT

    @staticmethod
    def warp(ref: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
        """ref [B,R,H,W], flow [B,2,h,w] -> ref sampled at (pixel centre + flow), [B,R,H,W]."""
        b, _, h, w = ref.shape
        f = flow if flow.shape[-2:] == (h, w) else F.interpolate(flow, size=(h, w), mode="bilinear",
                                                                   align_corners=False)
        ys = torch.linspace(-1 + 1 / h, 1 - 1 / h, h, device=ref.device, dtype=ref.dtype)
        xs = torch.linspace(-1 + 1 / w, 1 - 1 / w, w, device=ref.device, dtype=ref.dtype)
        base = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)  # [H,W,2] as (x, y)
        grid = base[None] + f.permute(0, 2, 3, 1).to(ref.dtype)
        return F.grid_sample(ref, grid, mode="bilinear", padding_mode="border", align_corners=False)


class PixelPath(nn.Module):
    """Blend the portrait's pixels, warped to the frame, into the decoded image (see module docstring).

    Inputs: x [B,C,S/2,S/2] (the last decoder map, before the final x2), gen [B,3,S,S] (generated image in
    0..1), portrait [B,3,S,S] in 0..1, flow [B,2,h,w] (the aligner's). Output [B,3,S,S] in [0, 1].
    What depends on the decoder map (the residual flow, its share of the mask logits) is computed at S/2 and
    bilinearly resized (the map is a nearest x2 of S/2 anyway); only a 6-channel conv of the warped portrait
    and ``gen`` runs at S. All convs start at zero, so an untrained pixel path returns ``gen`` exactly (a
    tokenizer trained without it loads unchanged) and still receives a gradient (Clip passes it at its bounds).
    """

    MAX_RESIDUAL = 0.05  # normalised units: about 3 px at 128 px

    def __init__(self, ch: int):
        super().__init__()
        self.flow = nn.Conv2d(ch, 2, 3, padding=1)
        self.mix_map = nn.Conv2d(ch, 2, 3, padding=1)
        self.mix_img = nn.Conv2d(6, 2, 3, padding=1)
        for conv in (self.flow, self.mix_map, self.mix_img):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, x: torch.Tensor, gen: torch.Tensor, portrait: torch.Tensor, flow: torch.Tensor,
                shut: torch.Tensor | None = None, eyes: torch.Tensor | None = None,
                mouth: torch.Tensor | None = None) -> torch.Tensor:
        """``shut`` [B,1,S,S] in 0..1 and ``eyes`` [1,1,S,S] (both or neither; ``tokenizer.eye_unblend``): where
        the frame's eye tokens say shut (``shut``), the portrait's eye pixels (``eyes``, in the portrait's
        frame, warped along the same flow as the portrait) are not blended in. ``mouth`` [1,1,S,S]
        (``tokenizer.mouth_hide``, in the portrait's frame): the portrait's pixels there are never blended in."""
        up = lambda t, size: F.interpolate(t, size=size, mode="bilinear", align_corners=False)  # noqa: E731
        f = up(flow, x.shape[-2:]) + torch.tanh(self.flow(x)) * self.MAX_RESIDUAL
        fu = up(f, portrait.shape[-2:])
        w = RefAlign.warp(portrait, fu)
        detail = w - F.avg_pool2d(w, 3, stride=1, padding=1, count_include_pad=False)
        logits = up(self.mix_map(x), portrait.shape[-2:]) + self.mix_img(torch.cat([w, gen], dim=1))
        m = torch.clamp(logits, 0.0, 1.0)
        if shut is not None:
            m = m * (1.0 - shut * RefAlign.warp(eyes.expand(portrait.shape[0], -1, -1, -1), fu))
        if mouth is not None:
            m = m * (1.0 - RefAlign.warp(mouth.expand(portrait.shape[0], -1, -1, -1), fu))
        return torch.clamp(gen + m[:, :1] * (w - gen) + m[:, 1:] * detail, 0.0, 1.0)


def eye_boxes(size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[1,1,S,S] 0/1 mask of the two eye boxes of the aligned crop (centres at x 0.36 and 0.64, y 0.42 of the
    side; each 0.2 wide and 0.12 high, wide enough for the corpus's poses): where ``train-tokenizer
    --eye-box-weight`` adds an L1 averaged over the boxes alone, so shut eyes (a few hundred pixels of a 128 px
    frame) weigh as much as a whole-image error."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    rows = ((c - 0.42).abs() <= 0.06).float()
    cols = (((c - 0.36).abs() <= 0.10) | ((c - 0.64).abs() <= 0.10)).float()
    return (rows[:, None] * cols[None, :])[None, None].to(device)


def grown_eye_boxes(size: int, margin: int = 3, device: torch.device | str = "cpu") -> torch.Tensor:
    """``eye_boxes`` grown by ``margin`` px (a max filter): the only pixels ``EyeRefiner`` may change, and the
    ones ``train-tokenizer --keep-image`` leaves free."""
    return F.max_pool2d(eye_boxes(size, device), 2 * margin + 1, stride=1, padding=margin)


#: where the aligned portrait's eyes are (``data/faces.py`` TEMPLATE: the crop puts the eye centres there) and
#: the semi-axes (x, y) of the ellipse around each that covers the eye opening and the lids, as fractions of
#: the side: the pixels ``eye_unblend`` leaves out of the pixel path when the tokens say shut
PORTRAIT_EYE_CENTRES = ((0.39, 0.40), (0.61, 0.40))
PORTRAIT_EYE_AXES = (0.08, 0.05)


def check_axes(axes, setting: str = "eye_unblend_axes") -> tuple[float, float]:
    """Semi-axes of a held-back ellipse -> (ax, ay) floats; anything but two semi-axes in (0, 0.25) of the side is
    refused (ValueError naming ``setting``). The one check for ``tokenizer.eye_unblend_axes`` and
    ``tokenizer.mouth_hide_axes``, in the model, ``train-tokenizer`` and ``scripts/ship_checkpoint.py``."""
    if len(axes) != 2 or not all(0.0 < float(a) < 0.25 for a in axes):
        raise ValueError(f"{setting} must be two semi-axes (x, y) in (0, 0.25) of the side, got {tuple(axes)}")
    return float(axes[0]), float(axes[1])


def check_eye_axes(axes) -> tuple[float, float]:
    """``check_axes`` for ``tokenizer.eye_unblend_axes``."""
    return check_axes(axes, "eye_unblend_axes")


def soft_ellipses(size: int, centres, ax: float, ay: float) -> torch.Tensor:
    """[1,1,S,S] in 0..1: soft ellipses at ``centres`` ((x, y) fractions of the side) with semi-axes ``ax``, ``ay``
    (fractions of the side): 1 inside 3/4 of the normalised radius^2, ramping to 0 at the ellipse."""
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    out = torch.zeros(size, size)
    for cx, cy in centres:
        d = ((xx - cx) / ax) ** 2 + ((yy - cy) / ay) ** 2
        out = torch.maximum(out, torch.clamp((1.0 - d) * 4.0, 0.0, 1.0))
    return out[None, None]


def portrait_eyes(size: int, axes: tuple[float, ...] = PORTRAIT_EYE_AXES) -> torch.Tensor:
    """[1,1,S,S] in 0..1: ``soft_ellipses`` around the aligned portrait's eyes (``PORTRAIT_EYE_CENTRES``, semi-axes
    ``axes`` (x, y) as fractions of the side, ``check_eye_axes``). ``tokenizer.eye_unblend_axes`` sets ``axes``."""
    return soft_ellipses(size, PORTRAIT_EYE_CENTRES, *check_eye_axes(axes))


#: where the aligned portrait's mouth centre is (``data/faces.py`` TEMPLATE) as (x, y) fractions of the side
PORTRAIT_MOUTH_CENTRE = (0.5, 0.645)


def portrait_mouth(size: int, axes: tuple[float, ...]) -> torch.Tensor:
    """[1,1,S,S] in 0..1: a ``soft_ellipses`` around the aligned portrait's mouth (``PORTRAIT_MOUTH_CENTRE``, semi-axes
    ``axes`` (x, y) as fractions of the side, ``check_axes``): what ``tokenizer.mouth_hide`` hides from the image
    side. Sized with margin for the training references' jitter (up to 6 px) and the alignment of real photos."""
    return soft_ellipses(size, (PORTRAIT_MOUTH_CENTRE,), *check_axes(axes, "mouth_hide_axes"))


def hide_mouth(image: torch.Tensor, mouth: torch.Tensor) -> torch.Tensor:
    """portrait [B,3,S,S] in 0..1, ``mouth`` [1,1,S,S] (``portrait_mouth``) -> the portrait with the mouth
    ellipse blended towards its own mean colour there (the mask-weighted mean per image and channel): the
    reference encoder's input under ``tokenizer.mouth_hide``. Static ops only (Mul, ReduceSum, Div, Add)."""
    mean = (image * mouth).sum((2, 3), keepdim=True) / mouth.sum()
    return image + mouth * (mean - image)


def shut_tokens(levels: int, open_max: int, name: str = "eye_code open_max") -> torch.Tensor:
    """bool [levels ** FSQ_DIMS]: the eye code's shut corner, the tokens whose every FSQ digit (digit i of token
    k is (k // levels**i) % levels) is above ``open_max`` (``train/eye_code.py``). An ``open_max`` that leaves
    no level above it is refused (ValueError naming the setting ``name``)."""
    if not 0 <= open_max < levels - 1:
        raise ValueError(f"{name} {open_max} must leave a level above it (levels 0..{levels - 1})")
    k = torch.arange(levels ** FSQ_DIMS)
    return torch.stack([(k // levels ** i) % levels > open_max for i in range(FSQ_DIMS)]).all(0)


def eye_cell_mask(size: int, grid: int) -> torch.Tensor:
    """[1,1,g,g] 0/1: the token cells over the eyes, those that ``eye_boxes`` covers for more than a quarter of
    their area (tiny: cells 26-29, the same cells as the step decoder's ``eye_cells``)."""
    cover = F.adaptive_avg_pool2d(eye_boxes(size), grid)
    return (cover > 0.25).float()


class EyeRefiner(nn.Module):
    """A residual over the eyes of the decoded image, zero outside the grown eye boxes (``grown_eye_boxes``).

    Why: the image side draws shut eyes faintly on some faces (glasses, narrow eyes), and every way of
    re-teaching the whole image side moved the mouth. This module is the only trainable part of a run with
    ``train-tokenizer --only-eye-refiner``; it reads the output image and the last decoder map (which carries
    the eye tokens) over a fixed band around the eyes and adds a residual inside the boxes, so a frame's mouth
    and everything else outside the boxes stay bit-identical. Its last conv starts at zero: an untrained
    refiner returns its input exactly, and a tokenizer saved without one loads unchanged.

    Inputs: img [B,3,S,S] in 0..1, x [B,C,S/2,S/2] (the last decoder map). Output [B,3,S,S] in 0..1. The band is
    fixed at construction (even pixel bounds, so x's nearest x2 lines up), with 3 px of context for the three
    3x3 convs; static Slice / Concat in the graph.
    """

    CONTEXT = 3  # px: the receptive-field half-width of three 3x3 convs

    def __init__(self, size: int, ch: int, width: int, margin: int = 3):
        super().__init__()
        mask = grown_eye_boxes(size, margin)
        rows = torch.nonzero(mask[0, 0].amax(1)).flatten()
        cols = torch.nonzero(mask[0, 0].amax(0)).flatten()
        even = lambda v, up: min(size, max(0, (v + up) // 2 * 2))  # noqa: E731
        self.r0, self.r1 = even(int(rows[0]) - self.CONTEXT, 0), even(int(rows[-1]) + 1 + self.CONTEXT, 1)
        self.c0, self.c1 = even(int(cols[0]) - self.CONTEXT, 0), even(int(cols[-1]) + 1 + self.CONTEXT, 1)
        self.register_buffer("mask", mask[..., self.r0:self.r1, self.c0:self.c1].clone(), persistent=False)
        self.net = nn.Sequential(nn.Conv2d(3 + ch, width, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
                                 nn.Conv2d(width, 3, 3, padding=1))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, img: torch.Tensor, x: torch.Tensor, shut: torch.Tensor | None = None) -> torch.Tensor:
        """``shut`` [B,1,S,S] in 0..1 (``Tokenizer.shut_map``; ``tokenizer.eye_refiner_shut_only``): the
        residual is also multiplied by it, so where the eye tokens say open the image passes through exactly."""
        r0, r1, c0, c1 = self.r0, self.r1, self.c0, self.c1
        band = img[..., r0:r1, c0:c1]
        xm = F.interpolate(x[..., r0 // 2:r1 // 2, c0 // 2:c1 // 2], scale_factor=2.0, mode="nearest")
        gate = self.mask if shut is None else self.mask * shut[..., r0:r1, c0:c1]
        out = torch.clamp(band + gate * self.net(torch.cat([band, xm], dim=1)), 0.0, 1.0)
        mid = torch.cat([img[..., r0:r1, :c0], out, img[..., r0:r1, c1:]], dim=-1)
        return torch.cat([img[..., :r0, :], mid, img[..., r1:, :]], dim=-2)


class Tokenizer(nn.Module):
    """See module docstring. ``N = cfg.tokens_per_frame``, ``K = cfg.codebook_size``."""

    def __init__(self, cfg: TokenizerConfig):
        super().__init__()
        n_stages = int(round(math.log2(cfg.downsample)))
        if 2 ** n_stages != cfg.downsample or cfg.image_size % cfg.downsample:
            raise ValueError(f"downsample {cfg.downsample} must be a power of 2 dividing image_size {cfg.image_size}")
        for name in ("enc_channels", "ref_channels", "dec_channels"):
            if len(getattr(cfg, name)) != n_stages:
                raise ValueError(f"{name} needs {n_stages} entries for downsample {cfg.downsample}")
        self.cfg = cfg
        self.encoder = DownStack(cfg.enc_channels)
        c_top = cfg.enc_channels[-1]
        self.to_code = nn.Sequential(_gn(c_top), nn.SiLU(), nn.Conv2d(c_top, cfg.code_dim, 1))
        levels = round(cfg.codebook_size ** (1 / FSQ_DIMS))
        if levels ** FSQ_DIMS != cfg.codebook_size or levels < 2:
            raise ValueError(f"codebook_size {cfg.codebook_size} must be L^{FSQ_DIMS} (FSQ with {FSQ_DIMS} digits)")
        self.levels = levels
        self.to_fsq = nn.Conv2d(cfg.code_dim, FSQ_DIMS, 1)
        digits = torch.stack(torch.meshgrid(*[torch.arange(levels)] * FSQ_DIMS, indexing="ij"), -1)
        # grid[k] = the digits of token k (digit i has weight L^i), mapped to [-1, 1]
        grid = digits.flip(-1).reshape(-1, FSQ_DIMS).float() * (2.0 / (levels - 1)) - 1.0
        self.register_buffer("grid", grid, persistent=False)
        self.register_buffer("radix", levels ** torch.arange(FSQ_DIMS).float(), persistent=False)
        self.from_fsq = nn.Linear(FSQ_DIMS, cfg.code_dim)
        self.register_buffer("code_usage", torch.full((cfg.codebook_size,), 1.0 / cfg.codebook_size))
        self.ref_encoder = DownStack(cfg.ref_channels)
        # decoder stages coarse -> fine; stage i works at S/downsample * 2^i and fuses ref index n-1-i
        dec, ref = cfg.dec_channels, cfg.ref_channels[::-1]
        self.from_code = nn.Conv2d(cfg.code_dim, dec[0], 3, padding=1)
        # channel change by a 1x1 conv at the coarse resolution, before the nearest x2 (4x cheaper than after)
        self.ups = nn.ModuleList([nn.Conv2d(dec[i - 1], dec[i], 1) if i else nn.Identity() for i in range(n_stages)])
        self.fuse = nn.ModuleList([nn.Conv2d(dec[i] + ref[i], dec[i], 3, padding=1) for i in range(n_stages)])
        self.blocks = nn.ModuleList([ResBlock(dec[i]) for i in range(n_stages)])
        res = [cfg.grid * 2 ** i for i in range(n_stages)]
        if cfg.attn_at and cfg.attn_at not in res:
            raise ValueError(f"attn_at {cfg.attn_at} must be one of the decoder resolutions {res} (or 0)")
        self.attn_stage = res.index(cfg.attn_at) if cfg.attn_at else -1
        self.attn = CrossAttention(dec[self.attn_stage], ref[self.attn_stage]) if cfg.attn_at else None
        flow_at = cfg.flow_at
        if flow_at and flow_at not in res[:-1]:
            raise ValueError(f"flow_at {flow_at} must be a decoder resolution with a finer one after it "
                             f"{res[:-1]} (or 0)")
        self.flow_stage = res.index(flow_at) if flow_at else -1
        self.align = RefAlign(dec[self.flow_stage]) if flow_at else None
        if cfg.ref_pixels and not flow_at:
            raise ValueError("ref_pixels needs flow_at (the pixel path warps the portrait along the aligner's flow)")
        self.pix = PixelPath(dec[-1]) if cfg.ref_pixels else None
        self.head = nn.Sequential(_gn(dec[-1]), nn.SiLU(), nn.Conv2d(dec[-1], 3, 3, padding=1))
        self.eyes = EyeRefiner(cfg.image_size, dec[-1], cfg.eye_refiner) if cfg.eye_refiner else None
        if cfg.eye_refiner_shut_only and not (cfg.eye_refiner and cfg.eye_unblend):
            raise ValueError("eye_refiner_shut_only gates the eye refiner by the shut eye tokens: it needs "
                             f"eye_refiner > 0 and eye_unblend (got eye_refiner {cfg.eye_refiner}, eye_unblend "
                             f"{cfg.eye_unblend})")
        if cfg.eye_unblend:
            if not (cfg.ref_pixels and cfg.eye_code):
                raise ValueError("eye_unblend needs ref_pixels (a pixel path to hold back) and eye_code (what "
                                 "a shut eye token is)")
            # only the cells over the eyes count
            self.register_buffer("shut_table", shut_tokens(levels, int(cfg.eye_code[0])).float()[:, None],
                                 persistent=False)
            self.register_buffer("eye_cell_mask", eye_cell_mask(cfg.image_size, cfg.grid), persistent=False)
            self.register_buffer("unblend_area", grown_eye_boxes(cfg.image_size), persistent=False)
            self.register_buffer("portrait_eyes", portrait_eyes(cfg.image_size, tuple(cfg.eye_unblend_axes)),
                                 persistent=False)
        if cfg.mouth_hide:
            if not cfg.ref_pixels:
                raise ValueError("mouth_hide needs ref_pixels (it hides the portrait's mouth from the reference "
                                 "encoder and the pixel path)")
            self.register_buffer("portrait_mouth", portrait_mouth(cfg.image_size, tuple(cfg.mouth_hide_axes)),
                                 persistent=False)

    # ---- encoder side ----
    def encode_latent(self, image: torch.Tensor) -> torch.Tensor:
        """image [B,3,S,S] -> continuous latent [B, code_dim, g, g]."""
        return self.to_code(self.encoder(image * 2.0 - 1.0)[-1])

    def bounded(self, z: torch.Tensor) -> torch.Tensor:
        """latent [B, code_dim, g, g] -> continuous digits in (-0.5, L-0.5), [B, FSQ_DIMS, g, g]."""
        return torch.sigmoid(self.to_fsq(z)) * self.levels - 0.5

    def quantize_indices(self, z: torch.Tensor) -> torch.Tensor:
        """latent [B, code_dim, g, g] -> token int64 [B, g*g] (row-major): mixed-radix index of the digits."""
        digits = torch.round(self.bounded(z)).clamp(0, self.levels - 1)  # [B, d, g, g]
        idx = (digits.flatten(2) * self.radix[None, :, None]).sum(1)
        return idx.long()

    def codes(self) -> torch.Tensor:
        """Code vector of every token [K, code_dim] (the grid point mapped by ``from_fsq``)."""
        return self.from_fsq(self.grid)

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """image [B,3,S,S] in 0..1 -> tokens int64 [B, N]."""
        return self.quantize_indices(self.encode_latent(image))

    def reference(self, image: torch.Tensor) -> list[torch.Tensor]:
        """portrait [B,3,S,S] in 0..1 -> features, finest first, shapes ``cfg.ref_shapes`` (with ``ref_pixels``
        the portrait itself comes first, as given). With ``mouth_hide`` (and ``mouth_hide_features``) the features
        are of the portrait with its mouth hidden (``hide_mouth``)."""
        seen = hide_mouth(image, self.portrait_mouth) if self.cfg.mouth_hide and self.cfg.mouth_hide_features \
            else image
        feats = self.ref_encoder(seen * 2.0 - 1.0)
        return [image, *feats] if self.pix is not None else feats

    # ---- decoder side ----
    def shut_map(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """tokens int [B, N] -> [B,1,S,S] 0/1: 1 inside the grown eye boxes near an eye cell whose token is in
        ``eye_code``'s shut corner, 0 elsewhere (None without ``eye_unblend``). Where it is 1 the pixel path
        leaves out the portrait's eye pixels (``PixelPath.forward``).

        Why: the pixel path blends about half of the portrait's own eye pixels (open eyes) and their fine detail
        into the frame whatever the tokens say, so a shut eye that the decoder draws from the eye code shows
        faintly, and on some faces not at all. A shut cell's state spreads half a cell (a max filter) so the
        whole grown box around an eye follows its cells. Static ops only: Gather, Resize (nearest), MaxPool, Mul.
        """
        if not self.cfg.eye_unblend:
            return None
        g, k = self.cfg.grid, self.cfg.downsample
        shut = F.embedding(tokens.long(), self.shut_table).reshape(tokens.shape[0], 1, g, g) * self.eye_cell_mask
        shut = F.interpolate(shut, scale_factor=float(k), mode="nearest")  # [B,1,S,S]
        shut = F.max_pool2d(shut, 2 * (k // 2) + 1, stride=1, padding=k // 2)
        return shut * self.unblend_area

    def decode_codes(self, codes: torch.Tensor, refs: list[torch.Tensor], shut: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """code vectors [B, code_dim, g, g] + refs -> image [B,3,S,S] in 0..1 (``shut``: ``shut_map``)."""
        x = self.from_code(codes)
        portrait = refs[0] if self.pix is not None else None
        refs = (refs[1:] if self.pix is not None else refs)[::-1]  # coarse first
        flow = None
        for i, (up, fuse, block) in enumerate(zip(self.ups, self.fuse, self.blocks, strict=True)):
            if i:
                x = F.interpolate(up(x), scale_factor=2.0, mode="nearest")
            r = refs[i] if flow is None else RefAlign.warp(refs[i], flow)
            x = block(fuse(torch.cat([x, r], dim=1)))
            if i == self.attn_stage:
                x = self.attn(x, refs[i])
            if i == self.flow_stage:
                flow = self.align.flow(x)
        gen = torch.sigmoid(self.head(F.interpolate(x, scale_factor=2.0, mode="nearest")))
        eyes = self.portrait_eyes if shut is not None else None
        mouth = self.portrait_mouth if self.cfg.mouth_hide else None
        img = gen if self.pix is None else self.pix(x, gen, portrait, flow, shut, eyes, mouth)
        if self.eyes is None:
            return img
        return self.eyes(img, x, shut if self.cfg.eye_refiner_shut_only else None)

    def decode(self, tokens: torch.Tensor, refs: list[torch.Tensor]) -> torch.Tensor:
        """tokens int [B, N] + refs -> image [B,3,S,S] in 0..1."""
        g = self.cfg.grid
        codes = F.embedding(tokens.long(), self.codes())  # [B, N, code_dim]
        return self.decode_codes(codes.transpose(1, 2).reshape(tokens.shape[0], -1, g, g), refs,
                                 self.shut_map(tokens))

    # ---- training ----
    def forward(self, image: torch.Tensor, ref_image: torch.Tensor, replace: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """FSQ autoencoding of ``image`` conditioned on ``ref_image`` (both [B,3,S,S]).

        ``replace`` int64 [B, N] (optional): where >= 0, that token is decoded in place of the image's own
        (``train-tokenizer --decoder-tokens``: the step decoder's picks); -1 keeps the image's token. The
        returned ``indices`` and ``bounded`` stay the image's own.

        Returns (recon [B,3,S,S], losses) with losses: ``vq``, ``commit`` and ``vq_total`` (zero: FSQ needs
        no codebook or commitment loss; kept so training code can add them unconditionally), ``l1`` (recon),
        ``perplexity``, ``usage`` (fraction of
        codes used in the batch), ``indices`` int64 [B, N] and ``bounded`` (the pre-rounding digits
        [B, d, g, g]). In training mode also updates ``code_usage``.
        """
        zb = self.bounded(self.encode_latent(image))  # [B, d, g, g]
        digits = torch.round(zb).clamp(0, self.levels - 1)
        idx = (digits.flatten(2) * self.radix[None, :, None]).sum(1).long()
        q = zb + (digits - zb).detach()  # straight-through rounding
        vals = q * (2.0 / (self.levels - 1)) - 1.0
        if replace is not None:  # the given tokens' grid points (what ``decode`` embeds), [B, d, g, g]
            given = self.grid[replace.clamp_min(0)].movedim(-1, 1).reshape(vals.shape)
            vals = torch.where((replace >= 0).reshape(vals.shape[0], 1, *vals.shape[2:]), given.to(vals.dtype), vals)
        z_q = self.from_fsq(vals.movedim(1, -1)).movedim(-1, 1)  # [B, code_dim, g, g]
        zero = zb.sum() * 0.0
        vq, commit = zero, zero
        shown = idx if replace is None else torch.where(replace >= 0, replace, idx)  # the tokens decoded
        recon = self.decode_codes(z_q, self.reference(ref_image), self.shut_map(shown))
        counts = torch.bincount(idx.flatten(), minlength=self.cfg.codebook_size).float()
        probs = counts / counts.sum()
        if self.training:
            with torch.no_grad():
                self.code_usage.mul_(0.99).add_(probs, alpha=0.01)
        losses = {
            "vq": vq,
            "commit": commit,
            "vq_total": vq + self.cfg.commitment * commit,
            "l1": (recon - image).abs().mean(),
            "perplexity": torch.exp(-(probs * torch.log(probs + 1e-10)).sum()),
            "usage": (counts > 0).float().mean(),
            "indices": idx,
            "bounded": zb,
        }
        return recon, losses

    def codebook_usage(self, threshold: float | None = None) -> float:
        """Fraction of codes whose usage EMA is above ``threshold`` (default: 1% of uniform)."""
        thr = 0.01 / self.cfg.codebook_size if threshold is None else threshold
        return float((self.code_usage > thr).float().mean())

    def restart_dead_codes(self, image: torch.Tensor, threshold: float | None = None) -> int:
        """FSQ has no learned codebook, so there is nothing to re-seed; kept for API stability (returns 0)."""
        return 0

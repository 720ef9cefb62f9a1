"""GPT-style step decoder with SFA (sink frame window attention) and FCIC control tokens (``step_decoder``).

One frame block (BL = C + A + N tokens): ``[C control tokens | A audio tokens | N slot tokens]``.
  control c: ``null_embedding[c]`` if absent, else ``(value / CONTROL_SCALES[c]) * control_weight[c] +
             type_embedding[c]`` (values in the raw units of CONTROL_RANGES)
  audio i:   ``Linear(D_a -> D)(audio_token_i) + audio_pos[i]``
  slot i:    ``token_embedding[prev_token_i] + slot_query[i]``; the head on the N slots gives logits [N, K]
The sink block is the portrait's N tokens (``token_embedding + sink_pos``) run through the layers once;
its per-layer K/V is the sink cache.

Attention (every layer): a block sees the sink, the previous W blocks that exist, and itself (full,
bidirectional inside the block); nothing else. Rotary positions are block-relative and never grow: the
current block sits at W+1, a window block of age a (1 = previous frame) at W+1-a, the sink at 0; the
intra-block position is the learned embeddings above. Keys are cached *before* rotary, so a cached key
is rotated by the position of its buffer slot at every step and frame 1,000,000 computes exactly what
frame 10 does. With L layers, information still flows further back through stacked windows (receptive
field L*W blocks, as in any sliding-window transformer); per-frame cost and state stay constant.

Isolated group (optional): the slots of ``decoder.isolated_cells`` and the tokens of ``isolated_controls``
are masked from every query outside the group, in every layer and block (``iso_bias``, a constant [BL, BL]);
the rest of the frame computes exactly what it would without them, so the group can be trained alone.

State (B sessions): sink_k/v [B,L,H,N,dh]; window_k/v [B,L,H,W*BL,dh] ordered oldest -> newest (slot
block b has age W-b); frame int [B,1] = frames already produced. ``step`` appends the current block's
K/V and drops the oldest by concat + slice (static shapes); window slots that do not exist yet
(age > frame) are masked arithmetically from ``frame``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from eartalking.config import CONTROL_NAMES, CONTROL_SCALES, ModelConfig
from eartalking.model.tokenizer import FSQ_DIMS, shut_tokens

#: additive mask value: finite and within fp16 range (an fp16 engine turning -1e9 into -inf would make
#: 0 * -inf = NaN); exp(-3e4) is 0 in any precision, and every query always sees the sink and its own block
NEG = -3.0e4


def rotary_table(positions: torch.Tensor, dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [P, dim] for integer ``positions`` [P] (half-split layout), computed in float64."""
    inv = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    ang = positions.to(torch.float64)[:, None] * inv[None]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos().float(), ang.sin().float()


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x [..., P, dh] by tables [P, dh] (broadcast over leading dims)."""
    h = x.shape[-1] // 2
    rot = torch.cat([-x[..., h:], x[..., :h]], dim=-1)
    return x * cos + rot * sin


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(dh) + bias) v for q [..., Q, dh], k/v [..., K, dh] -> [..., Q, dh]."""
    s = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if bias is not None:
        s = s + bias
    return torch.matmul(torch.softmax(s, dim=-1), v)


class Layer(nn.Module):
    """Pre-LN GPT block, split so the attention part can be done by the caller (cache or training)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(approximate="tanh"),
                                 nn.Linear(mlp_ratio * dim, dim))

    def qkv_heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x [..., P, D] -> q, k, v each [..., H, P, dh]."""
        qkv = self.qkv(self.ln1(x)).unflatten(-1, (3, self.heads, -1))  # [..., P, 3, H, dh]
        n = qkv.dim()  # explicit non-negative permutation: exports cleanly whatever the leading dims
        qkv = qkv.permute(*range(n - 4), n - 3, n - 2, n - 4, n - 1)  # [..., 3, H, P, dh]
        q, k, v = qkv.unbind(n - 4)
        return q, k, v

    def finish(self, x: torch.Tensor, att: torch.Tensor) -> torch.Tensor:
        """Residual update from attention output att [..., H, P, dh] and the MLP: -> [..., P, D]."""
        n = att.dim()
        x = x + self.proj(att.permute(*range(n - 3), n - 2, n - 3, n - 1).flatten(-2))  # [..., P, H*dh]
        return x + self.mlp(self.ln2(x))


class StepDecoder(nn.Module):
    """See module docstring. Dimensions from ``cfg`` (a ModelConfig)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.decoder
        if d.dim % d.heads or (d.dim // d.heads) % 2:
            raise ValueError(f"decoder dim {d.dim} must split into {d.heads} heads of even size")
        if d.n_controls != len(CONTROL_NAMES):
            raise ValueError(f"n_controls {d.n_controls} must equal len(CONTROL_NAMES) = {len(CONTROL_NAMES)}")
        self.C, self.A, self.N = d.n_controls, cfg.audio.tokens_per_frame, cfg.tokens_per_frame
        self.BL, self.W, self.L, self.H, self.dh = cfg.block_len, d.window, d.layers, d.heads, d.head_dim
        self.K, self.top_k, self.rope_base, D = cfg.tokenizer.codebook_size, d.top_k, d.rope_base, d.dim
        if d.greedy not in GREEDY:
            raise ValueError(f"decoder.greedy {d.greedy!r}: choose one of {GREEDY}")
        if not d.code_mean_temperature > 0:
            raise ValueError(f"decoder.code_mean_temperature must be > 0, got {d.code_mean_temperature}")
        self.greedy, self.code_mean_temperature = d.greedy, float(d.code_mean_temperature)
        if not d.code_mean_cells_temperature > 0:
            raise ValueError(f"decoder.code_mean_cells_temperature must be > 0, got {d.code_mean_cells_temperature}")
        self.code_mean_cells_temperature = float(d.code_mean_cells_temperature)
        self.register_buffer("code_mean_cells", self._cell_mask("code_mean_cells", d.code_mean_cells),
                             persistent=False)
        if not d.code_mean_gain > 0:
            raise ValueError(f"decoder.code_mean_gain must be > 0, got {d.code_mean_gain}")
        self.code_mean_gain = float(d.code_mean_gain)
        self.register_buffer("code_mean_gain_cells", self._cell_mask("code_mean_gain_cells", d.code_mean_gain_cells),
                             persistent=False)
        self.register_buffer("eye_state_cells", self._cell_mask("eye_state_cells", d.eye_state_cells),
                             persistent=False)
        # the group's cells, and the 0/1 matrix [E, N] that puts E per-cell picks back on the token grid
        self.register_buffer("eye_state_index", torch.tensor(d.eye_state_cells, dtype=torch.long), persistent=False)
        self.register_buffer("eye_state_place", F.one_hot(self.eye_state_index, self.N).float(), persistent=False)
        if not 0.0 < d.eye_state_threshold < 1.0:
            raise ValueError(f"decoder.eye_state_threshold must be in (0, 1), got {d.eye_state_threshold}")
        if not 0.0 < d.eye_state_absent_threshold <= 1.0:
            raise ValueError("decoder.eye_state_absent_threshold must be in (0, 1], got "
                             f"{d.eye_state_absent_threshold}")
        self.eye_state_threshold = float(d.eye_state_threshold)
        self.eye_state_absent_threshold = float(d.eye_state_absent_threshold)
        levels = _radix(self.K, "cpu")[0]
        self.register_buffer("eye_state_shut", shut_tokens(levels, d.eye_state_open_max, "decoder.eye_state_open_max")
                             if d.eye_state_cells else torch.zeros(self.K, dtype=torch.bool),
                             persistent=False)  # [K]: shut corner
        self.eye_state_open_max = int(d.eye_state_open_max)
        std = 0.02
        self.null_embedding = nn.Parameter(torch.randn(self.C, D) * std)
        self.control_weight = nn.Parameter(torch.randn(self.C, D) * std)
        self.type_embedding = nn.Parameter(torch.randn(self.C, D) * std)
        self.register_buffer("control_scales", torch.tensor([CONTROL_SCALES[n] for n in CONTROL_NAMES]),
                             persistent=False)
        self.audio_proj = nn.Linear(cfg.audio.dim, D)
        self.audio_pos = nn.Parameter(torch.randn(self.A, D) * std)
        self.token_embedding = nn.Embedding(self.K, D)
        nn.init.normal_(self.token_embedding.weight, std=std)
        self.slot_query = nn.Parameter(torch.randn(self.N, D) * std)
        self.sink_pos = nn.Parameter(torch.randn(self.N, D) * std)
        self.layers = nn.ModuleList([Layer(D, d.heads, d.mlp_ratio) for _ in range(d.layers)])
        self.ln_f = nn.LayerNorm(D)
        self.head = nn.Linear(D, self.K)
        # rotary tables: positions 0..W+1 (sink 0, window block b at b+1, current block at W+1)
        cos, sin = rotary_table(torch.arange(self.W + 2), self.dh, d.rope_base)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        slot_pos = torch.arange(self.W).repeat_interleave(self.BL) + 1  # [W*BL]
        self.register_buffer("win_cos", cos[slot_pos], persistent=False)
        self.register_buffer("win_sin", sin[slot_pos], persistent=False)
        self.register_buffer("win_age", (self.W + 1 - slot_pos).float(), persistent=False)  # age of each slot
        self.register_buffer("anchored", self._cell_mask("anchor_cells", d.anchor_cells), persistent=False)
        self._cell_mask("isolated_cells", d.isolated_cells)  # checked here; the group below is over block positions
        bad = [c for c in d.isolated_controls if c not in CONTROL_NAMES]
        if bad:
            raise ValueError(f"isolated_controls {bad}: not among the controls {list(CONTROL_NAMES)}")
        group = torch.zeros(self.BL, dtype=torch.bool)  # block positions of the isolated group
        group[[CONTROL_NAMES.index(c) for c in d.isolated_controls]] = True
        group[[self.C + self.A + c for c in d.isolated_cells]] = True
        self.isolating = bool(group.any())
        # [BL queries, BL keys]: NEG where a query outside the group would read a key inside it
        self.register_buffer("iso_bias", (~group[:, None] & group[None, :]).float() * NEG, persistent=False)
        # the same over a step's keys [BL, N sink + W window blocks + the current block] (a constant)
        self.register_buffer("iso_step_bias", F.pad(self.iso_bias.repeat(1, self.W + 1), (self.N, 0)),
                             persistent=False)

    def _cell_mask(self, name: str, cells: tuple[int, ...]) -> torch.Tensor:
        """bool [N], True at ``cells`` (config field ``name``); a cell outside the token grid is refused by name."""
        bad = [c for c in cells if not 0 <= c < self.N]
        if bad:
            raise ValueError(f"{name} {bad} outside the {self.N} token cells")
        mask = torch.zeros(self.N, dtype=torch.bool)
        mask[list(cells)] = True
        return mask

    def anchor(self, prev_tokens: torch.Tensor, ref_tokens: torch.Tensor) -> torch.Tensor:
        """prev_tokens [..., N] with the ``anchor_cells`` replaced by the portrait's ref_tokens (broadcast to
        [..., N]); unchanged when no cell is anchored. Every path (train, stream, export) calls it."""
        if not bool(self.anchored.any()):
            return prev_tokens
        return torch.where(self.anchored, ref_tokens.to(prev_tokens.dtype), prev_tokens)

    def pick(self, logits: torch.Tensor, temperature: torch.Tensor, gumbel: torch.Tensor,
             ref_tokens: torch.Tensor, control_mask: torch.Tensor | None = None) -> torch.Tensor:
        """logits [B,N,K] -> tokens int64 [B,N] with this decoder's top_k, greedy rule, code_mean temperature and
        gain (``select``; ``ref_tokens`` [B,N] = the portrait's tokens, what the gain moves away from), and the eye
        state (``state_pick``; ``control_mask`` [B,C]: where the blink control is absent, or None, the absent
        threshold applies). Every
        path (stream, reference, torch backend, export) picks through here."""
        temps = self.cell_temperatures()
        tokens = select(logits, temperature, gumbel, self.top_k, self.greedy, temps, self.cell_gains(), ref_tokens)
        if self.greedy != "code_mean" or not bool(self.eye_state_cells.any()):
            return tokens
        if control_mask is None:
            given = torch.zeros_like(temperature, dtype=torch.bool)  # [B,1]
        else:
            given = control_mask[:, CONTROL_NAMES.index("blink")][:, None] > 0.5
        thr = torch.where(given, torch.full_like(temperature, self.eye_state_threshold),
                          torch.full_like(temperature, self.eye_state_absent_threshold))
        idx = self.eye_state_index  # only the group's cells: per-frame work
        joint = state_pick(logits[:, idx], self.eye_state_shut, self.eye_state_open_max, thr,
                           temps[idx] if isinstance(temps, torch.Tensor) else temps, ref_tokens[:, idx])  # [B,E]
        placed = torch.matmul(joint.to(torch.float32), self.eye_state_place).to(torch.int64)  # exact below 2**24
        return torch.where(self.eye_state_cells[None, :] & (temperature == 0), placed, tokens)

    def cell_gains(self) -> torch.Tensor | None:
        """``code_mean``'s gain, float [N] (``code_mean_gain`` at the ``code_mean_gain_cells``, 1 elsewhere), or
        None when it moves nothing. Read at each pick, like ``cell_temperatures``."""
        if not bool(self.code_mean_gain_cells.any()) or self.code_mean_gain == 1.0:
            return None
        return torch.where(self.code_mean_gain_cells, torch.tensor(self.code_mean_gain),
                           torch.tensor(1.0)).to(torch.float32)

    def cell_temperatures(self) -> float | torch.Tensor:
        """``code_mean``'s temperature: ``code_mean_temperature`` (a float) when no cell has its own, else float
        [N] with ``code_mean_cells_temperature`` at the ``code_mean_cells``. Read at each pick, so a sweep that
        sets the attributes (``scripts/code_mean_sweep.py``) takes effect."""
        if not bool(self.code_mean_cells.any()):
            return self.code_mean_temperature
        return torch.where(self.code_mean_cells, torch.tensor(self.code_mean_cells_temperature),
                           torch.tensor(self.code_mean_temperature)).to(torch.float32)

    # ---- block embedding ----
    def embed_block(self, audio: torch.Tensor, controls: torch.Tensor, mask: torch.Tensor,
                    prev_tokens: torch.Tensor) -> torch.Tensor:
        """audio [...,A,D_a], controls/mask [...,C], prev_tokens [...,N] -> block [..., BL, D]."""
        ctrl = (controls / self.control_scales)[..., None] * self.control_weight + self.type_embedding
        ctrl = torch.where(mask[..., None] > 0.5, ctrl, self.null_embedding)  # absent: value ignored (even NaN)
        aud = self.audio_proj(audio) + self.audio_pos
        slots = self.token_embedding(prev_tokens.long()) + self.slot_query
        return torch.cat([ctrl, aud, slots], dim=-2)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """final hidden block [..., BL, D] -> logits of the N slots [..., N, K]."""
        return self.head(self.ln_f(x[..., self.C + self.A:, :]))

    # ---- sink ----
    def sink(self, ref_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Portrait tokens [B,N] -> (sink_k, sink_v) each [B,L,H,N,dh] (position 0: no rotation)."""
        x = self.token_embedding(ref_tokens.long()) + self.sink_pos
        ks, vs = [], []
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv_heads(x)
            ks.append(k)
            vs.append(v)
            if i < self.L - 1:  # the last layer's output is never used
                x = layer.finish(x, attend(q, k, v))
        return torch.stack(ks, 1), torch.stack(vs, 1)

    # ---- one streaming step ----
    def window_bias(self, frame: torch.Tensor) -> torch.Tensor:
        """frame int [B,1] -> additive bias [B,1,1,N + W*BL + BL]: window slots older than ``frame`` masked."""
        missing = (self.win_age[None, :] > frame.to(self.win_age.dtype)).to(self.win_age.dtype)  # [B, W*BL]
        return F.pad(missing * NEG, (self.N, self.BL))[:, None, None, :]

    def step(self, audio_tokens: torch.Tensor, controls: torch.Tensor, control_mask: torch.Tensor,
             sink_k: torch.Tensor, sink_v: torch.Tensor, window_k: torch.Tensor, window_v: torch.Tensor,
             prev_tokens: torch.Tensor, frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One frame. audio [B,A,D_a], controls/mask [B,C], sink [B,L,H,N,dh], window [B,L,H,W*BL,dh],
        prev_tokens [B,N], frame int [B,1] -> (logits [B,N,K], new_window_k, new_window_v)."""
        x = self.embed_block(audio_tokens, controls, control_mask, prev_tokens)  # [B, BL, D]
        bias = self.window_bias(frame)
        if self.isolating:  # [B,1,1,keys] + iso_step_bias [BL,keys]: the group's keys in the window and this block;
            # clamped so a key both missing and isolated stays at NEG (2*NEG = -6e4 is at the edge of fp16)
            bias = (bias + self.iso_step_bias).clamp_min(NEG)
        cos_c, sin_c = self.rope_cos[self.W + 1], self.rope_sin[self.W + 1]
        new_k, new_v = [], []
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv_heads(x)  # [B, H, BL, dh]
            wk, wv = window_k[:, i], window_v[:, i]
            keys = torch.cat([sink_k[:, i], rope(wk, self.win_cos, self.win_sin), rope(k, cos_c, sin_c)], dim=2)
            vals = torch.cat([sink_v[:, i], wv, v], dim=2)
            x = layer.finish(x, attend(rope(q, cos_c, sin_c), keys, vals, bias))
            new_k.append(torch.cat([wk, k], dim=2)[:, :, self.BL:])  # drop the oldest block
            new_v.append(torch.cat([wv, v], dim=2)[:, :, self.BL:])
        return self.logits(x), torch.stack(new_k, 1), torch.stack(new_v, 1)

    def empty_window(self, batch: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero window buffers [B,L,H,W*BL,dh] (contents are masked until filled)."""
        shape = (batch, self.L, self.H, self.W * self.BL, self.dh)
        return torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype)

    # ---- training (all T blocks at once) ----
    def sfa_mask(self, T: int) -> torch.Tensor:
        """Boolean mask [T*BL, N + T*BL] (True = may attend): queries of block t see the sink (first N
        columns) and blocks s with 0 <= t - s <= W; nothing else. Queries outside the isolated group never
        see the group's positions."""
        t = torch.arange(T)
        blocks = (t[:, None] - t[None, :] >= 0) & (t[:, None] - t[None, :] <= self.W)  # [T, T]
        tok = blocks.repeat_interleave(self.BL, 0).repeat_interleave(self.BL, 1)
        tok = tok & (self.iso_bias.cpu() == 0).repeat(T, T)
        return torch.cat([torch.ones(T * self.BL, self.N, dtype=torch.bool), tok], dim=1)

    def forward_train(self, ref_tokens: torch.Tensor, audio: torch.Tensor, controls: torch.Tensor,
                      mask: torch.Tensor, prev_tokens: torch.Tensor, dense: bool = False) -> torch.Tensor:
        """Teacher-forced logits for T frames at once: ref_tokens [B,N], audio [B,T,A,D_a], controls/mask
        [B,T,C], prev_tokens [B,T,N] (frame 0's = the portrait tokens) -> logits [B,T,N,K].

        Exactly what ``step`` computes frame by frame. Default: one small attention per age 0..W (memory
        grows with T*W). ``dense=True`` is an independent check: one [T*BL, N+T*BL] attention with
        ``sfa_mask(T)`` and absolute block positions (rotary depends only on position differences).
        """
        B, T = audio.shape[:2]
        sink_k, sink_v = self.sink(ref_tokens)
        prev_tokens = self.anchor(prev_tokens, ref_tokens[:, None])
        x = self.embed_block(audio, controls, mask, prev_tokens)  # [B, T, BL, D]
        attn = self._attend_dense if dense else self._attend_ages
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv_heads(x)  # [B, T, H, BL, dh]
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, BL, dh]
            att = attn(q, k, v, sink_k[:, i], sink_v[:, i])  # [B, H, T, BL, dh]
            x = layer.finish(x, att.transpose(1, 2))
        return self.logits(x)

    def _attend_ages(self, q, k, v, sk, sv):
        """q/k/v [B,H,T,BL,dh], sink [B,H,N,dh] -> [B,H,T,BL,dh]; keys grouped by age a = t - s."""
        T = q.shape[2]
        qr = rope(q, self.rope_cos[self.W + 1], self.rope_sin[self.W + 1])
        scores, values = [torch.matmul(qr, sk[:, :, None].transpose(-1, -2))], [sv[:, :, None]]  # sink
        for a in range(min(self.W, T - 1) + 1):
            ka = F.pad(k, (0, 0, 0, 0, a, 0))[:, :, :T]  # block t-a at index t (zeros where t < a)
            va = F.pad(v, (0, 0, 0, 0, a, 0))[:, :, :T]
            kr = rope(ka, self.rope_cos[self.W + 1 - a], self.rope_sin[self.W + 1 - a])  # age a -> position W+1-a
            s = torch.matmul(qr, kr.transpose(-1, -2))
            missing = (torch.arange(T, device=q.device) < a).to(q.dtype) * NEG  # [T]
            s = s + missing[:, None, None]
            scores.append(s + self.iso_bias if self.isolating else s)
            values.append(va)
        p = torch.softmax(torch.cat(scores, -1) * (self.dh ** -0.5), dim=-1)
        out = torch.matmul(p[..., :self.N], values[0])
        for j, va in enumerate(values[1:]):
            out = out + torch.matmul(p[..., self.N + j * self.BL:self.N + (j + 1) * self.BL], va)
        return out

    def _attend_dense(self, q, k, v, sk, sv):
        """Same as _attend_ages with one masked attention over sink + all T blocks (for checking)."""
        B, H, T, BL, dh = q.shape
        cos_t, sin_t = (t.to(q.device) for t in rotary_table(torch.arange(T).repeat_interleave(BL), dh, self.rope_base))
        q, k, v = (t.reshape(B, H, T * BL, dh) for t in (q, k, v))
        sink_scores = torch.matmul(rope(q, self.rope_cos[self.W + 1], self.rope_sin[self.W + 1]), sk.transpose(-1, -2))
        blk_scores = torch.matmul(rope(q, cos_t, sin_t), rope(k, cos_t, sin_t).transpose(-1, -2))
        s = torch.cat([sink_scores, blk_scores], -1) * dh ** -0.5
        s = s.masked_fill(~self.sfa_mask(T).to(q.device), float("-inf"))
        out = torch.matmul(torch.softmax(s, -1), torch.cat([sv, v], dim=2))
        return out.reshape(B, H, T, BL, dh)


def teacher_prev_tokens(ref_tokens: torch.Tensor, frame_tokens: torch.Tensor) -> torch.Tensor:
    """Teacher-forcing inputs: ref_tokens [B,N] + ground-truth frame tokens [B,T,N] -> prev_tokens [B,T,N]
    (frame 0 sees the portrait's tokens, frame t the tokens of frame t-1), as at inference."""
    return torch.cat([ref_tokens[:, None], frame_tokens[:, :-1]], dim=1)


GREEDY = ("argmax", "code_mean")


def state_pick(logits: torch.Tensor, shut: torch.Tensor, open_max: int, threshold: float | torch.Tensor,
               temperature: float | torch.Tensor, ref_tokens: torch.Tensor) -> torch.Tensor:
    """logits [B,E,K] of one group's E cells -> int64 [B,E]: the group picked as one binary state
    (``decoder.eye_state_*``; ``StepDecoder.pick`` passes the eye cells alone).

    The group's mean softmax mass on the ``shut`` tokens (bool [K], the corner where every FSQ digit is above
    ``open_max``) decides: above ``threshold`` (a float, or float [B,1] per row) every cell takes ``code_mean``
    (at ``temperature``: a float or float [E]) over the shut tokens alone (its expected digits stay in the
    corner); otherwise it takes the portrait's own token ``ref_tokens`` [B,E] (open eyes, the anchor the step
    decoder starts every frame from), its first digit capped at ``open_max`` if the encoder put it in the
    corner, as the eye code does for open frames in training. Static ops: Softmax, masked logits, MatMul, Floor,
    Where.
    """
    lg = logits.float()
    mass = (torch.softmax(lg, dim=-1) * shut.to(lg.dtype)).sum(-1)  # [B,E]
    is_shut = mass.mean(-1, keepdim=True) > threshold  # [B,1]
    shut_tok = code_mean(torch.where(shut, lg, torch.full_like(lg, -1e9)), temperature)
    L, weights = _radix(int(lg.shape[-1]), lg.device)
    r = token_digits(ref_tokens, L, weights)  # [B,N,d]
    r0 = torch.where((r > open_max).all(-1), torch.full_like(r[..., 0], float(open_max)), r[..., 0])
    open_tok = (torch.cat([r0[..., None], r[..., 1:]], dim=-1) * weights).sum(-1).to(torch.int64)
    return torch.where(is_shut, shut_tok, open_tok)


def _radix(K: int, device) -> tuple[int, torch.Tensor]:
    """Codebook size K = L**FSQ_DIMS -> (L, float [FSQ_DIMS] digit weights L**i: digits -> token index)."""
    L = round(K ** (1 / FSQ_DIMS))
    if L ** FSQ_DIMS != K:
        raise ValueError(f"code_mean needs K = L^{FSQ_DIMS} tokens, got K={K}")
    return L, torch.tensor([L ** i for i in range(FSQ_DIMS)], dtype=torch.float32, device=device)


def token_digits(tokens: torch.Tensor, L: int, weights: torch.Tensor) -> torch.Tensor:
    """int tokens [...] -> their FSQ digits, float [..., FSQ_DIMS], in float ops (exact below 2**24; no integer
    Div/Mod on a graph input, which TensorRT would refuse)."""
    ref = tokens.to(device=weights.device, dtype=torch.float32)[..., None]
    return torch.floor(ref / weights) - L * torch.floor(ref / (weights * L))


def code_mean_digits(logits: torch.Tensor, temperature: float | torch.Tensor = 1.0, gain: torch.Tensor | None = None,
                     ref_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """``code_mean``'s rounded expected FSQ digits, float [..., N, FSQ_DIMS] (digit i has weight L**i)."""
    L, weights = _radix(int(logits.shape[-1]), logits.device)  # K static in every graph (codebook size)
    k = torch.arange(L ** FSQ_DIMS, device=logits.device)
    digits = token_digits(k, L, weights)  # [K, d]
    if isinstance(temperature, torch.Tensor):
        t = temperature.to(device=logits.device, dtype=torch.float32)[:, None]  # [N, 1] against [..., N, K]
    else:
        t = float(temperature)
    p = torch.softmax(logits.float() / t, dim=-1)
    e = torch.matmul(p, digits)  # [..., N, d]
    if gain is not None:
        if ref_tokens is None:
            raise ValueError("code_mean with a gain needs ref_tokens (the portrait's tokens it moves away from)")
        g = gain.to(device=logits.device, dtype=torch.float32)[:, None]  # [N, 1]
        r = token_digits(ref_tokens, L, weights)  # the portrait's digits [..., N, d]
        e = torch.where(g != 1.0, r + g * (e - r), e)
    return torch.round(e).clamp(0, L - 1)  # [..., d]


def code_mean(logits: torch.Tensor, temperature: float | torch.Tensor = 1.0, gain: torch.Tensor | None = None,
              ref_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """logits [..., N, K] with K = L**FSQ_DIMS -> the token whose FSQ digits are the rounded expected digits under
    softmax(logits / temperature), int64 [..., N]. ``temperature``: a float, or float [N], one per token cell
    (``decoder.code_mean_cells``). ``gain`` float [N] with ``ref_tokens`` int [..., N]: where gain != 1 the
    expected digits d become r + gain (d - r) before rounding, r = the digits of ``ref_tokens`` (the portrait's),
    so a cell's move away from the portrait is scaled (``decoder.code_mean_gain``); other cells are untouched.

    Token k has digits (k // L**i) % L (``Tokenizer.quantize_indices``) and its code vector is linear in them,
    so rounding the expected digits picks the grid point nearest the mean code under the predicted
    distribution. Unlike argmax it follows the probability mass: 40% spread over open-mouth tokens moves the
    choice toward them even when one closed-mouth token is the single most likely.
    """
    _, weights = _radix(int(logits.shape[-1]), logits.device)
    return (code_mean_digits(logits, temperature, gain, ref_tokens) * weights).sum(-1).to(torch.int64)


def select(logits: torch.Tensor, temperature: torch.Tensor, gumbel: torch.Tensor, top_k: int,
           greedy: str = "argmax", code_mean_temperature: float | torch.Tensor = 1.0,
           code_mean_gain: torch.Tensor | None = None, ref_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Pick tokens from logits [B,N,K]: where temperature [B,1] == 0 the ``greedy`` choice (argmax, or
    ``code_mean`` at ``code_mean_temperature`` with ``code_mean_gain`` away from ``ref_tokens`` [B,N]), else argmax
    over the top_k logits of (logit / temperature + gumbel) with gumbel [B,N,K] from
    ``eartalking.sampling.gumbel_noise``. No data-dependent control flow; TopK sorted. -> int64 [B,N]."""
    if greedy not in GREEDY:
        raise ValueError(f"greedy {greedy!r}: choose one of {GREEDY}")
    greedy = (logits.argmax(-1) if greedy == "argmax"
              else code_mean(logits, code_mean_temperature, code_mean_gain, ref_tokens))
    vals, idx = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1, largest=True, sorted=True)
    t = temperature[..., None].to(logits.dtype)  # [B,1,1]
    z = vals / torch.where(t > 0, t, torch.ones_like(t)) + torch.gather(gumbel, -1, idx)
    sampled = torch.gather(idx, -1, z.argmax(-1, keepdim=True)).squeeze(-1)
    return torch.where(temperature > 0, sampled, greedy)

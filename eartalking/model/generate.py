"""Frame-by-frame generation with the PyTorch model: the streaming generator and its no-cache reference.

``StreamingGenerator`` keeps exactly the state the ``step_decoder`` graph carries (sink K/V, fixed-size
window K/V rolled every frame, previous tokens, frame counter) and produces one frame per call.
``reference_generate`` keeps no cache: for every frame it re-runs the teacher-forced decoder over the
stored block inputs of the frames that can still influence it (the last L*W blocks: per layer a block sees
the sink + W blocks, so L stacked layers reach L*W blocks back) and picks tokens the same way. Both give
the same tokens (tests/unit/test_model.py), which checks the cache, the window roll and the positions.

Sampling: temperature 0 = greedy; otherwise top-k Gumbel-max with noise ``gumbel_noise(seed, frame, [N,K])``.
"""

from __future__ import annotations

import torch

from eartalking.model.model import EARTalking
from eartalking.sampling import gumbel_noise


def frame_noise(seed: int, frame: int, n: int, k: int, batch: int = 1, device=None) -> torch.Tensor:
    """Gumbel noise for one frame, [batch, n, k] (every row of the batch gets the same (seed, frame) noise)."""
    g = torch.from_numpy(gumbel_noise(seed, frame, (n, k))).to(device)
    return g[None].expand(batch, n, k).contiguous()


class StreamingGenerator:
    """One or more sessions sharing a portrait batch ``portrait`` [B,3,S,S] in 0..1 (all at the same frame)."""

    def __init__(self, model: EARTalking, portrait: torch.Tensor, temperature: float = 0.0, seed: int = 0):
        self.model, self.dec = model, model.decoder
        self.temperature, self.seed = float(temperature), int(seed)
        with torch.no_grad():
            self.ref_tokens = model.tokenizer.encode(portrait)  # [B, N]
            self.refs = model.tokenizer.reference(portrait)
            self.sink_k, self.sink_v = self.dec.sink(self.ref_tokens)
        B = portrait.shape[0]
        self.window_k, self.window_v = self.dec.empty_window(B, device=portrait.device)
        self.prev_tokens = self.ref_tokens.clone()
        self.frame = torch.zeros(B, 1, dtype=torch.int64, device=portrait.device)
        self.last_logits: torch.Tensor | None = None

    @torch.no_grad()
    def step(self, audio_tokens: torch.Tensor, controls: torch.Tensor | None = None,
             control_mask: torch.Tensor | None = None) -> torch.Tensor:
        """audio_tokens [B,A,D_a], controls/control_mask [B,C] (None = all absent) -> tokens int64 [B,N]."""
        B, dev = audio_tokens.shape[0], audio_tokens.device
        if controls is None:
            controls = torch.zeros(B, self.dec.C, device=dev)
            control_mask = torch.zeros(B, self.dec.C, device=dev)
        elif control_mask is None:
            control_mask = torch.ones_like(controls)
        logits, self.window_k, self.window_v = self.dec.step(
            audio_tokens, controls, control_mask, self.sink_k, self.sink_v, self.window_k, self.window_v,
            self.dec.anchor(self.prev_tokens, self.ref_tokens), self.frame)
        frame = int(self.frame[0, 0])
        gumbel = frame_noise(self.seed, frame, self.dec.N, self.dec.K, B, dev)
        temp = torch.full((B, 1), self.temperature, device=dev)
        tokens = self.dec.pick(logits, temp, gumbel, self.ref_tokens, control_mask)
        self.prev_tokens, self.frame, self.last_logits = tokens, self.frame + 1, logits
        return tokens

    @torch.no_grad()
    def render(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens [B,N] -> image [B,3,S,S] in 0..1 (decoded against this session's portrait features)."""
        return self.model.tokenizer.decode(tokens, self.refs)


@torch.no_grad()
def reference_generate(model: EARTalking, portrait: torch.Tensor, audio_tokens: torch.Tensor,
                       controls: torch.Tensor | None = None, control_mask: torch.Tensor | None = None,
                       temperature: float = 0.0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """No-cache reference: portrait [B,3,S,S], audio_tokens [B,T,A,D_a], controls/mask [B,T,C]
    -> (tokens int64 [B,T,N], logits [B,T,N,K]). Recomputes every frame's context from block inputs."""
    dec = model.decoder
    B, T = audio_tokens.shape[:2]
    dev = audio_tokens.device
    if controls is None:
        controls, control_mask = torch.zeros(B, T, dec.C, device=dev), torch.zeros(B, T, dec.C, device=dev)
    elif control_mask is None:
        control_mask = torch.ones_like(controls)
    ref_tokens = model.tokenizer.encode(portrait)
    reach = dec.L * dec.W  # blocks further back cannot change this frame's logits
    prevs, toks, logs = [ref_tokens], [], []
    temp = torch.full((B, 1), float(temperature), device=dev)
    for t in range(T):
        lo = max(0, t - reach)
        logits = dec.forward_train(ref_tokens, audio_tokens[:, lo:t + 1], controls[:, lo:t + 1],
                                   control_mask[:, lo:t + 1], torch.stack(prevs[lo:t + 1], 1))[:, -1]
        tokens = dec.pick(logits, temp, frame_noise(seed, t, dec.N, dec.K, B, dev), ref_tokens,
                          control_mask[:, t])
        prevs.append(tokens)
        toks.append(tokens)
        logs.append(logits)
    return torch.stack(toks, 1), torch.stack(logs, 1)

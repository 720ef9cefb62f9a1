"""PyTorch modules traced into the ONNX graphs, and the PyTorch reference of each graph for ``verify``.

Tokens are int32 at every graph boundary (TensorRT friendliness) and int64 inside. Shapes as in
``export/specs.py`` (B = batch, N tokens per frame, K codebook, L layers, H heads, dh head dim, W window,
BL block length, WL = W*BL):

- ``TokenizerEncoderGraph``: image [B,3,S,S] -> tokens i32 [B,N], ref_0..ref_3
- ``TokenizerDecoderGraph``: tokens i32 [B,N], ref_0..ref_3 -> image [B,3,S,S]
- ``AudioEncoderGraph``:     pcm [B, left_context + n*640] -> audio_tokens [B,n,A,D_a]
- ``step_decoder`` is exported in two parts that ``compose.py`` joins with an ONNX ``If``:
  ``SinkGraph`` (ref_tokens -> new sink K/V, the then-branch) and ``StepCoreGraph`` (one frame given the
  *effective* sink/window state, i.e. after the If; it also applies the start reset of frame/prev tokens).

``step_reference`` is the whole ``step_decoder`` contract in PyTorch (start handling in Python), the reference
``verify`` compares ONNX Runtime against.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from eartalking.model.decoder import StepDecoder
from eartalking.model.model import EARTalking

#: inputs of the core step graph that replace the state inputs the If rewrites
EFFECTIVE = {"in_sink_k": "sink_k_eff", "in_sink_v": "sink_v_eff",
             "in_window_k": "window_k_eff", "in_window_v": "window_v_eff"}
CORE_INPUTS = ("start", "ref_tokens", "audio_tokens", "controls", "control_mask", "temperature", "gumbel",
               "sink_k_eff", "sink_v_eff", "window_k_eff", "window_v_eff", "in_prev_tokens", "in_frame")
CORE_OUTPUTS = ("tokens", "out_window_k", "out_window_v", "out_prev_tokens", "out_frame")
SINK_INPUTS, SINK_OUTPUTS = ("ref_tokens",), ("new_sink_k", "new_sink_v")


class TokenizerEncoderGraph(nn.Module):
    def __init__(self, model: EARTalking):
        super().__init__()
        self.tok = model.tokenizer

    def forward(self, image: torch.Tensor):
        return (self.tok.encode(image).to(torch.int32), *self.tok.reference(image))


class TokenizerDecoderGraph(nn.Module):
    def __init__(self, model: EARTalking):
        super().__init__()
        self.tok = model.tokenizer

    def forward(self, tokens: torch.Tensor, *refs: torch.Tensor):
        return self.tok.decode(tokens, list(refs))


class AudioEncoderGraph(nn.Module):
    def __init__(self, model: EARTalking):
        super().__init__()
        self.audio = model.audio

    def forward(self, pcm: torch.Tensor):
        return self.audio(pcm)


class SinkGraph(nn.Module):
    """ref_tokens i32 [B,N] -> (sink_k, sink_v) [B,L,H,N,dh]: the If's then-branch."""

    def __init__(self, model: EARTalking):
        super().__init__()
        self.dec: StepDecoder = model.decoder

    def forward(self, ref_tokens: torch.Tensor):
        return self.dec.sink(ref_tokens)


class StepCoreGraph(nn.Module):
    """One frame on the effective state. ``start`` [B,1] resets the frame counter to 0 (so every window
    slot is masked) and makes the previous-frame tokens the portrait's; sink/window come in already
    replaced by the If for starting rows. Outputs tokens i32 [B,N] and the next state."""

    def __init__(self, model: EARTalking):
        super().__init__()
        self.dec: StepDecoder = model.decoder

    def forward(self, start, ref_tokens, audio_tokens, controls, control_mask, temperature, gumbel,
                sink_k, sink_v, window_k, window_v, in_prev_tokens, in_frame):
        s = start > 0  # [B,1]
        frame = torch.where(s, torch.zeros_like(in_frame), in_frame)
        prev = torch.where(s, ref_tokens, in_prev_tokens)
        logits, wk, wv = self.dec.step(audio_tokens, controls, control_mask, sink_k, sink_v, window_k, window_v,
                                       self.dec.anchor(prev, ref_tokens), frame)
        tokens = self.dec.pick(logits, temperature, gumbel, ref_tokens, control_mask).to(torch.int32)
        return tokens, wk, wv, tokens, frame + 1


GRAPH_MODULES = {
    "tokenizer_encoder": TokenizerEncoderGraph,
    "tokenizer_decoder": TokenizerDecoderGraph,
    "audio_encoder": AudioEncoderGraph,
}


def _t(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x))


@torch.no_grad()
def step_reference(model: EARTalking, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ``step_decoder`` contract in PyTorch: feed (numpy, spec names) -> outputs (numpy, spec names)."""
    dec = model.decoder
    f = {k: _t(v) for k, v in feed.items()}
    s5 = (f["start"] > 0).reshape(-1, 1, 1, 1, 1)
    new_k, new_v = dec.sink(f["ref_tokens"])
    sink_k = torch.where(s5, new_k, f["in_sink_k"])
    sink_v = torch.where(s5, new_v, f["in_sink_v"])
    window_k = torch.where(s5, torch.zeros_like(f["in_window_k"]), f["in_window_k"])
    window_v = torch.where(s5, torch.zeros_like(f["in_window_v"]), f["in_window_v"])
    tokens, wk, wv, prev, frame = StepCoreGraph(model)(
        f["start"], f["ref_tokens"], f["audio_tokens"], f["controls"], f["control_mask"], f["temperature"],
        f["gumbel"], sink_k, sink_v, window_k, window_v, f["in_prev_tokens"], f["in_frame"])
    out = {"tokens": tokens, "out_sink_k": sink_k, "out_sink_v": sink_v, "out_window_k": wk, "out_window_v": wv,
           "out_prev_tokens": prev, "out_frame": frame}
    return {k: v.numpy() for k, v in out.items()}


@torch.no_grad()
def torch_reference(model: EARTalking, graph: str, feed: dict[str, np.ndarray],
                    output_names: list[str]) -> dict[str, np.ndarray]:
    """Run graph ``graph``'s PyTorch counterpart on ``feed`` -> {output name: numpy array}."""
    if graph == "step_decoder":
        return step_reference(model, feed)
    module = GRAPH_MODULES[graph](model).eval()
    outs = module(*(_t(v) for v in feed.values()))
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    return {n: o.numpy() for n, o in zip(output_names, outs, strict=True)}

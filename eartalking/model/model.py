"""The EARTalking container: tokenizer + audio encoder + step decoder, built from one ModelConfig.

Shapes: see ``eartalking/config.py`` and docs/INTERFACES.md. The three parts are exported as separate
graphs (tokenizer_encoder / tokenizer_decoder, audio_encoder, step_decoder); this module only holds them.
"""

from __future__ import annotations

import torch
from torch import nn

from eartalking.config import ModelConfig
from eartalking.model.audio import AudioEncoder
from eartalking.model.decoder import StepDecoder
from eartalking.model.tokenizer import Tokenizer


class EARTalking(nn.Module):
    """``tokenizer`` (Tokenizer), ``audio`` (AudioEncoder), ``decoder`` (StepDecoder); ``cfg`` kept alongside."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = Tokenizer(cfg.tokenizer)
        self.audio = AudioEncoder(cfg.audio)
        self.decoder = StepDecoder(cfg)

    def param_counts(self) -> dict[str, int]:
        """Trainable parameters per part (and total)."""
        counts = {name: sum(p.numel() for p in getattr(self, name).parameters())
                  for name in ("tokenizer", "audio", "decoder")}
        counts["total"] = sum(counts.values())
        return counts

    def forward(self, *args, **kwargs):  # pragma: no cover - the parts are called directly
        raise TypeError("EARTalking is a container: call .tokenizer, .audio or .decoder (or generate.py)")

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

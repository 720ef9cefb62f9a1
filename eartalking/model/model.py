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

    def __init__(self, cfg: ModelConfig, part_seeds: tuple[int, int, int] | None = None):
        """``part_seeds``: seed the global RNG before building the tokenizer, audio encoder and decoder
        respectively, so each part's random init does not depend on the others' architecture (tests);
        None = draw them in sequence from the current RNG state (training)."""
        super().__init__()
        self.cfg = cfg
        parts = (("tokenizer", lambda: Tokenizer(cfg.tokenizer)), ("audio", lambda: AudioEncoder(cfg.audio)),
                 ("decoder", lambda: StepDecoder(cfg)))
        for i, (name, build) in enumerate(parts):
            if part_seeds is not None:
                torch.manual_seed(part_seeds[i])
            setattr(self, name, build())

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

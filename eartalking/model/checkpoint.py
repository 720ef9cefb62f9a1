"""Checkpoints: a directory with ``config.json`` (ModelConfig) and ``model.safetensors`` (state dict).

Usage (python): ``save(dir, model, cfg)``; ``model, cfg = load(dir)``; ``random_model("test_small", seed=0)``
for tests (random weights, eval mode, reproducible for a seed); ``tok, cfg = load_tokenizer(dir)`` for a
checkpoint or a ``train-tokenizer`` run folder.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from eartalking.config import ModelConfig, preset
from eartalking.model.model import EARTalking

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save(directory: str | Path, model: EARTalking, cfg: ModelConfig | None = None,
         metadata: dict[str, str] | None = None) -> Path:
    """Write ``config.json`` + ``model.safetensors`` into ``directory`` (created if needed); returns it."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg if cfg is None else cfg
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tmp = d / (WEIGHTS_FILE + ".tmp")
    save_file(state, str(tmp), metadata={"model_name": cfg.name, **(metadata or {})})
    tmp.replace(d / WEIGHTS_FILE)  # never leave a half-written checkpoint behind
    cfg.save(d / CONFIG_FILE)
    return d


def load(directory: str | Path, device: str | torch.device = "cpu") -> tuple[EARTalking, ModelConfig]:
    """Read a checkpoint directory -> (model in eval mode, cfg). Clear UserError if files are missing."""
    from eartalking.cli import UserError

    d = Path(directory)
    missing = [n for n in (CONFIG_FILE, WEIGHTS_FILE) if not (d / n).is_file()]
    if missing:
        raise UserError(f"checkpoint {d} is missing {', '.join(missing)} (expected {CONFIG_FILE} + {WEIGHTS_FILE})")
    cfg = ModelConfig.load(d / CONFIG_FILE)
    model = EARTalking(cfg)
    state = load_file(str(d / WEIGHTS_FILE), device=str(device))
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"checkpoint {d} does not match its config: missing {result.missing_keys[:5]}, "
                        f"unexpected {result.unexpected_keys[:5]}")
    return model.to(device).eval(), cfg


def load_tokenizer(directory: str | Path) -> tuple[torch.nn.Module, ModelConfig]:
    """A ``train-tokenizer`` run folder (``tokenizer.safetensors`` + ``config.json``) or a checkpoint folder
    -> (its tokenizer on the CPU in eval mode, cfg): what the diagnostics scripts measure."""
    from eartalking.model.tokenizer import Tokenizer

    d = Path(directory)
    if not (d / "tokenizer.safetensors").is_file():
        model, cfg = load(d)
        return model.tokenizer, cfg
    cfg = ModelConfig.load(d / CONFIG_FILE)
    tok = Tokenizer(cfg.tokenizer)
    tok.load_state_dict(load_file(str(d / "tokenizer.safetensors")))
    return tok.eval(), cfg


def random_model(cfg: str | ModelConfig = "test_small", seed: int = 0) -> EARTalking:
    """A random-weight model (eval mode) for tests; the same ``seed`` gives the same weights.

    Each part is drawn from its own seed (seed, seed + 1000, seed + 2000 for tokenizer, audio, decoder), so a
    change to one part's architecture leaves the others' random weights as they were."""
    cfg = preset(cfg) if isinstance(cfg, str) else cfg
    g = torch.random.get_rng_state()
    try:
        model = EARTalking(cfg, part_seeds=(seed, seed + 1000, seed + 2000))
    finally:
        torch.random.set_rng_state(g)
    return model.eval()

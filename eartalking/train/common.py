"""Shared training plumbing: device/threads, in-memory corpus, JSONL metrics, resumable state, loss plots.

Why in memory: the tiny corpus (200 clips x ~100 frames of 128 px) is ~1 GB of uint8 frames, which fits on
any training machine and makes every step a cheap random gather instead of a video decode.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from eartalking.config import CONTROL_NAMES

STATE_FILE = "trainer_state.json"
OPTIM_FILE = "optimizer.safetensors"


def pick_device(name: str = "auto", threads: int = 0) -> torch.device:
    """``auto`` = CUDA when present, else CPU (with ``threads`` intra-op threads; 0 = all cores)."""
    if threads > 0:
        torch.set_num_threads(threads)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


def use_bf16(device: torch.device, mode: str = "auto") -> bool:
    """Whether to train under bfloat16 autocast: CUDA, or a CPU with native bf16 (measured 1.46x per
    tokenizer step on an avx512_bf16 EPYC core); weights and optimizer state stay float32."""
    if mode != "auto":
        return mode == "on"
    if device.type == "cuda":
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class MemClip:
    """One clip held in memory: frames uint8 [T,S,S,3], pcm float32 [T*640], labels float32 [T, C] (NaN
    where unknown), openness float32 [T] (NaN where unknown), portrait uint8 [S,S,3]."""

    name: str
    frames: np.ndarray
    pcm: np.ndarray
    controls: np.ndarray
    openness: np.ndarray
    portrait: np.ndarray
    identity: str


def load_corpus(data: str | Path, split: str = "train", limit: int = 0, size: int | None = None) -> list[MemClip]:
    """Decode every clip of ``split`` (``train``/``eval``/``all``) of a corpus folder into memory."""
    from eartalking.data.loader import ClipDataset

    ds = ClipDataset(data, split=None if split == "all" else split, size=size)
    n = len(ds) if limit <= 0 else min(limit, len(ds))
    clips: list[MemClip] = []
    for i in tqdm(range(n), desc=f"loading {split} clips", unit="clip"):
        c = ds[i]
        T = len(c.frames)
        ctrl = np.full((T, len(CONTROL_NAMES)), np.nan, np.float32)
        opn = np.full((T,), np.nan, np.float32)
        if c.labels:
            for j, name in enumerate(CONTROL_NAMES):
                if name in c.labels:
                    ctrl[:, j] = c.labels[name][:T]
            if "openness" in c.labels:
                opn = c.labels["openness"][:T].astype(np.float32)
        clips.append(MemClip(c.name, c.frames, c.pcm.astype(np.float32), ctrl, opn, c.portrait,
                             str(c.meta.get("portrait", c.name))))
    if getattr(ds, "skipped", 0):
        print(f"warning: skipped {ds.skipped} unreadable clip(s): {getattr(ds, 'bad', {})}")
    if not clips:
        raise SystemExit(f"no readable clips in {data} (split {split})")
    return clips


def load_heldout(data: str | Path, train: list[MemClip], limit: int, size: int | None = None) -> list[MemClip]:
    """The ``eval`` split (unseen people, voices, sentences) for metrics; a corpus without one falls back to
    the last training clips, so a user's own unsplit data still trains."""
    try:
        return load_corpus(data, "eval", limit, size=size)
    except (FileNotFoundError, KeyError, SystemExit):
        return train[-4:]


def optimizer_step(opt: torch.optim.Optimizer, loss: torch.Tensor, params, clip: float = 1.0) -> None:
    """zero_grad, backward, clip the gradient norm of ``params`` to ``clip``, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, clip)
    opt.step()


def to_image_tensor(frames: np.ndarray, device: torch.device) -> torch.Tensor:
    """uint8 [...,S,S,3] -> float [...,3,S,S] in 0..1 on ``device``. Decoded clips are read-only arrays: those are
    copied (torch would warn about sharing non-writable memory, and the float result is a copy anyway)."""
    frames = np.ascontiguousarray(frames)
    t = torch.from_numpy(frames if frames.flags.writeable else frames.copy()).to(device)
    return t.movedim(-1, -3).float().div_(255.0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return 10.0 * math.log10(1.0 / max(mse, 1e-10))


class MetricsLog:
    """Append-only JSONL metrics log (one object per line) + a loss plot at the end."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, **row) -> None:
        row = {k: (float(v) if isinstance(v, (np.floating, torch.Tensor)) else v) for k, v in row.items()}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def plot(self, out: Path, keys: tuple[str, ...]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        rows = [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]
        fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.2))
        for ax, key in zip(np.atleast_1d(axes), keys, strict=True):
            pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True))
            ax.set_title(key)
            ax.set_xlabel("step")
        fig.tight_layout()
        fig.savefig(out, dpi=90)
        plt.close(fig)


def save_state(out: Path, step: int, optim: torch.optim.Optimizer, extra: dict | None = None) -> None:
    """Resumable trainer state: step counter (JSON) + optimizer tensors (safetensors)."""
    flat: dict[str, torch.Tensor] = {}
    meta = {"step": step, "param_groups": [], **(extra or {})}
    sd = optim.state_dict()
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                flat[f"{pid}.{k}"] = v.detach().cpu().contiguous()
    meta["param_groups"] = sd["param_groups"]
    save_file(flat, str(out / OPTIM_FILE))
    (out / STATE_FILE).write_text(json.dumps(meta, indent=1))


def load_state(out: Path, optim: torch.optim.Optimizer, device: torch.device) -> int:
    """Restore what ``save_state`` wrote; returns the step to resume from (0 when nothing is there)."""
    if not (out / STATE_FILE).is_file() or not (out / OPTIM_FILE).is_file():
        return 0
    meta = json.loads((out / STATE_FILE).read_text())
    flat = load_file(str(out / OPTIM_FILE), device=str(device))
    state: dict[int, dict] = {}
    for key, v in flat.items():
        pid, name = key.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    optim.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return int(meta["step"])


class Budget:
    """Stops a training loop after ``steps`` steps or ``minutes`` of wall time, whichever comes first."""

    def __init__(self, steps: int, minutes: float):
        self.steps, self.seconds, self.t0 = steps, minutes * 60.0, time.time()

    def done(self, step: int) -> bool:
        return step >= self.steps or (self.seconds > 0 and time.time() - self.t0 >= self.seconds)


def env_threads_default() -> int:
    return int(os.environ.get("OMP_NUM_THREADS", "0") or 0)


def cosine_lr(step: int, total: int, base: float, warmup: int = 200) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * p)))

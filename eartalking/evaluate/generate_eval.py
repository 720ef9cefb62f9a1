"""Evaluation helpers: drive the PyTorch ``StreamingGenerator`` over an utterance, frame by frame, as a stream.

What: ``generate(model, portrait, pcm, n_frames, controls=None, mask=None, keep=None, loop=False)`` runs the
reference streaming path one 40 ms frame at a time: audio encoder on that frame's chunk (stream
coordinates: ``left_context`` zeros before the first sample, frame t hears up to
``(t + 1 + lookahead) * 640`` samples), ``StreamingGenerator.step`` with the frame's FCIC controls, and
``render`` to a uint8 image. It returns the kept frames and each frame's wall time (audio + step + render +
copy to host: what a streaming server pays per frame). ``control_track`` builds requested blinks / yaw
sweeps as ``[T, C]`` control and mask arrays; ``utterance_labels`` turns a clip's label arrays into the
``{"frames": [...]}`` form ``measure`` correlates with; ``human_utterances`` synthesizes held-out human
prompts (the ``allison`` source) with viseme openness labels when a corpus has no such eval clips.

Why: evaluation must measure what users get, i.e. the streaming generator (the reference that the
exported graphs and the runtime are checked against), not the teacher-forced training path. Nothing
here re-implements model code: the chunking is the AudioEncoder's own contract (docs/INTERFACES.md).

Shapes: portrait uint8 [S,S,3]; pcm float32 [samples] at 16 kHz; controls/mask float32 [T, C] with
C = len(CONTROL_NAMES) in that order; frames uint8 [S,S,3].
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from eartalking.config import CONTROL_NAMES

#: requested blink shape (eyelid closure per frame, starting one frame before the peak): ~200 ms, closing
#: faster than opening, like the corpus blinks (eartalking/data/motion.py)
BLINK_PROFILE = (0.55, 1.0, 0.75, 0.4, 0.12)
BLINK_PEAK = 1  # index of the peak in BLINK_PROFILE


@dataclass
class Generated:
    """Result of ``generate``: kept frames by index, per-frame wall time (ms), frames generated."""

    frames: dict[int, np.ndarray] = field(default_factory=dict)
    ms: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_frames: int = 0

    def stack(self, indices: list[int] | None = None) -> np.ndarray:
        """Kept frames (all, or ``indices``) as uint8 [T,S,S,3]."""
        idx = sorted(self.frames) if indices is None else indices
        return np.stack([self.frames[i] for i in idx])


class StreamAudio:
    """Frame-by-frame audio chunks of an utterance in stream coordinates (optionally looped forever)."""

    def __init__(self, pcm: np.ndarray, left_context: int, samples_per_frame: int, lookahead: int,
                 loop: bool = False):
        self.pcm = np.asarray(pcm, np.float32).reshape(-1)
        if loop and self.pcm.size == 0:
            raise ValueError("cannot loop empty audio")
        self.lc, self.spf, self.la, self.loop = left_context, samples_per_frame, lookahead, loop

    def chunk(self, t: int) -> np.ndarray:
        """Samples the audio encoder needs for video frame t: float32 [left_context + samples_per_frame]."""
        j = t + self.la  # video frame t pairs with encoder frame t + lookahead
        s0 = j * self.spf - self.lc  # first sample in utterance coordinates (negative = leading zeros)
        idx = np.arange(s0, s0 + self.lc + self.spf)
        out = np.zeros(idx.size, np.float32)
        ok = idx >= 0
        if self.loop:
            out[ok] = self.pcm[idx[ok] % self.pcm.size]
        else:
            ok &= idx < self.pcm.size
            out[ok] = self.pcm[idx[ok]]
        return out


def portrait_tensor(portrait: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 [S,S,3] -> float [1,3,S,S] in 0..1."""
    return torch.from_numpy(np.array(portrait, np.uint8)).to(device).permute(2, 0, 1)[None].float() / 255.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate(model, portrait: np.ndarray, pcm: np.ndarray, n_frames: int, controls: np.ndarray | None = None,
             mask: np.ndarray | None = None, keep: Callable[[int], bool] | None = None, loop: bool = False,
             temperature: float = 0.0, seed: int = 0, progress=None) -> Generated:
    """Stream ``n_frames`` frames for ``portrait`` speaking ``pcm`` (see module docstring).

    ``keep(t)`` selects the frames returned (default: all); every frame is still rendered and copied to
    the host so the timing is the same for kept and dropped frames. ``progress``: an optional tqdm bar.
    """
    from eartalking.model.generate import StreamingGenerator

    device = model.device
    cfg = model.cfg.audio
    audio = StreamAudio(pcm, cfg.left_context, cfg.samples_per_frame, cfg.lookahead_frames, loop)
    if controls is not None:
        controls = torch.from_numpy(np.asarray(controls, np.float32)).to(device)
        mask = torch.ones_like(controls) if mask is None else torch.from_numpy(np.asarray(mask, np.float32)).to(device)
    gen = StreamingGenerator(model, portrait_tensor(portrait, device), temperature=temperature, seed=seed)
    out = Generated(ms=np.zeros(n_frames), n_frames=n_frames)
    for t in range(n_frames):
        _sync(device)
        t0 = time.perf_counter()
        chunk = torch.from_numpy(audio.chunk(t)).to(device)[None]
        tokens_a = model.audio(chunk)[:, 0]  # [1, A, D_a]
        if controls is None:
            tokens = gen.step(tokens_a)
        else:
            tokens = gen.step(tokens_a, controls[t:t + 1], mask[t:t + 1])
        img = gen.render(tokens)[0]
        frame = (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        out.ms[t] = 1000.0 * (time.perf_counter() - t0)
        if keep is None or keep(t):
            out.frames[t] = frame
        if progress is not None:
            progress.update(1)
    return out


def control_track(n_frames: int, blinks: list[int] | None = None, yaw: np.ndarray | None = None,
                  blink_elsewhere: float | None = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Requested controls -> (controls float32 [T,C], mask float32 [T,C]) in CONTROL_NAMES order.

    ``blinks``: frames where a blink should peak (BLINK_PROFILE around each); other frames get blink
    ``blink_elsewhere`` (0 = eyes open, so unrequested blinks are suppressed; None = leave absent).
    ``yaw`` float [T] degrees: requested on every frame. Controls not named stay absent (mask 0).
    """
    C = len(CONTROL_NAMES)
    ctrl = np.zeros((n_frames, C), np.float32)
    mask = np.zeros((n_frames, C), np.float32)
    if blinks is not None:
        b = CONTROL_NAMES.index("blink")
        if blink_elsewhere is not None:
            ctrl[:, b], mask[:, b] = blink_elsewhere, 1.0
        for f in blinks:
            for i, v in enumerate(BLINK_PROFILE):
                t = f - BLINK_PEAK + i
                if 0 <= t < n_frames:
                    ctrl[t, b], mask[t, b] = max(ctrl[t, b], v), 1.0
    if yaw is not None:
        y = CONTROL_NAMES.index("yaw")
        ctrl[:, y], mask[:, y] = np.asarray(yaw, np.float32)[:n_frames], 1.0
    return ctrl, mask


def utterance_labels(labels: dict[str, np.ndarray] | None, n_frames: int) -> dict | None:
    """Per-frame label arrays (loader ``Clip.labels``) -> ``{"frames": [{name: value}, ...]}`` for ``measure``."""
    if not labels:
        return None
    keys = [k for k in labels if k in ("openness", "blink", "yaw", "pitch", "roll", "expression")]
    rows = []
    for t in range(n_frames):
        rows.append({k: (float(labels[k][t]) if t < len(labels[k]) and np.isfinite(labels[k][t]) else None)
                     for k in keys})
    return {"frames": rows}


def human_utterances(assets: str | None, heldout_sentences: list[str], n: int,
                     fps: int = 25, skip: int = 0) -> list[dict]:
    """Up to ``n`` held-out prompts (longest first, after the first ``skip`` of that order; a prompt
    pocketsphinx cannot align, twice, is skipped and the next one taken) of the human ``allison`` source (needs
    the asset cache), as ``{"pcm": float32 [T*640], "labels": {"openness": float32 [T]}, "text", "voice_key"}``;
    [] when the source or its held-out prompts are not available. ``skip`` keeps a validation set apart from
    the prompts ``evaluate --human`` reports, which come from the head of the same order."""
    from eartalking.data.corpus_plan import ceil_frames, voice_key
    from eartalking.data.speech import available_sources
    from eartalking.data.visemes import viseme_track

    if not assets or n <= 0:
        return []
    src = next((s for s in available_sources(assets) if s.name == "allison"), None)
    if src is None or not hasattr(src, "prompts"):
        return []
    held = set(heldout_sentences)
    texts = sorted({text for _, text in src.prompts() if text in held}, key=lambda x: (-len(x), x))[skip:]
    out = []
    voice = src.voices()[0]
    for text in texts:
        if len(out) >= n:
            break
        utt = None
        for attempt in range(2):  # pocketsphinx fails now and then on a prompt it aligns in other runs
            try:
                utt = src.synth(text, voice)
                break
            except Exception as e:  # a prompt that cannot be read or aligned is skipped, not fatal
                if attempt:
                    print(f"evaluate: skipping human prompt {text!r} (failed twice): {type(e).__name__}: {e}")
        if utt is None:
            continue
        pcm = np.asarray(utt.pcm, np.float32)
        T = ceil_frames(len(pcm), 16000, fps)
        vis = viseme_track(utt.phones, T, fps, phone_set=getattr(utt, "phone_set", "ipa"))
        pcm = np.pad(pcm, (0, T * 640 - len(pcm)))
        out.append({"pcm": pcm, "labels": {"openness": np.asarray(vis["openness"], np.float32)}, "text": text,
                    "voice_key": voice_key("allison", voice)})
    return out

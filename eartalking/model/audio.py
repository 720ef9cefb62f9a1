"""Streaming audio encoder: raw 16 kHz PCM -> A audio tokens per video frame (the ``audio_encoder`` graph).

Everything happens inside the graph so ONNX/TensorRT take raw PCM:
  pcm [B, T] --Conv1d(fixed Hann-windowed DFT basis, stride hop, no padding)--> re/im [B, 2F, hops]
  --> power --> fixed mel matrix (buffer) --> log(x + 1e-5) --> learned per-mel affine
  --> valid (unpadded) dilated causal Conv1d stack (kernel 3, ``cfg.dilations``, residual via cropping)
  --> 1x1 projection to D_a --> group every A = 640 / hop outputs into one frame: [B, n, A, D_a].

Only valid convolutions, so the output for a frame depends on a fixed span of samples ending at that
frame's last sample: ``left_context + n * 640`` samples in -> exactly n frames out, and any split of a
stream into frame-aligned chunks (each with its ``left_context`` samples of history) gives the same
tokens as the whole stream. Lookahead is not inside the encoder: video frame t pairs with encoder frame
``t + lookahead_frames`` (see :meth:`AudioEncoder.encode_utterance`).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from eartalking.config import AudioConfig


def mel_matrix(sample_rate: int, n_fft: int, n_mels: int, fmin: float = 20.0, fmax: float | None = None) -> np.ndarray:
    """HTK-style triangular mel filterbank, float32 [n_mels, n_fft // 2 + 1] (computed here, no librosa)."""
    fmax = sample_rate / 2 if fmax is None else fmax

    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + np.asarray(f) / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10.0 ** (np.asarray(m) / 2595.0) - 1.0)

    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
    edges = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    lo, mid, hi = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    up = (bins[None] - lo) / np.maximum(mid - lo, 1e-9)
    down = (hi - bins[None]) / np.maximum(hi - mid, 1e-9)
    fb = np.maximum(0.0, np.minimum(up, down))
    fb /= np.maximum(fb.sum(axis=1, keepdims=True), 1e-9)  # each filter averages its band
    return fb.astype(np.float32)


def dft_basis(n_fft: int) -> np.ndarray:
    """Periodic-Hann-windowed real DFT basis as Conv1d weights, float32 [2F, 1, n_fft] (cos rows, then -sin).

    Scaled by 1 / sum(window) so a full-scale sine has magnitude ~0.5.
    """
    n = np.arange(n_fft)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)
    k = np.arange(n_fft // 2 + 1)[:, None]
    ang = 2 * np.pi * k * n[None] / n_fft
    basis = np.concatenate([np.cos(ang), -np.sin(ang)], axis=0) * window[None] / window.sum()
    return basis[:, None, :].astype(np.float32)


class AudioEncoder(nn.Module):
    """``forward(pcm [B, left_context + n*640]) -> audio tokens [B, n, A, D_a]`` (see module docstring)."""

    def __init__(self, cfg: AudioConfig):
        super().__init__()
        if cfg.samples_per_frame % cfg.hop:
            raise ValueError(f"hop {cfg.hop} must divide samples_per_frame {cfg.samples_per_frame}")
        self.cfg = cfg
        self.register_buffer("dft", torch.from_numpy(dft_basis(cfg.n_fft)), persistent=False)
        self.register_buffer("mel", torch.from_numpy(mel_matrix(cfg.sample_rate, cfg.n_fft, cfg.n_mels)),
                             persistent=False)
        # log-power of speech lies in about [-11.5, -1]: start the affine near zero-mean, unit-ish scale
        self.norm_scale = nn.Parameter(torch.full((cfg.n_mels, 1), 0.25))
        self.norm_bias = nn.Parameter(torch.full((cfg.n_mels, 1), 1.75))
        convs, c_in = [], cfg.n_mels
        for d in cfg.dilations:
            convs.append(nn.Conv1d(c_in, cfg.channels, kernel_size=3, dilation=d))
            c_in = cfg.channels
        self.convs = nn.ModuleList(convs)
        self.out = nn.Conv1d(cfg.channels, cfg.dim, kernel_size=1)

    def check_length(self, samples: int) -> int:
        """Number of frames for ``samples`` PCM samples; ValueError naming the rule if it does not fit."""
        lc, spf = self.cfg.left_context, self.cfg.samples_per_frame
        if samples < lc + spf or (samples - lc) % spf:
            raise ValueError(
                f"audio_encoder needs left_context + n * samples_per_frame = {lc} + n * {spf} samples (n >= 1), "
                f"got {samples}")
        return (samples - lc) // spf

    def log_mel(self, pcm: torch.Tensor) -> torch.Tensor:
        """pcm [B, T] -> normalised log-mel [B, n_mels, (T - n_fft) / hop + 1]."""
        spec = F.conv1d(pcm[:, None, :], self.dft, stride=self.cfg.hop)  # [B, 2F, hops]
        f = self.dft.shape[0] // 2
        power = spec[:, :f] ** 2 + spec[:, f:] ** 2
        mel = torch.matmul(self.mel, power)  # [B, n_mels, hops]
        return torch.log(mel + 1e-5) * self.norm_scale + self.norm_bias

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            if pcm.dim() != 2:
                raise ValueError(f"audio_encoder expects pcm [B, samples], got shape {tuple(pcm.shape)}")
            self.check_length(pcm.shape[1])
        x = self.log_mel(pcm)
        for conv, d in zip(self.convs, self.cfg.dilations, strict=True):
            y = F.silu(conv(x))
            x = y + x[:, :, 2 * d:] if y.shape[1] == x.shape[1] else y  # residual, cropped to the valid span
        y = self.out(x).transpose(1, 2)  # [B, n*A, D_a]
        return y.reshape(y.shape[0], -1, self.cfg.tokens_per_frame, self.cfg.dim)

    def encode_utterance(self, pcm: torch.Tensor, n_frames: int | None = None) -> torch.Tensor:
        """Whole-utterance helper (training, reference): pcm [B, T] at stream start -> [B, n_frames, A, D_a].

        Prefixes ``left_context`` zeros, pads the end with zeros (lookahead + partial frame) and returns
        the tokens that pair with video frames ``0..n_frames-1`` (video frame t = encoder frame
        ``t + lookahead_frames``), exactly what a streaming session computes.
        """
        cfg = self.cfg
        spf, la = cfg.samples_per_frame, cfg.lookahead_frames
        if n_frames is None:
            n_frames = math.ceil(pcm.shape[1] / spf)
        total = (n_frames + la) * spf
        pcm = pcm[:, :total]
        pcm = F.pad(pcm, (cfg.left_context, total - pcm.shape[1]))
        return self.forward(pcm)[:, la:la + n_frames]

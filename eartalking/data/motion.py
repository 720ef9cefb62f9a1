"""Natural random motion for one corpus clip: blinks, head pose and expression, frame by frame.

What: ``sample_motion(n_frames, rng, fps=25, accents=None)`` returns float32 arrays [n_frames] for
``yaw``, ``pitch``, ``roll`` (degrees), ``blink`` (0 open .. 1 closed) and ``expression`` (0 neutral ..
1 full smile), each inside ``eartalking.config.CONTROL_RANGES``. Everything is drawn from the numpy
``Generator`` given, so a clip's motion is a pure function of its seed.

Why: the step decoder learns FCIC controls from these labels, so over the corpus they must cover the whole
range that inference will ask for (turns to +-30 deg yaw), while each clip still looks like a person:
  * blinks: a Poisson process (mean interval drawn per clip in 2..6 s, with a 0.4 s refractory gap),
    each 100..250 ms, closing faster than opening (about 1/3 of the time closing);
  * head pose: a per-clip resting pose, slow Ornstein-Uhlenbeck drift around it, and occasional turns
    (smooth cosine ramps of 0.4..1.0 s) to targets drawn partly from the full range;
  * expression: slow smile episodes (ramp up, hold, ramp down), none in some clips;
  * optional speech-linked micro-nods: a small downward pitch pulse at given accent times (seconds).
"""

from __future__ import annotations

import numpy as np

from eartalking.config import CONTROL_RANGES

#: Per-axis OU drift: (stationary std in degrees, mean-reversion time constant in seconds).
_OU = {"yaw": (3.0, 1.2), "pitch": (2.0, 1.0), "roll": (1.5, 1.5)}
#: Fraction of turn targets / resting poses drawn from the full range (the rest from the central 40%).
_WIDE = 0.25


def _ramp(n: int) -> np.ndarray:
    """Smooth 0 -> 1 cosine ramp of n samples, shape [n]."""
    if n <= 1:
        return np.ones(max(n, 0), np.float64)
    return 0.5 - 0.5 * np.cos(np.linspace(0.0, np.pi, n))


def _poisson_times(rng: np.random.Generator, duration: float, mean_gap: float, min_gap: float,
                   first: float = 0.0) -> list[float]:
    """Event times in [0, duration) with exponential gaps (mean ``mean_gap``) no shorter than ``min_gap``."""
    times: list[float] = []
    t = first + rng.exponential(mean_gap) * rng.uniform(0.2, 1.0)  # the clip starts mid-way through a gap
    while t < duration:
        times.append(t)
        t += max(min_gap, rng.exponential(mean_gap))
    return times


def blinks(n_frames: int, rng: np.random.Generator, fps: float = 25.0) -> np.ndarray:
    """Eyelid closure per frame, float [n_frames] in 0..1 (1 = closed).

    Each blink closes over ~1/3 of its 100..250 ms and reopens over the rest; amplitude 0.85..1.
    """
    out = np.zeros(n_frames, np.float64)
    duration = n_frames / fps
    mean_gap = rng.uniform(2.0, 6.0)
    t_frames = np.arange(n_frames) / fps
    for t0 in _poisson_times(rng, duration, mean_gap, min_gap=0.4):
        length = rng.uniform(0.10, 0.25)
        close = length * rng.uniform(0.28, 0.4)
        amp = rng.uniform(0.85, 1.0)
        rel = t_frames - t0
        up = (rel >= 0) & (rel < close)
        down = (rel >= close) & (rel < length)
        val = np.zeros(n_frames)
        val[up] = np.sin(0.5 * np.pi * rel[up] / close)
        val[down] = 0.5 + 0.5 * np.cos(np.pi * (rel[down] - close) / (length - close))
        # a blink shorter than a frame still shows: the frame nearest the peak gets the closure
        if not (up | down).any() and 0 <= int(round((t0 + close) * fps)) < n_frames:
            val[int(round((t0 + close) * fps))] = 1.0
        out = np.maximum(out, amp * val)
    return out


def _draw_pose(rng: np.random.Generator, name: str, centre_frac: float = 0.4) -> float:
    lo, hi = CONTROL_RANGES[name]
    if rng.random() < _WIDE:
        return float(rng.uniform(lo, hi))
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo) * centre_frac
    return float(rng.uniform(mid - half, mid + half))


def head_pose(n_frames: int, rng: np.random.Generator, fps: float = 25.0) -> dict[str, np.ndarray]:
    """Yaw, pitch, roll in degrees, each float [n_frames], clipped to CONTROL_RANGES."""
    dt = 1.0 / fps
    duration = n_frames / fps
    out: dict[str, np.ndarray] = {}
    # shared turn times (people move the head as a whole); each axis gets its own target
    turn_times = _poisson_times(rng, duration, mean_gap=rng.uniform(2.5, 7.0), min_gap=1.0)
    turns = [(t, int(rng.uniform(0.4, 1.0) * fps)) for t in turn_times]
    for name, (std, tau) in _OU.items():
        lo, hi = CONTROL_RANGES[name]
        # resting pose: mostly near the centre, sometimes anywhere (so the whole range is seen at rest too)
        target = np.full(n_frames, _draw_pose(rng, name, centre_frac=0.3))
        for t0, n_ramp in turns:
            i0 = int(t0 * fps)
            new = _draw_pose(rng, name) if rng.random() < 0.8 else target[i0]
            seg = target[i0:].copy()
            ramp = _ramp(max(n_ramp, 2))[: len(seg)]  # truncated at the clip end, never a jump
            old = seg[0]
            seg[: len(ramp)] = old + (new - old) * ramp
            seg[len(ramp):] = new
            target[i0:] = seg
        # OU drift around the target: x' = -x/tau + sigma*sqrt(2/tau)*dW (stationary std = sigma)
        a = np.exp(-dt / tau)
        noise = rng.standard_normal(n_frames) * std * np.sqrt(1.0 - a * a)
        drift = np.empty(n_frames)
        x = rng.standard_normal() * std
        for i in range(n_frames):
            x = a * x + noise[i]
            drift[i] = x
        out[name] = np.clip(target + drift, lo, hi)
    return out


def expression(n_frames: int, rng: np.random.Generator, fps: float = 25.0) -> np.ndarray:
    """Smile intensity per frame, float [n_frames] in 0..1: slow episodes, none in ~30% of clips."""
    out = np.zeros(n_frames, np.float64)
    if rng.random() < 0.3:
        return out
    base = rng.uniform(0.0, 0.15) if rng.random() < 0.5 else 0.0
    out[:] = base
    duration = n_frames / fps
    for t0 in _poisson_times(rng, duration, mean_gap=rng.uniform(3.0, 8.0), min_gap=1.5, first=-2.0):
        t0 = max(t0, 0.0)
        up, hold, down = (int(rng.uniform(a, b) * fps) for a, b in ((0.3, 0.8), (0.5, 3.0), (0.4, 1.0)))
        amp = rng.uniform(0.3, 1.0)
        env = np.concatenate([_ramp(max(up, 2)), np.ones(hold), _ramp(max(down, 2))[::-1]])
        i0 = int(t0 * fps)
        seg = env[: max(0, n_frames - i0)]
        out[i0:i0 + len(seg)] = np.maximum(out[i0:i0 + len(seg)], base + (amp - base) * seg)
    return np.clip(out, 0.0, 1.0)


def accent_times(openness: np.ndarray, rng: np.random.Generator, fps: float = 25.0,
                 min_gap_s: float = 0.5) -> list[float]:
    """Guess stressed syllables from a viseme openness track [T]: local maxima in the top 30%,
    at least ``min_gap_s`` apart, about half of them kept (people do not nod at every stress)."""
    if len(openness) < 3:
        return []
    thr = np.quantile(openness, 0.7)
    peaks = [i for i in range(1, len(openness) - 1)
             if openness[i] >= thr and openness[i] > 0.2
             and openness[i] >= openness[i - 1] and openness[i] > openness[i + 1]]
    out: list[float] = []
    for i in peaks:
        if (not out or i / fps - out[-1] >= min_gap_s) and rng.random() < 0.5:
            out.append(i / fps)
    return out


def nods(n_frames: int, times: list[float], rng: np.random.Generator, fps: float = 25.0) -> np.ndarray:
    """Small downward pitch pulses (degrees, negative = down), float [n_frames]: 1..2.5 deg, ~0.3 s."""
    out = np.zeros(n_frames)
    t = np.arange(n_frames) / fps
    for t0 in times:
        width = rng.uniform(0.12, 0.2)
        out -= rng.uniform(1.0, 2.5) * np.exp(-0.5 * ((t - t0) / width) ** 2)
    return out


def sample_motion(n_frames: int, rng: np.random.Generator, fps: float = 25.0,
                  openness: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """All controls for one clip: dict name -> float32 [n_frames] for every name in CONTROL_RANGES.

    ``openness`` (the clip's viseme openness track, [n_frames]) enables speech-linked micro-nods.
    """
    if n_frames <= 0:
        raise ValueError(f"n_frames must be positive, got {n_frames}")
    pose = head_pose(n_frames, rng, fps)
    if openness is not None:
        pose["pitch"] = pose["pitch"] + nods(n_frames, accent_times(np.asarray(openness), rng, fps), rng, fps)
    out = {**pose, "blink": blinks(n_frames, rng, fps), "expression": expression(n_frames, rng, fps)}
    return {k: np.clip(out[k], *CONTROL_RANGES[k]).astype(np.float32) for k in CONTROL_RANGES}

"""Pure-numpy signal math for ``eartalking measure``: face geometry from 68 landmarks, audio envelope,
correlation with lag, blink events. No dlib, no video I/O here, so every function is cheap to test.

Conventions (image coordinates: x to the right, y down; the subject faces the camera):
- ``mouth_openness`` = inner-lip gap |p62 - p66| / mouth width |p60 - p64| (0-based dlib 68-point indices).
- ``eye_openness`` = eye aspect ratio (|p1-p5| + |p2-p4|) / (2 |p0-p3|) per eye, mean of both eyes.
- ``eye_signal`` (what blinks are detected on) = geometric mean of the eye aspect ratio and two appearance
  measures of a box around each eye (width 1.2 and height 0.7 eye-corner distances): its dark contrast
  (median - 10th percentile luminance) / median and its luminance standard deviation, each the mean of both
  eyes. A shut eye is skin: no dark iris or lash line, little contrast. At 128 px dlib's eyelid landmarks
  hardly close (the aspect ratio dips to a median 0.69 of its baseline at a labelled blink), the appearance
  does; calibrated with scripts/blink_calibration.py (numbers at ``BLINK_DROP``).
- ``yaw`` (degrees, approximate): positive = the face turns to its OWN left, i.e. the nose tip moves
  towards the image's right. From the nose tip's horizontal offset from the face midline (mean of the
  midpoints of symmetric jaw and eye-corner pairs), relative to the jaw half-width, after removing roll.
- ``pitch`` (degrees, approximate): positive = chin up (face looks up). From where the nose tip sits between
  the eye line and the top of the upper lip (p51; the jaw does not move either), with the tip modelled in
  front of the lip (PITCH_TIP, PITCH_LIP: drop below the eye line and depth in front of the eyes, in
  interocular units). Flat perspective warps of a photo move it the same way (top edge away = chin up).
- ``roll`` (degrees): angle of the line from the image-left eye centre to the image-right eye centre
  (centres = midpoints of the eye corners);
  positive = clockwise on screen (the head tilts towards its own left shoulder).
Pose angles come from a fixed anthropometric model (no solvePnP): trust their sign and their variation
over time (correlation with labels), not their absolute value to a few degrees.
"""

from __future__ import annotations

import math

import numpy as np

#: (nose_x - midline_x) / jaw half-width = YAW_GAIN * tan(yaw): nose-tip depth over face half-width.
YAW_GAIN = 0.9
#: (drop below the eye line, depth in front of the eye centres) / interocular distance, frontal face:
#: nose tip and top of the upper lip (anthropometric; tip/lip = 0.57-0.64 on five frontal photos).
PITCH_TIP = (0.6, 0.5)
PITCH_LIP = (0.95, 0.3)
_SYMMETRIC_PAIRS = ((0, 16), (1, 15), (2, 14), (36, 45), (39, 42))


def mouth_openness(p: np.ndarray) -> float:
    """Inner-lip gap over mouth width from landmarks ``p`` float [68, 2]."""
    width = np.linalg.norm(p[60] - p[64])
    return float(np.linalg.norm(p[62] - p[66]) / max(width, 1e-6))


def eye_openness(p: np.ndarray) -> float:
    """Mean eye aspect ratio of both eyes from landmarks ``p`` float [68, 2]."""
    ears = []
    for s in (36, 42):
        e = p[s : s + 6]
        ears.append(
            (np.linalg.norm(e[1] - e[5]) + np.linalg.norm(e[2] - e[4])) / (2 * max(np.linalg.norm(e[0] - e[3]), 1e-6))
        )
    return float(np.mean(ears))


#: detect_blinks threshold for ``eye_signal``: a dip below this fraction of the running median. On 200 corpus
#: videos (scripts/blink_calibration.py) it finds most labelled blinks at a few false events per minute, where
#: the eye aspect ratio alone found 31-41% at 0.65 (see the model card for the measured table).
BLINK_DROP = 0.86


def eye_appearance(img: np.ndarray, p: np.ndarray) -> tuple[float, float]:
    """(dark contrast, luminance std) of the boxes around both eyes, averaged; ``img`` RGB [H, W, 3] (uint8 or
    float 0..255; only the two boxes are converted to luminance), ``p`` float [68, 2] landmarks. NaN when a box
    falls outside the image."""
    con, std = [], []
    for s in (36, 42):
        e = p[s : s + 6]
        w = float(np.linalg.norm(e[3] - e[0]))
        cx, cy = (e[0] + e[3]) / 2
        x0, x1 = max(0, int(round(cx - 0.6 * w))), int(round(cx + 0.6 * w)) + 1
        y0, y1 = max(0, int(round(cy - 0.35 * w))), int(round(cy + 0.35 * w)) + 1
        box = luminance(img[y0:y1, x0:x1])
        if box.size < 4:
            return float("nan"), float("nan")
        med = float(np.median(box))
        con.append((med - float(np.percentile(box, 10))) / (med + 1e-3))
        std.append(float(box.std()))
    return float(np.mean(con)), float(np.mean(std))


def eye_signal(ear: float, contrast: float, std: float) -> float:
    """Eye openness from shape and appearance: (ear * contrast * std) ** (1/3) (see the module conventions)."""
    v = ear * contrast * std
    return float(v ** (1.0 / 3.0)) if np.isfinite(v) and v > 0 else float("nan")


def luminance(img: np.ndarray) -> np.ndarray:
    """uint8/float RGB [..., 3] -> float32 luminance [...] (Rec. 601 weights)."""
    f = img[..., :3].astype(np.float32)
    return f[..., 0] * 0.299 + f[..., 1] * 0.587 + f[..., 2] * 0.114


def head_pose(p: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from landmarks ``p`` float [68, 2]; see the module conventions."""
    left_eye, right_eye = (p[36] + p[39]) / 2, (p[42] + p[45]) / 2  # eye corners: blinks do not move them
    d = right_eye - left_eye
    roll = math.atan2(d[1], d[0])
    c, s = math.cos(-roll), math.sin(-roll)
    q = (p - (left_eye + right_eye) / 2) @ np.array([[c, s], [-s, c]])  # de-rolled, eye centre at origin
    mid_x = np.mean([(q[a, 0] + q[b, 0]) / 2 for a, b in _SYMMETRIC_PAIRS])
    half_w = max(abs(q[16, 0] - q[0, 0]) / 2, 1e-6)
    yaw = math.atan((q[30, 0] - mid_x) / half_w / YAW_GAIN)
    # tip/lip = (h_t cos - d_t sin) / (h_l cos - d_l sin), solved for tan(pitch)
    ratio = q[30, 1] / max(q[51, 1], 1e-6)
    (h_t, d_t), (h_l, d_l) = PITCH_TIP, PITCH_LIP
    pitch = math.atan2(h_t - h_l * ratio, d_t - d_l * ratio)
    return math.degrees(yaw), math.degrees(pitch), math.degrees(roll)


def rms_envelope(pcm: np.ndarray, sr: int, fps: float, n_frames: int) -> np.ndarray:
    """RMS of ``pcm`` float [samples] over each video frame's interval [t/fps, (t+1)/fps) -> float [n_frames].

    Frames past the end of the audio get 0.
    """
    out = np.zeros(n_frames, np.float64)
    x = np.asarray(pcm, np.float64)
    for t in range(n_frames):
        a, b = int(round(t * sr / fps)), int(round((t + 1) * sr / fps))
        seg = x[a:b]
        if seg.size:
            out[t] = math.sqrt(float(np.mean(seg * seg)))
    return out


def pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson r over the frames where both are finite; None if fewer than 3 or either is constant."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3:
        return None
    a, b = a[ok] - a[ok].mean(), b[ok] - b[ok].mean()
    den = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return None if den < 1e-12 else float((a * b).sum() / den)


def lagged_pearson(
    x: np.ndarray, y: np.ndarray, max_lag: int = 3
) -> tuple[float | None, int | None, dict[int, float | None]]:
    """Best r between ``x[t]`` and ``y[t + lag]`` for lag in [-max_lag, max_lag].

    Positive lag = ``x`` leads ``y`` (e.g. the mouth opens ``lag`` frames before the sound gets loud).
    Returns (best r, its lag, r for every lag).
    """
    n = min(len(x), len(y))
    by_lag: dict[int, float | None] = {}
    for lag in range(-max_lag, max_lag + 1):
        if lag >= 0:
            by_lag[lag] = pearson(x[: n - lag], y[lag:n])
        else:
            by_lag[lag] = pearson(x[-lag:n], y[: n + lag])
    valid = {k: v for k, v in by_lag.items() if v is not None}
    if not valid:
        return None, None, by_lag
    best = max(valid, key=lambda k: (valid[k], -abs(k)))
    return valid[best], best, by_lag


def detect_blinks(eye: np.ndarray, fps: float, drop: float = BLINK_DROP, max_seconds: float = 0.6) -> list[int]:
    """Blink events in eye openness ``eye`` float [T] (NaN = no face; ``eye_signal`` in ``measure``) -> frame
    index of each event's minimum.

    A blink is a run of frames whose eye openness falls below ``drop`` x the local baseline (running
    median over ~2 s), lasting at most ``max_seconds``; runs split by a single frame are merged.
    """
    e = np.asarray(eye, np.float64)
    T = len(e)
    if T == 0 or not np.isfinite(e).any():
        return []
    half = max(1, int(round(fps)))
    base = np.array([_nanmedian(e[max(0, t - half) : t + half + 1]) for t in range(T)])
    low = np.isfinite(e) & np.isfinite(base) & (e < drop * base)
    runs: list[list[int]] = []
    for t in np.flatnonzero(low):
        if runs and t - runs[-1][-1] <= 2:
            runs[-1].append(int(t))
        else:
            runs.append([int(t)])
    events = []
    for r in runs:
        if r[-1] - r[0] + 1 <= max(1, max_seconds * fps):
            seg = e[r[0] : r[-1] + 1]
            events.append(r[0] + int(np.nanargmin(seg)))
    return events


def _nanmedian(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(np.median(x)) if x.size else float("nan")

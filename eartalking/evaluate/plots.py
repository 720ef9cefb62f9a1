"""Plots of ``eartalking measure`` results (matplotlib, Agg backend: no display needed).

``plot_measurements(result, path)`` draws four panels over time (seconds): mouth openness vs the audio
RMS envelope (and the labelled openness when labels were given), eye openness with detected blinks,
head yaw/pitch/roll (dashed: labels), and the identity distance with the same-person line at 0.6.
Frames without a face are shaded grey in every panel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _arr(v: list[float | None] | None, n: int) -> np.ndarray:
    if v is None:
        return np.full(n, np.nan)
    return np.array([np.nan if x is None else x for x in v], np.float64)


def _scaled(v: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``v`` rescaled to ``like``'s finite range, so an envelope can share the openness axis."""
    a, b = v[np.isfinite(v)], like[np.isfinite(like)]
    if a.size == 0 or b.size == 0 or np.ptp(a) < 1e-12:
        return v
    return (v - a.min()) / np.ptp(a) * max(np.ptp(b), 1e-6) + b.min()


def plot_measurements(result: dict[str, Any], path: str | Path) -> Path:
    """Write the curves of a ``measure_video``/``measure_frames`` result to a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c, s = result["curves"], result["summary"]
    n = int(result["frames"])
    fps = float(result["fps"]) or 25.0
    t = np.arange(n) / fps
    labels = (result.get("labels") or {}).get("curves", {})
    fig, ax = plt.subplots(4, 1, figsize=(11, 9), sharex=True)
    mouth = _arr(c["mouth_openness"], n)
    ax[0].plot(t, mouth, label="mouth openness", color="C0")
    if result["audio"]["present"]:
        ax[0].plot(t, _scaled(_arr(c["audio_envelope"], n), mouth), label="audio RMS (rescaled)", color="C1", alpha=0.7)
    if "openness" in labels:
        ax[0].plot(
            t[: len(labels["openness"])],
            _scaled(_arr(labels["openness"], len(labels["openness"])), mouth),
            "--",
            label="label openness (rescaled)",
            color="C2",
        )
    r = s.get("lipsync_r")
    why = "no audio" if not result["audio"]["present"] else "undefined (a constant signal or too few faces)"
    ax[0].set_title(f"lip-sync r = {r:.3f} at lag {s['lipsync_lag_frames']}" if r is not None else f"lip-sync: {why}")
    eye = _arr(c["eye_signal"], n)
    ax[1].plot(t, eye, label="eye signal (EAR x eye-box contrast x std)^(1/3)", color="C0")
    blinks = s.get("blink_frames") or []
    if blinks:
        ax[1].plot(np.array(blinks) / fps, eye[blinks], "v", color="C3", label=f"blinks ({len(blinks)})")
    for i, k in enumerate(("yaw", "pitch", "roll")):
        ax[2].plot(t, _arr(c[k], n), label=k, color=f"C{i}")
        if k in labels:
            ax[2].plot(
                t[: len(labels[k])], _arr(labels[k], len(labels[k])), "--", color=f"C{i}", alpha=0.6, label=f"{k} label"
            )
    ax[2].set_ylabel("degrees")
    ident = _arr(c["identity_distance"], n)
    ok = np.isfinite(ident)
    ax[3].plot(t[ok], ident[ok], ".-", label=f"identity distance ({result['identity']['reference']})", color="C0")
    ax[3].axhline(0.6, color="C3", ls=":", label="same person < 0.6")
    ax[3].set_xlabel("seconds")
    no_face = result.get("no_face_indices") or []
    for a in ax:
        for i in no_face:
            a.axvspan(i / fps, (i + 1) / fps, color="0.85", lw=0)
        a.legend(loc="upper right", fontsize=7)
        a.grid(alpha=0.3)
    src = result.get("source", {}).get("path") or "frames"
    fig.suptitle(f"{Path(str(src)).name}: {n} frames @ {fps:.2f} fps, no face in {len(no_face)}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path

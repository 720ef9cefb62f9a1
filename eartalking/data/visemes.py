"""Phones -> visemes (mouth openness, width, rounding in 0..1) and per-frame viseme tracks.

What: ``viseme(phone, phone_set)`` gives the (start, end) mouth targets of one phone from any of
our sources: espeak-ng IPA, Kokoro IPA (same table after ``speech_kokoro`` maps its symbols back),
and CMU/ARPAbet (pocketsphinx, flite; digits = stress). Diphthongs and multi-symbol IPA phones move
from their first element's target to their last. ``viseme_track(phones, n_frames, fps)`` renders
targets on a 1 ms grid, smooths them with a dominance-weighted Gaussian (coarticulation: closures
such as /p b m/ keep their shape, /h/ takes its neighbours'), then averages each video frame.

Why: the corpus drives the face warp's jaw/lips from ``openness`` (the training label) and records
the phone under each frame; smoothing prevents frame-to-frame popping. Silence = closed mouth.

Shapes: ``phones`` list of (start_s, end_s, phone); returns ``{"openness", "width", "rounding"}``
float32 [n_frames] and ``"phoneme"`` an array of str [n_frames] (``"_"`` for silence).
"""

from __future__ import annotations

import unicodedata

import numpy as np

SILENCE = "_"
CHANNELS = ("openness", "width", "rounding")
# (openness, width, rounding, dominance)
_V = {
    # vowels, IPA
    "ɑ": (1.0, 0.5, 0.1, 1.0), "a": (0.95, 0.55, 0.05, 1.0), "æ": (0.85, 0.7, 0.0, 1.0),
    "ɒ": (0.9, 0.45, 0.35, 1.0), "ʌ": (0.7, 0.5, 0.1, 1.0), "ɐ": (0.6, 0.5, 0.1, 1.0),
    "ɔ": (0.7, 0.35, 0.6, 1.0), "ɛ": (0.6, 0.65, 0.0, 1.0), "e": (0.45, 0.7, 0.0, 1.0),
    "ɜ": (0.5, 0.5, 0.15, 1.0), "ə": (0.4, 0.5, 0.1, 0.6), "ɚ": (0.4, 0.45, 0.3, 0.8),
    "ɪ": (0.35, 0.65, 0.0, 0.8), "i": (0.25, 0.85, 0.0, 1.0), "ᵻ": (0.3, 0.6, 0.0, 0.7),
    "ɨ": (0.3, 0.6, 0.0, 0.7), "o": (0.5, 0.3, 0.8, 1.0), "ʊ": (0.3, 0.35, 0.7, 0.8),
    "u": (0.25, 0.2, 0.95, 1.0), "ɯ": (0.25, 0.5, 0.1, 0.8), "y": (0.25, 0.25, 0.9, 1.0),
    "ø": (0.4, 0.3, 0.8, 1.0), "œ": (0.55, 0.35, 0.7, 1.0), "ᵊ": (0.35, 0.5, 0.1, 0.5),
    "ɤ": (0.45, 0.45, 0.2, 1.0), "ʉ": (0.25, 0.3, 0.8, 1.0), "ɵ": (0.4, 0.35, 0.6, 1.0),
    "ɘ": (0.4, 0.5, 0.1, 1.0), "ɞ": (0.5, 0.4, 0.5, 1.0),
    # consonants, IPA
    "p": (0.0, 0.45, 0.2, 3.0), "b": (0.0, 0.45, 0.2, 3.0), "m": (0.0, 0.45, 0.2, 3.0),
    "f": (0.08, 0.55, 0.1, 2.0), "v": (0.08, 0.55, 0.1, 2.0), "θ": (0.18, 0.55, 0.05, 1.5),
    "ð": (0.18, 0.55, 0.05, 1.5), "t": (0.2, 0.55, 0.05, 1.0), "d": (0.2, 0.55, 0.05, 1.0),
    "n": (0.2, 0.55, 0.05, 0.8), "l": (0.25, 0.55, 0.05, 0.8), "ɾ": (0.25, 0.55, 0.05, 0.7),
    "s": (0.12, 0.65, 0.0, 1.5), "z": (0.12, 0.65, 0.0, 1.5), "ʃ": (0.2, 0.35, 0.75, 1.5),
    "ʒ": (0.2, 0.35, 0.75, 1.5), "k": (0.3, 0.5, 0.1, 0.6), "ɡ": (0.3, 0.5, 0.1, 0.6),
    "g": (0.3, 0.5, 0.1, 0.6), "ŋ": (0.3, 0.5, 0.1, 0.6), "x": (0.3, 0.5, 0.1, 0.6),
    "h": (0.4, 0.5, 0.1, 0.2), "ɹ": (0.25, 0.4, 0.5, 1.0), "r": (0.25, 0.4, 0.5, 1.0),
    "ɻ": (0.25, 0.4, 0.5, 1.0), "w": (0.15, 0.2, 0.9, 1.5), "j": (0.25, 0.75, 0.0, 0.8),
    "ʔ": (0.1, 0.5, 0.1, 0.5), "ɬ": (0.25, 0.55, 0.05, 0.8), "ç": (0.25, 0.7, 0.0, 0.8),
    "ʍ": (0.15, 0.2, 0.9, 1.5), "ɫ": (0.25, 0.55, 0.05, 0.8), "ʤ": (0.2, 0.35, 0.75, 1.5),
    "ʧ": (0.2, 0.35, 0.75, 1.5),
    SILENCE: (0.0, 0.45, 0.15, 1.0),
}
# Kokoro's single-letter diphthong symbols (in case raw Kokoro symbols reach us).
_KOKORO = {"I": "aɪ", "W": "aʊ", "A": "eɪ", "Y": "ɔɪ", "O": "oʊ", "Q": "əʊ"}
# CMU / ARPAbet (pocketsphinx, flite) -> IPA
_CMU = {
    "aa": "ɑ", "ae": "æ", "ah": "ʌ", "ax": "ə", "axr": "ɚ", "ao": "ɔ", "aw": "aʊ", "ay": "aɪ", "eh": "ɛ",
    "er": "ɚ", "ey": "eɪ", "ih": "ɪ", "ix": "ɨ", "iy": "i", "ow": "oʊ", "oy": "ɔɪ", "uh": "ʊ", "uw": "u",
    "ux": "u", "b": "b", "ch": "tʃ", "d": "d", "dh": "ð", "dx": "ɾ", "el": "əl", "em": "əm", "en": "ən",
    "f": "f", "g": "ɡ", "hh": "h", "h": "h", "jh": "dʒ", "k": "k", "l": "l", "m": "m", "n": "n", "ng": "ŋ",
    "nx": "ŋ", "p": "p", "r": "ɹ", "s": "s", "sh": "ʃ", "t": "t", "th": "θ", "v": "v", "w": "w",
    "wh": "ʍ", "y": "j", "z": "z", "zh": "ʒ", "pau": SILENCE, "sil": SILENCE, "h#": SILENCE, "q": "ʔ",
}
_SILENCES = {SILENCE, "", " ", "|", "||", "sil", "pau", "sp", "spn", "nsn"}
_IGNORE = set("ˈˌːˑ^͡‿ʰʲʷ˞-.!?,;:")


def _elements(phone: str, phone_set: str) -> list[str] | None:
    """The table keys a phone consists of (first..last), or None if nothing is recognised."""
    p = phone.strip()
    if p.lower() in _SILENCES or p.startswith("_"):
        return [SILENCE]
    if phone_set == "cmu":
        key = p.lower().rstrip("012")
        if key not in _CMU:
            return None
        return [c for c in _CMU[key] if c in _V] or [SILENCE]
    if p in _KOKORO:
        p = _KOKORO[p]
    if p == "ʲ":  # espeak (en-gb-scotland) emits palatalisation as its own event
        p = "j"
    chars = [c for c in unicodedata.normalize("NFD", p) if unicodedata.category(c) != "Mn" and c not in _IGNORE]
    els = [c for c in chars if c in _V]
    if not els or len(els) < len(chars):
        return None
    return els


def known(phone: str, phone_set: str = "ipa") -> bool:
    """True if ``phone`` maps onto visemes (used by tests: every emitted phone must be known)."""
    return _elements(phone, phone_set) is not None


def viseme(phone: str, phone_set: str = "ipa") -> tuple[np.ndarray, np.ndarray, float]:
    """(start target [3], end target [3], dominance) of a phone; unknown phones give a neutral half-open mouth."""
    els = _elements(phone, phone_set)
    if els is None:
        neutral = np.array([0.3, 0.5, 0.1])
        return neutral, neutral, 0.5
    a, b = np.array(_V[els[0]][:3]), np.array(_V[els[-1]][:3])
    dom = max(_V[e][3] for e in els)
    return a, b, dom


def viseme_track(phones: list[tuple[float, float, str]], n_frames: int, fps: float = 25.0,
                 phone_set: str = "ipa", sigma_s: float = 0.03) -> dict[str, np.ndarray]:
    """Per-frame visemes for ``n_frames`` video frames at ``fps`` (see module docstring for shapes).

    Time outside every phone counts as silence. ``sigma_s`` is the coarticulation smoothing width.
    """
    res = 1000  # 1 ms grid
    n = max(int(np.ceil(n_frames / fps * res)), 1)
    vals = np.tile(np.array(_V[SILENCE][:3])[:, None], (1, n))
    dom = np.full(n, _V[SILENCE][3])
    labels = np.full(n_frames, SILENCE, dtype=object)
    for s, e, p in phones:
        i0, i1 = int(round(s * res)), int(round(e * res))
        i0, i1 = max(i0, 0), min(i1, n)
        if i1 <= i0:
            continue
        a, b, d = viseme(p, phone_set)
        w = np.linspace(0.0, 1.0, i1 - i0)[None]
        vals[:, i0:i1] = a[:, None] * (1 - w) + b[:, None] * w
        dom[i0:i1] = d
    for f in range(n_frames):  # phone under each frame centre
        t = (f + 0.5) / fps
        for s, e, p in phones:
            if s <= t < e:
                labels[f] = SILENCE if _elements(p, phone_set) == [SILENCE] else p
                break
    # dominance-weighted Gaussian smoothing (coarticulation)
    half = int(3 * sigma_s * res)
    g = np.exp(-0.5 * (np.arange(-half, half + 1) / (sigma_s * res)) ** 2)
    pad_v = np.pad(vals * dom, ((0, 0), (half, half)), mode="edge")
    pad_d = np.pad(dom, (half, half), mode="edge")
    num = np.stack([np.convolve(pad_v[c], g, mode="valid") for c in range(3)])
    den = np.convolve(pad_d, g, mode="valid")
    smooth = num / den
    # average into frames
    edges = np.round(np.arange(n_frames + 1) / fps * res).astype(int).clip(0, n)
    out: dict[str, np.ndarray] = {}
    csum = np.concatenate([np.zeros((3, 1)), np.cumsum(smooth, axis=1)], axis=1)
    lens = np.maximum(edges[1:] - edges[:-1], 1)
    for c, name in enumerate(CHANNELS):
        out[name] = ((csum[c, edges[1:]] - csum[c, edges[:-1]]) / lens).clip(0, 1).astype(np.float32)
    out["phoneme"] = labels.astype(str)
    return out

"""Read a folder of talking-face clips (ours or a real dataset) for training: ``ClipDataset`` and ``windows``.

What: ``ClipDataset(dir, names=None, split=None, size=None)`` lists ``*.mp4`` (and .mov/.mkv) in ``dir``
(or the given clip names, or the ``train``/``eval`` names of ``split.json``); ``ds[i]`` decodes one clip:
``Clip(name, frames uint8 [T,S,S,3], pcm float32 [T*640] at 16 kHz, labels dict[str, float32 [T]] | None,
portrait uint8 [S,S,3], meta dict)``. Labels come from ``clip.json`` when it exists (per-frame
``openness``, ``blink``, ``yaw``, ``pitch``, ``roll``, ``expression``, ...; phonemes go to
``meta["phonemes"]``); the portrait from ``portraits/<portrait>.png`` when present, else the clip's first
frame. Video is decoded with PyAV (any frame rate is resampled to 25 fps, audio to 16 kHz mono); without
PyAV, OpenCV reads the video and ``clip.wav`` (written by ``eartalking corpus --wav``) the audio.
``windows(clip, T, rng)`` yields aligned random windows of T frames with their PCM.

Why: one loader for our synthetic corpus and a user's real dataset (DESIGN.md §3). Audio and video are
aligned so frame t covers samples [t*640, (t+1)*640): ``pcm`` is cut or zero-padded to exactly T*640.

Robustness: a clip that cannot be opened (found while listing) or decoded (found on access), or whose video
is shorter than its labels (truncated), is skipped with a warning and counted in ``dataset.skipped``
(``dataset.bad`` maps names to reasons); ``ds[i]`` then returns the next readable clip. Counts are per
process (each DataLoader worker has its own).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eartalking.data.clipio import FPS, SAMPLE_RATE, ClipReadError, have_av, read_av, read_cv2, square_crop

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
VIDEO_EXT = (".mp4", ".mov", ".mkv")
#: labels shorter than the video by more than this many frames mean the file is truncated
TRUNCATION_SLACK = 1


@dataclass
class Clip:
    name: str
    frames: np.ndarray  # uint8 [T,S,S,3]
    pcm: np.ndarray  # float32 [T*640], 16 kHz mono
    labels: dict[str, np.ndarray] | None  # name -> float32 [T]
    portrait: np.ndarray  # uint8 [S,S,3]
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.frames)


@dataclass
class Window:
    """T aligned frames of a clip. ``pcm`` covers [start*640 - left, (start+T)*640 + right) (zeros outside
    the clip); ``valid`` bool [T] is False on frames padded past the clip's end (short clips)."""

    name: str
    start: int
    frames: np.ndarray  # uint8 [T,S,S,3]
    pcm: np.ndarray  # float32 [left + T*640 + right]
    labels: dict[str, np.ndarray] | None  # float32 [T]
    portrait: np.ndarray
    valid: np.ndarray  # bool [T]


class ClipDataset:
    """Indexable dataset of clips in one folder (see module docstring)."""

    def __init__(self, root: str | Path, names: list[str] | None = None, split: str | None = None,
                 size: int | None = None, backend: str | None = None):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such clip folder")
        self.size = size
        self.backend = backend or ("av" if have_av() else "cv2")
        if self.backend == "cv2":
            try:
                import cv2  # noqa: F401
            except ImportError as e:
                raise ImportError("ClipDataset needs PyAV (pip install av) or OpenCV (pip install "
                                  "opencv-python-headless) with --wav sidecars") from e
        if split is not None:
            sp = self.root / "split.json"
            if not sp.exists():
                raise FileNotFoundError(f"{sp} missing: cannot select split {split!r}")
            names = json.loads(sp.read_text()).get(split)
            if names is None:
                raise KeyError(f"split.json has no {split!r} list")
        if names is None:
            names = sorted(p.stem for p in self.root.iterdir() if p.suffix.lower() in VIDEO_EXT and p.is_file()
                           and not p.name.startswith("."))
        self.bad: dict[str, str] = {}
        self.names: list[str] = []
        for n in names:
            reason = self._probe(n)
            if reason:
                self._skip(n, reason)
            else:
                self.names.append(n)

    # ------------------------------------------------------------------------------ bookkeeping
    @property
    def skipped(self) -> int:
        return len(self.bad)

    def _skip(self, name: str, reason: str) -> None:
        if name not in self.bad:
            self.bad[name] = reason
            warnings.warn(f"skipping clip {name}: {reason}", stacklevel=3)

    def _video_path(self, name: str) -> Path | None:
        for ext in VIDEO_EXT:
            p = self.root / f"{name}{ext}"
            if p.exists():
                return p
        return None

    def _probe(self, name: str) -> str | None:
        """Cheap check that a clip can be opened; the reason it cannot, or None."""
        path = self._video_path(name)
        if path is None:
            return "video file missing"
        if path.stat().st_size == 0:
            return "empty file"
        if self.backend == "av":
            import av

            try:
                with av.open(str(path)) as c:
                    if not c.streams.video:
                        return "no video stream"
                    if not c.streams.audio:
                        return "no audio stream"
            except (av.error.FFmpegError, OSError, ValueError) as e:
                return f"cannot open ({type(e).__name__}: {e})"
        elif not (self.root / f"{name}.wav").exists():
            return "no PyAV here and no sidecar WAV (write the corpus with --wav)"
        return None

    # ------------------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> Clip:
        if not self.names:
            raise IndexError("ClipDataset is empty (every clip was skipped)" if self.bad else "ClipDataset is empty")
        n = len(self.names)
        i = i + n if i < 0 else i
        if not 0 <= i < n:
            raise IndexError(f"clip index {i} out of range 0..{n - 1}")
        for k in range(n):  # on a bad clip, move on to the next readable one
            name = self.names[(i + k) % n]
            if name in self.bad:
                continue
            try:
                return self.load(name)
            except ClipReadError as e:
                self._skip(name, str(e))
        raise IndexError(f"no readable clip left in {self.root} ({self.skipped} skipped)")

    def load(self, name: str) -> Clip:
        """Decode one clip by name (raises ClipReadError when it is unreadable or truncated)."""
        path = self._video_path(name)
        if path is None:
            raise ClipReadError(f"{name}: video file missing")
        meta: dict = {}
        js = self.root / f"{name}.json"
        if js.exists():
            try:
                meta = json.loads(js.read_text())
            except (OSError, ValueError) as e:
                warnings.warn(f"{js}: unreadable labels ({e}); using the clip without labels", stacklevel=2)
        if self.backend == "av":
            frames, pcm = read_av(path, FPS, self.size)
        else:
            frames, pcm = read_cv2(path, self.root / f"{name}.wav", FPS, self.size)
        labels = None
        rows = meta.get("frames") if isinstance(meta.get("frames"), list) else None
        if rows:
            if len(frames) < len(rows) - TRUNCATION_SLACK:
                raise ClipReadError(f"{name}: {len(frames)} video frames but {len(rows)} labelled (truncated?)")
            t = len(rows)
            frames = frames[:t] if len(frames) >= t else np.concatenate([frames, frames[-1:]], 0)
            keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            labels = {k: np.array([r.get(k, np.nan) for r in rows], np.float32) for k in keys}
            meta["phonemes"] = [str(r.get("phoneme", "")) for r in rows]
        t = len(frames)
        n_samples = int(meta.get("num_samples", len(pcm)))
        pcm = pcm[: min(n_samples, t * SAMPLES_PER_FRAME)]  # AAC pads its last packet: drop the padding
        pcm = np.pad(pcm, (0, t * SAMPLES_PER_FRAME - len(pcm))).astype(np.float32)
        meta.pop("frames", None)
        meta["name"] = name
        return Clip(name, frames, pcm, labels, self._portrait(meta, frames), meta)

    def _portrait(self, meta: dict, frames: np.ndarray) -> np.ndarray:
        key = meta.get("portrait")
        if key:
            p = self.root / "portraits" / f"{key}.png"
            if p.exists():
                from PIL import Image

                try:
                    with Image.open(p) as im:
                        img = np.asarray(im.convert("RGB"))
                    return square_crop(img, self.size or frames.shape[1])
                except (OSError, ValueError) as e:
                    warnings.warn(f"{p}: unreadable portrait ({e}); using the clip's first frame", stacklevel=3)
        return frames[0].copy()


def windows(clip: Clip, T: int, rng: np.random.Generator, n: int | None = None, left: int = 0,
            right: int = 0) -> Iterator[Window]:
    """Yield ``n`` (default ``max(1, len(clip) // T)``) random windows of T frames with aligned PCM.

    ``left``/``right`` add audio context in samples before/after the window (the audio encoder's left
    context and lookahead), zero-padded beyond the clip. Clips shorter than T give one window padded
    with the last frame (``valid`` marks the real frames).
    """
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    length = len(clip.frames)
    n = max(1, length // T) if n is None else n
    spf = SAMPLES_PER_FRAME
    for _ in range(n):
        start = int(rng.integers(0, length - T + 1)) if length >= T else 0
        idx = np.minimum(np.arange(start, start + T), length - 1)
        valid = np.arange(start, start + T) < length
        a0, a1 = start * spf - left, (start + T) * spf + right
        pcm = np.zeros(a1 - a0, np.float32)
        s0, s1 = max(a0, 0), min(a1, len(clip.pcm))
        if s1 > s0:
            pcm[s0 - a0:s1 - a0] = clip.pcm[s0:s1]
        labels = None if clip.labels is None else {k: v[idx] for k, v in clip.labels.items()}
        yield Window(clip.name, start, clip.frames[idx], pcm, labels, clip.portrait, valid)

"""Clip files: write and read talking-face MP4s (H.264 + AAC 16 kHz mono, 25 fps) and WAV sidecars.

What:
  ``write_mp4(path, frames uint8 [T,S,S,3], pcm float32 [n], fps=25)`` encodes with PyAV (libx264 CRF 18,
  one thread, so bytes depend only on the input), written to a temp name then renamed (never half a file).
  ``read_av(path, fps=25, size=None) -> (frames uint8 [T,H,W,3], pcm float32 [n] at 16 kHz)`` decodes any
  MP4/MOV/MKV with audio: audio is resampled to 16 kHz mono and aligned to the first video frame, video is
  resampled to ``fps`` by timestamp (nearest earlier frame) and optionally centre-cropped + resized to
  ``size`` x ``size``. ``read_cv2(path, wav_path, ...)`` is the same through OpenCV + a sidecar WAV, for
  machines without PyAV. ``write_wav`` / ``read_wav``: 16-bit PCM WAV.

Why: the corpus is written the way real datasets are (DESIGN.md §3), and the loader must read both ours
and a user's real clips. Frame t of a clip covers audio samples [t * 640, (t + 1) * 640).
"""

from __future__ import annotations

import os
import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
FPS = 25


class ClipReadError(Exception):
    """A clip could not be read (corrupt, truncated, no video or audio stream)."""


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def write_mp4(path: str | Path, frames: np.ndarray, pcm: np.ndarray, fps: int = FPS,
              sample_rate: int = SAMPLE_RATE, crf: int = 18, metadata: dict[str, str] | None = None) -> None:
    """Encode frames uint8 [T,H,W,3] (H, W even) and mono float32 PCM [n] in -1..1 into an MP4."""
    import av

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"frames must be uint8 [T,H,W,3], got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    tmp = _tmp(path)
    with av.open(str(tmp), "w", format="mp4") as c:
        for k, v in (metadata or {}).items():
            c.metadata[k] = v
        vs = c.add_stream("libx264", rate=fps)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"crf": str(crf), "preset": "veryfast", "threads": "1"}
        aus = c.add_stream("aac", rate=sample_rate)
        aus.layout = "mono"
        aus.bit_rate = 64000
        for f in frames:
            for p in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        pcm = np.clip(np.asarray(pcm, np.float32), -1.0, 1.0)
        step = 1024
        for s in range(0, len(pcm), step):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[None, s:s + step]), format="flt", layout="mono")
            af.sample_rate, af.pts = sample_rate, s
            for p in aus.encode(af):
                c.mux(p)
        for p in aus.encode():
            c.mux(p)
    tmp.replace(path)


def write_wav(path: str | Path, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write mono float32 PCM [n] in -1..1 as 16-bit WAV (temp name, then rename)."""
    path = Path(path)
    tmp = _tmp(path)
    data = (np.clip(np.asarray(pcm, np.float32), -1, 1) * 32767).round().astype("<i2")
    with wave.open(str(tmp), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(data.tobytes())
    tmp.replace(path)


def read_wav(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read a 16-bit PCM WAV -> mono float32 [n] at ``sample_rate`` (channels averaged, resampled)."""
    try:
        with wave.open(str(path), "rb") as w:
            ch, sw, sr = w.getnchannels(), w.getsampwidth(), w.getframerate()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError, OSError) as e:
        raise ClipReadError(f"{path}: unreadable WAV ({e})") from e
    if sw != 2:
        raise ClipReadError(f"{path}: only 16-bit PCM WAV is supported (sample width {sw})")
    x = np.frombuffer(raw[: len(raw) // (2 * ch) * 2 * ch], "<i2").astype(np.float32).reshape(-1, ch).mean(1)
    x /= 32768.0
    if sr != sample_rate:
        from math import gcd

        from scipy.signal import resample_poly

        g = gcd(sr, sample_rate)
        x = resample_poly(x, sample_rate // g, sr // g).astype(np.float32)
    return x


def square_crop(img: np.ndarray, size: int | None) -> np.ndarray:
    """Centre-crop to a square and resize to size x size (no-op when already that shape)."""
    if size is None or (img.shape[0] == size and img.shape[1] == size):
        return img
    from PIL import Image

    h, w = img.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    crop = Image.fromarray(img[y0:y0 + s, x0:x0 + s])
    return np.asarray(crop.resize((size, size), Image.BILINEAR))


def _pick(times: np.ndarray, fps: float, duration: float) -> np.ndarray:
    """Indices of source frames (timestamps ``times``, s) sampled at ``fps`` over ``duration`` s."""
    n = max(1, int(np.ceil(duration * fps - 1e-6)))
    want = (np.arange(n) + 0.5) / fps  # the source frame on screen mid-way through each output frame
    return np.clip(np.searchsorted(times, want, side="right") - 1, 0, len(times) - 1)


def read_av(path: str | Path, fps: int = FPS, size: int | None = None,
            sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Decode a video file with audio (see module docstring). Raises ClipReadError on any failure."""
    import av

    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise ClipReadError(f"{path}: no video stream")
            vst = c.streams.video[0]
            imgs, times = [], []
            for fr in c.decode(vst):
                imgs.append(square_crop(fr.to_ndarray(format="rgb24"), size))
                times.append(float(fr.time) if fr.time is not None else len(times) / fps)
        pcm, a_start = np.zeros(0, np.float32), None
        with av.open(str(path)) as c:
            if c.streams.audio:
                res = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
                chunks = []
                for fr in c.decode(c.streams.audio[0]):
                    if a_start is None and fr.time is not None:
                        a_start = float(fr.time)
                    chunks.extend(o.to_ndarray().reshape(-1) for o in res.resample(fr))
                chunks.extend(o.to_ndarray().reshape(-1) for o in res.resample(None))
                if chunks:
                    pcm = np.concatenate(chunks).astype(np.float32)
    except ClipReadError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as e:
        raise ClipReadError(f"{path}: {type(e).__name__}: {e}") from e
    if not imgs:
        raise ClipReadError(f"{path}: no decodable video frames")
    t = np.asarray(times, np.float64)
    t0 = t[0]
    t -= t0
    # align audio to the first video frame: pad when audio starts later, trim when earlier
    shift = int(round(((a_start if a_start is not None else t0) - t0) * sample_rate))
    pcm = np.concatenate([np.zeros(shift, np.float32), pcm]) if shift > 0 else pcm[-shift:]
    frames = np.stack(imgs)
    src_fps = (len(t) - 1) / t[-1] if len(t) > 1 and t[-1] > 0 else fps
    if abs(src_fps - fps) > 0.01 * fps:  # resample video to the model's frame rate
        frames = frames[_pick(t, fps, len(t) / src_fps)]
    return frames, pcm


def read_cv2(path: str | Path, wav_path: str | Path, fps: int = FPS, size: int | None = None,
             sample_rate: int = SAMPLE_RATE) -> tuple[np.ndarray, np.ndarray]:
    """Decode video with OpenCV and audio from a sidecar WAV (for machines without PyAV)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ClipReadError(f"{path}: OpenCV cannot open it")
    src_fps = cap.get(cv2.CAP_PROP_FPS) or fps
    imgs = []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        imgs.append(square_crop(np.ascontiguousarray(bgr[:, :, ::-1]), size))
    cap.release()
    if not imgs:
        raise ClipReadError(f"{path}: no decodable video frames")
    if not Path(wav_path).exists():
        raise ClipReadError(f"{path}: PyAV is not installed and the sidecar {Path(wav_path).name} is missing")
    frames = np.stack(imgs)
    if abs(src_fps - fps) > 0.01 * fps:
        frames = frames[_pick(np.arange(len(imgs)) / src_fps, fps, len(imgs) / src_fps)]
    return frames, read_wav(wav_path, sample_rate)


def have_av() -> bool:
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True

"""Measure any talking-head video with models nobody here trained (dlib HOG + 68 landmarks + 128-D embedding).

Usage: eartalking measure VIDEO.mp4 --json OUT.json [--portrait P.png] [--plot OUT.png] [--labels L.json] [--every N]

Per frame: the largest face (HOG; upsampled when small), 68 landmarks -> mouth openness, eye openness,
head yaw/pitch/roll (conventions in eartalking/evaluate/signals.py: positive yaw = the face's own left
turn), and the identity distance of the dlib embedding to the portrait's (same person < 0.6; without a
portrait, to the first measured face). Audio (any track PyAV decodes) -> RMS envelope per video frame ->
label-free lip-sync: best Pearson r between mouth openness and envelope within +-3 frames. Frames with no
face are counted (``no_face_frames``) and are null in the curves. Blinks are dips of the eye signal (eye
openness and eye-box appearance, ``signals.eye_signal``). With --labels (corpus JSON:
"frames":[{openness, blink, yaw, pitch, roll, ...}]) each signal is correlated with its ground truth. The
embedding costs ~80 ms per face on one CPU core, so identity is computed on every frame up to 250 frames and
on 250 evenly spaced frames beyond (or every N frames with --every N).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from eartalking.cli import UserError
from eartalking.evaluate import dlibface, signals

SAME_PERSON = 0.6
DENSE_IDENTITY_FRAMES = 250
MAX_LAG = 3
portrait_embedding = dlibface.portrait_embedding  # re-exported: compute a reference once, reuse it
LABEL_SIGNALS = ("openness", "blink", "yaw", "pitch", "roll")


def identity_stride(n_frames: int | None, every: int | None) -> int:
    """Sample identity every frame up to DENSE_IDENTITY_FRAMES frames, ~DENSE_IDENTITY_FRAMES samples beyond."""
    if every is not None:
        return max(1, int(every))
    if not n_frames or n_frames <= DENSE_IDENTITY_FRAMES:
        return 1
    return math.ceil(n_frames / DENSE_IDENTITY_FRAMES)


class _Accumulator:
    """Per-frame measurements, appended frame by frame so a video is never held in memory."""

    def __init__(self, ref_embedding: np.ndarray | None, stride: int) -> None:
        self.finder = dlibface.FaceFinder()
        self.ref = ref_embedding
        self.ref_kind = "portrait" if ref_embedding is not None else "first_face_frame"
        self.stride = stride
        self.curves: dict[str, list[float]] = {
            k: [] for k in ("mouth_openness", "eye_openness", "eye_signal", "yaw", "pitch", "roll",
                            "identity_distance")
        }
        self.boxes: list[list[int] | None] = []
        self.sampled: list[int] = []
        self.t_face = self.t_embed = 0.0
        self.size: tuple[int, int] | None = None

    def add(self, frame: np.ndarray) -> None:
        img = np.ascontiguousarray(frame[..., :3], dtype=np.uint8)
        self.size = (img.shape[1], img.shape[0])
        t = len(self.boxes)
        t0 = time.perf_counter()
        rect = self.finder.find(img)
        nan = float("nan")
        if rect is None:
            self.boxes.append(None)
            for v in self.curves.values():
                v.append(nan)
            self.t_face += time.perf_counter() - t0
            return
        face = dlibface.landmarks(img, rect)
        p = face.points
        yaw, pitch, roll = signals.head_pose(p)
        ear = signals.eye_openness(p)
        for k, v in (
            ("mouth_openness", signals.mouth_openness(p)),
            ("eye_openness", ear),
            ("eye_signal", signals.eye_signal(ear, *signals.eye_appearance(img, p))),
            ("yaw", yaw),
            ("pitch", pitch),
            ("roll", roll),
        ):
            self.curves[k].append(v)
        self.boxes.append([rect.left(), rect.top(), rect.right(), rect.bottom()])
        t1 = time.perf_counter()
        self.t_face += t1 - t0
        dist = nan
        if t % self.stride == 0 or (self.ref is None and not self.sampled):
            emb = dlibface.embed(face)
            if self.ref is None:
                self.ref = emb
            dist = float(np.linalg.norm(emb - self.ref))
            self.sampled.append(t)
            self.t_embed += time.perf_counter() - t1
        self.curves["identity_distance"].append(dist)


def _finish(
    acc: _Accumulator,
    pcm: np.ndarray | None,
    sr: int,
    fps: float,
    labels: dict | None,
    source: dict[str, Any],
    t_start: float,
) -> dict[str, Any]:
    """Summaries, lip-sync, blinks and label correlations from the per-frame curves -> the JSON dict."""
    T = len(acc.boxes)
    c = {k: np.asarray(v, np.float64) for k, v in acc.curves.items()}
    no_face = [t for t, b in enumerate(acc.boxes) if b is None]
    has_audio = pcm is not None and len(pcm) > 0
    env = signals.rms_envelope(pcm, sr, fps, T) if has_audio else np.full(T, np.nan)
    r, lag, by_lag = signals.lagged_pearson(c["mouth_openness"], env, MAX_LAG) if has_audio else (None, None, {})
    blinks = signals.detect_blinks(c["eye_signal"], fps)
    ident = c["identity_distance"][np.isfinite(c["identity_distance"])]
    summary: dict[str, Any] = {
        "frames": T,
        "face_frames": T - len(no_face),
        "no_face_frames": len(no_face),
        "lipsync_r": r,
        "lipsync_lag_frames": lag,
        "lipsync_r_by_lag": {str(k): v for k, v in by_lag.items()},
        "blink_count": len(blinks),
        "blink_frames": blinks,
        "identity_distance_mean": _stat(ident, np.mean),
        "identity_distance_median": _stat(ident, np.median),
        "identity_distance_max": _stat(ident, np.max),
        "identity_same_person_frac": float(np.mean(ident < SAME_PERSON)) if ident.size else None,
    }
    for k in ("mouth_openness", "eye_openness", "eye_signal", "yaw", "pitch", "roll"):
        v = c[k][np.isfinite(c[k])]
        summary[f"{k}_mean"], summary[f"{k}_std"] = _stat(v, np.mean), _stat(v, np.std)
    elapsed = time.perf_counter() - t_start
    out: dict[str, Any] = {
        "source": source,
        "fps": fps,
        "frames": T,
        "width": acc.size[0] if acc.size else None,
        "height": acc.size[1] if acc.size else None,
        "audio": {
            "present": bool(has_audio),
            "sample_rate": sr if has_audio else None,
            "seconds": len(pcm) / sr if has_audio else 0.0,
        },
        "no_face_frames": len(no_face),
        "no_face_indices": no_face,
        "summary": summary,
        "identity": {
            "reference": acc.ref_kind if acc.sampled else None,
            "same_person_below": SAME_PERSON,
            "every": acc.stride,
            "sampled_frames": acc.sampled,
        },
        "labels": _label_correlations(c, labels, T) if labels is not None else None,
        "conventions": {
            "mouth_openness": "inner-lip gap |p62-p66| / mouth width |p60-p64| (dlib 68 points, 0-based)",
            "eye_openness": "eye aspect ratio, mean of both eyes",
            "eye_signal": "(eye aspect ratio * eye-box dark contrast * eye-box luminance std)^(1/3); blinks are "
                          f"its dips below {signals.BLINK_DROP} x the running median",
            "yaw": "degrees, approximate; + = the face turns to its own left (nose towards image right)",
            "pitch": "degrees, approximate; + = chin up",
            "roll": "degrees; + = clockwise on screen (head tilts towards its own left shoulder)",
            "lipsync_lag_frames": "+k = mouth openness at t best matches audio envelope at t+k (mouth leads)",
            "envelope": "audio RMS over each video frame's interval, 16 kHz mono",
            "null": "no face in that frame (or identity not sampled there)",
        },
        "timing": {
            "seconds": elapsed,
            "ms_per_frame": 1000 * elapsed / max(T, 1),
            "ms_face_per_frame": 1000 * acc.t_face / max(T, 1),
            "ms_per_embedding": 1000 * acc.t_embed / max(len(acc.sampled), 1),
        },
        "curves": {**{k: _jsonable(v) for k, v in c.items()}, "audio_envelope": _jsonable(env), "face_box": acc.boxes},
    }
    return out


def _label_correlations(c: dict[str, np.ndarray], labels: dict, T: int) -> dict[str, Any]:
    frames = labels.get("frames") if isinstance(labels, dict) else None
    if not isinstance(frames, list) or not frames:
        raise UserError('labels JSON has no "frames" list (expected {"frames":[{"openness":..,"blink":..},..]})')
    n = min(T, len(frames))
    gt = {k: np.array([_num(f.get(k)) if isinstance(f, dict) else np.nan for f in frames[:n]]) for k in LABEL_SIGNALS}
    measured = {
        "openness": c["mouth_openness"],
        "blink": -c["eye_signal"],
        "yaw": c["yaw"],
        "pitch": c["pitch"],
        "roll": c["roll"],
    }
    out: dict[str, Any] = {
        "frames_compared": n,
        "label_frames": len(frames),
        "video_frames": T,
        "blink_note": "r of -eye_signal vs the blink label",
    }
    for k in LABEL_SIGNALS:
        out[f"{k}_r"] = signals.pearson(measured[k][:n], gt[k])
    out["curves"] = {k: _jsonable(v) for k, v in gt.items()}
    return out


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else float("nan")


def _stat(v: np.ndarray, f: Any) -> float | None:
    return float(f(v)) if v.size else None


def _jsonable(v: np.ndarray) -> list[float | None]:
    return [round(float(x), 5) if math.isfinite(x) else None for x in v]


def measure_frames(
    frames: np.ndarray | Iterable[np.ndarray],
    pcm: np.ndarray | None = None,
    sr: int = 16000,
    fps: float = 25,
    portrait: str | Path | np.ndarray | None = None,
    labels: dict | None = None,
    every: int | None = None,
) -> dict[str, Any]:
    """Measure frames uint8 [T,H,W,3] (or an iterable of [H,W,3]) with optional mono ``pcm`` float [samples]."""
    dlibface.models()  # one-time load (~1 s) kept out of the per-frame timing
    t0 = time.perf_counter()
    n = len(frames) if hasattr(frames, "__len__") else None
    if pcm is not None:
        raw = np.asarray(pcm).reshape(-1)
        pcm = raw.astype(np.float32) / (32768.0 if raw.dtype.kind == "i" else 1.0)
        pcm = _resample(pcm, sr, 16000)
    acc = _Accumulator(_reference(portrait), identity_stride(n, every))
    for f in frames:
        acc.add(f)
    return _finish(acc, pcm, 16000, float(fps), labels, {"kind": "frames"}, t0)


def _reference(portrait: str | Path | np.ndarray | None) -> np.ndarray | None:
    """Portrait path / image uint8 [H,W,3] -> its embedding; a float [128] array is taken as the embedding."""
    if portrait is None:
        return None
    if isinstance(portrait, np.ndarray) and portrait.ndim == 1 and portrait.size == 128:
        return portrait.astype(np.float64)
    return dlibface.portrait_embedding(portrait)


def _resample(pcm: np.ndarray, sr: int, target: int) -> np.ndarray:
    if sr == target or pcm.size == 0:
        return pcm
    from scipy.signal import resample_poly

    g = math.gcd(int(sr), target)
    return resample_poly(pcm, target // g, int(sr) // g).astype(np.float32)


def measure_video(
    path: str | Path,
    portrait: str | Path | np.ndarray | None = None,
    labels: dict | str | Path | None = None,
    every: int | None = None,
    max_frames: int | None = None,
) -> dict[str, Any]:
    """Measure an MP4 (or anything PyAV reads) -> the JSON dict (see the module docstring)."""
    import av

    dlibface.models()
    t0 = time.perf_counter()
    path = Path(path)
    if not path.is_file():
        raise UserError(f"video not found: {path}")
    if labels is not None and not isinstance(labels, dict):
        try:
            labels = json.loads(Path(labels).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read labels {labels}: {e}") from None
    ref = _reference(portrait)
    pcm = _read_audio(path)
    try:
        with av.open(str(path)) as box:
            if not box.streams.video:
                raise UserError(f"cannot read video {path}: it has no video stream")
            vs = box.streams.video[0]
            rate = vs.average_rate or vs.guessed_rate or vs.base_rate
            fps = float(rate) if rate else 25.0
            n = vs.frames or (int(box.duration * fps / 1_000_000) if box.duration else None)
            if max_frames is not None:
                n = min(n, max_frames) if n else max_frames
            acc = _Accumulator(ref, identity_stride(n, every))
            for t, frame in enumerate(_decode_video(box, vs, path)):
                if max_frames is not None and t >= max_frames:
                    break
                acc.add(frame)
    except av.FFmpegError as e:
        raise UserError(f"cannot read video {path}: {e}") from None
    if not acc.boxes:
        raise UserError(f"cannot read video {path}: no decodable video frames")
    source = {
        "kind": "video",
        "path": str(path),
        "portrait": str(portrait) if isinstance(portrait, (str, Path)) else None,
    }
    return _finish(acc, pcm, 16000, fps, labels, source, t0)


def _decode_video(box: Any, vs: Any, path: Path) -> Iterator[np.ndarray]:
    for frame in box.decode(vs):
        yield frame.to_ndarray(format="rgb24")


def _read_audio(path: Path) -> np.ndarray | None:
    """First audio track as 16 kHz mono float32, or None if there is none (or it cannot be decoded)."""
    import av

    try:
        with av.open(str(path)) as box:
            if not box.streams.audio:
                return None
            res = av.AudioResampler(format="flt", layout="mono", rate=16000)
            chunks = []
            a, v = box.streams.audio[0], (box.streams.video[0] if box.streams.video else None)
            offset = 0.0  # audio start minus video start (seconds): pad or trim so sample 0 = frame 0
            if v is not None and a.start_time is not None and v.start_time is not None:
                offset = float(a.start_time * a.time_base - v.start_time * v.time_base)
            if offset > 0:
                chunks.append(np.zeros(int(round(offset * 16000)), np.float32))
            for frame in box.decode(box.streams.audio[0]):
                chunks += [f.to_ndarray().reshape(-1) for f in res.resample(frame)]
            chunks += [f.to_ndarray().reshape(-1) for f in res.resample(None)]
    except av.FFmpegError as e:
        raise UserError(f"cannot read {path}: {e}") from None
    if not chunks:
        return None
    pcm = np.concatenate(chunks).astype(np.float32)
    return pcm[int(round(-offset * 16000)) :] if offset < 0 else pcm


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("video", help="talking-head video (MP4 or anything PyAV reads; audio optional)")
    parser.add_argument(
        "--portrait", help="reference portrait for the identity distance (default: first measured face)"
    )
    parser.add_argument("--json", required=True, help="write the measurements here")
    parser.add_argument("--plot", help="also write a PNG of the curves over time")
    parser.add_argument("--labels", help="ground-truth labels JSON (corpus format) to correlate with")
    parser.add_argument(
        "--every", type=int, help="compute identity every N frames (default: all up to 250 frames, 250 samples beyond)"
    )
    parser.add_argument("--max-frames", type=int, help="measure at most this many frames")


def run(args: argparse.Namespace) -> int:
    if args.every is not None and args.every < 1:
        raise UserError(f"--every must be >= 1 (got {args.every})")
    if args.max_frames is not None and args.max_frames < 1:
        raise UserError(f"--max-frames must be >= 1 (got {args.max_frames})")
    res = measure_video(
        args.video, portrait=args.portrait, labels=args.labels, every=args.every, max_frames=args.max_frames
    )
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=1))
    if args.plot:
        from eartalking.evaluate.plots import plot_measurements

        plot_measurements(res, args.plot)
    s = res["summary"]
    print(
        f"{res['frames']} frames @ {res['fps']:.2f} fps, no face in {s['no_face_frames']}; "
        f"lip-sync r={_fmt(s['lipsync_r'])} (lag {s['lipsync_lag_frames']}); blinks {s['blink_count']}; "
        f"identity {_fmt(s['identity_distance_mean'])} ({res['identity']['reference']}); "
        f"{res['timing']['ms_per_frame']:.1f} ms/frame -> {args.json}"
    )
    return 0


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"

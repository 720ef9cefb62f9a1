"""Portrait + speech -> talking-head MP4, in process (H.264 + AAC, 25 fps, the speech as the audio track).

Usage: eartalking generate --portrait P.png (--audio A.wav | --text "...") [--voice en-us] [--controls C.json]
       [--backend onnxruntime|tensorrt|torch] [--onnx build/onnx] [--checkpoint checkpoints/tiny]
       [--crop-only] [--temperature 0 --seed 0] --out out.mp4

The audio is streamed through a Session in 200 ms chunks, exactly as a live caller would; frames are
written as they come (frames = ceil(seconds * 25)). ``--text`` speaks through espeak-ng. The controls file
is a JSON list of events ``{"frame": k | "time": seconds, "<signal>": value, ...}`` with signals yaw,
pitch, roll (degrees), blink, expression (0..1); a value holds until changed, ``null`` releases it.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from eartalking.cli import UserError
from eartalking.config import CONTROL_RANGES
from eartalking.runtime import media

MAX_TEXT_CHARS = 5000
CHUNK_SECONDS = 0.2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--portrait", required=True, help="photo with a face (PNG/JPEG)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--audio", help="speech WAV (any rate, channels, bit depth)")
    src.add_argument("--text", help="text to speak with espeak-ng")
    p.add_argument("--voice", default="en-us", help="espeak-ng voice for --text (default en-us)")
    p.add_argument("--controls", help="JSON list of control events (see above)")
    p.add_argument("--backend", choices=("onnxruntime", "tensorrt", "torch"), default="onnxruntime")
    p.add_argument("--onnx", default="build/onnx", help="folder of the four ONNX graphs")
    p.add_argument("--engines", default="build/engines", help="folder of TensorRT plans (--backend tensorrt)")
    p.add_argument("--checkpoint", default="checkpoints/tiny", help="checkpoint folder (--backend torch)")
    p.add_argument("--device", default="auto", help="auto (CUDA where present, else CPU), cpu or cuda")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    p.add_argument("--crop-only", action="store_true", help="write the bare model frames, not the pasted photo")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples top-k")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (with --temperature > 0)")
    p.add_argument("--out", required=True, help="output MP4 path")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def speak(text: str, voice: str = "en-us") -> np.ndarray:
    """espeak-ng -> float32 16 kHz mono PCM."""
    text = text.strip()
    if not text:
        raise UserError("--text is empty")
    if len(text) > MAX_TEXT_CHARS:
        raise UserError(f"--text is {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise UserError("--text needs espeak-ng (apt-get install espeak-ng, or `make setup`); or pass --audio")
    with tempfile.TemporaryDirectory() as d:
        wav = Path(d) / "speech.wav"
        r = subprocess.run([exe, "-v", voice, "-w", str(wav), "--", text], capture_output=True, text=True,
                           timeout=120, check=False)
        if r.returncode != 0 or not wav.is_file() or wav.stat().st_size <= 44:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise UserError(f"espeak-ng failed for voice {voice!r}: {msg[-1] if msg else 'no audio produced'}")
        pcm, _ = media.read_wav(wav)
    return pcm


def load_controls(path: str | Path, fps: int, total_frames: int) -> list[tuple[int, dict]]:
    """Read a controls JSON file -> [(frame, {signal: value|None})], validated (clear errors)."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"controls file not found: {p}")
    try:
        events = json.loads(p.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not valid JSON ({e})") from None
    return parse_controls(events, fps, total_frames, str(p))


def parse_controls(events, fps: int, total_frames: int, name: str = "controls") -> list[tuple[int, dict]]:
    if not isinstance(events, list):
        raise UserError(f"{name}: expected a JSON list of events like {{\"time\": 1.2, \"blink\": 1}}")
    out = []
    for i, ev in enumerate(events):
        where = f"{name}: event {i}"
        if not isinstance(ev, dict):
            raise UserError(f"{where}: expected an object, got {type(ev).__name__}")
        if ("frame" in ev) == ("time" in ev):
            raise UserError(f"{where}: give exactly one of \"frame\" or \"time\"")
        if "frame" in ev:
            k = ev["frame"]
            if isinstance(k, bool) or not isinstance(k, int) or k < 0:
                raise UserError(f"{where}: frame must be an integer >= 0, got {k!r}")
        else:
            t = ev["time"]
            if isinstance(t, bool) or not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
                raise UserError(f"{where}: time must be seconds >= 0, got {t!r}")
            k = int(math.floor(t * fps + 1e-6))
        if k >= total_frames:
            raise UserError(f"{where}: frame {k} is past the end of the video ({total_frames} frames)")
        values = {key: v for key, v in ev.items() if key not in ("frame", "time")}
        for key, v in values.items():
            if key not in CONTROL_RANGES:
                raise UserError(f"{where}: unknown control signal {key!r}; known: {', '.join(CONTROL_RANGES)}")
            lo, hi = CONTROL_RANGES[key]
            if v is not None and (isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi):
                raise UserError(f"{where}: {key}={v!r} is out of range [{lo}, {hi}]")
        out.append((k, values))
    return sorted(out, key=lambda e: e[0])


def make_engine(args):
    from eartalking.runtime.session import Engine

    if args.backend == "onnxruntime":
        return Engine(args.onnx, device=args.device, kind="onnxruntime", threads=args.threads)
    if args.backend == "tensorrt":
        from eartalking.runtime.backends import TensorRTBackend

        return Engine(TensorRTBackend(args.engines, onnx_dir=args.onnx))
    return Engine(args.checkpoint, device=args.device, kind="torch", threads=args.threads)


def generate(engine, portrait: np.ndarray, pcm: np.ndarray, out: str | Path, controls=(), crop_only: bool = False,
             temperature: float = 0.0, seed: int = 0, progress: bool = True) -> dict:
    """Stream ``pcm`` (float32 16 kHz) through a Session and write the MP4. Returns timing stats."""
    from tqdm import tqdm

    from eartalking.runtime.session import Session

    t0 = time.perf_counter()
    s = Session(engine, portrait, crop_only=crop_only, temperature=temperature, seed=seed)
    for k, values in controls:
        s.set_controls(frame=k, **values)
    total = math.ceil(pcm.size / engine.hop)
    h, w = s.header["height"], s.header["width"]
    first = None
    chunk = int(CHUNK_SECONDS * engine.rate)
    with media.Mp4Writer(out, w, h, fps=engine.fps, sample_rate=engine.rate) as writer, \
            tqdm(total=total, unit="frame", disable=not progress, desc="generate") as bar:
        def emit(frames):
            nonlocal first
            for f in frames:
                if first is None:
                    first = time.perf_counter() - t0
                writer.write_frame(f.image)
                writer.write_audio(pcm[f.index * engine.hop : (f.index + 1) * engine.hop])
            bar.update(len(frames))

        for a in range(0, pcm.size, chunk):
            emit(s.push_audio(pcm[a : a + chunk]))
        emit(s.end())
        frames = s.next_frame
    s.close()
    seconds = time.perf_counter() - t0
    return {"frames": frames, "seconds": seconds, "fps": frames / max(seconds, 1e-9),
            "first_frame_s": first, "audio_seconds": pcm.size / engine.rate}


def run(args) -> int:
    out = Path(args.out)
    if out.suffix.lower() != ".mp4":
        raise UserError(f"--out must end in .mp4, got {out}")
    portrait = media.read_image(args.portrait)
    pcm = speak(args.text, args.voice) if args.text is not None else media.read_wav(args.audio)[0]
    engine = make_engine(args)
    total = math.ceil(pcm.size / engine.hop)
    controls = load_controls(args.controls, engine.fps, total) if args.controls else []
    stats = generate(engine, portrait, pcm, out, controls, crop_only=args.crop_only,
                     temperature=args.temperature, seed=args.seed, progress=not args.quiet)
    print(f"wrote {out}: {stats['frames']} frames ({stats['audio_seconds']:.2f} s of speech) in "
          f"{stats['seconds']:.2f} s = {stats['fps']:.1f} frames/s; first frame after {stats['first_frame_s']:.3f} s")
    return 0

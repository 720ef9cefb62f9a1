"""`make demo`: the bundled portrait + sentence -> out/demo.mp4, and out/demo_controls.mp4 with a blink and a
head turn requested mid-sentence. Prints where the files are and how long it took.

Usage: python scripts/demo.py [--onnx build/onnx] [--out out] [--portrait assets/portrait.png]
       [--audio assets/demo.wav]

`make demo` exports the graphs first when build/onnx has none (from checkpoints/tiny).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def controls_midsentence(total: int, fps: int) -> list[tuple[int, dict]]:
    """A blink (eyes closed for 4 frames) and a head turn to yaw 20 deg and back, around the middle."""
    mid = total // 2
    turn = [(mid - 12 + i, {"yaw": round(20.0 * (i + 1) / 8, 2)}) for i in range(8)]  # ease to 20 deg
    back = [(mid + 14 + i, {"yaw": round(20.0 * (7 - i) / 8, 2)}) for i in range(8)]  # and back to 0
    blink = [(mid, {"blink": 1.0}), (mid + 4, {"blink": 0.0}), (mid + 8, {"blink": None})]
    release = [(mid + 22, {"yaw": None})]
    events = [e for e in turn + back + blink + release if 0 <= e[0] < total]
    return sorted(events, key=lambda e: e[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--onnx", default=str(ROOT / "build" / "onnx"))
    p.add_argument("--out", default=str(ROOT / "out"))
    p.add_argument("--portrait", default=str(ROOT / "assets" / "portrait.png"))
    p.add_argument("--audio", default=str(ROOT / "assets" / "demo.wav"))
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)

    from eartalking.cli import UserError
    from eartalking.runtime import media
    from eartalking.runtime.generate import generate
    from eartalking.runtime.session import Engine

    t0 = time.perf_counter()
    try:
        engine = Engine(args.onnx, kind="onnxruntime", threads=args.threads)
        portrait = media.read_image(args.portrait)
        pcm, _ = media.read_wav(args.audio)
        out = Path(args.out)
        total = math.ceil(pcm.size / engine.hop)
        plain = generate(engine, portrait, pcm, out / "demo.mp4")
        ctl = generate(engine, portrait, pcm, out / "demo_controls.mp4", controls_midsentence(total, engine.fps))
    except UserError as e:
        print(f"demo: error: {e}", file=sys.stderr)
        return 2
    took = time.perf_counter() - t0
    for name, st in (("demo.mp4", plain), ("demo_controls.mp4", ctl)):
        print(f"  {out / name}: {st['frames']} frames, {st['audio_seconds']:.2f} s of speech, generated in "
              f"{st['seconds']:.2f} s ({st['fps']:.1f} frames/s, first frame after {st['first_frame_s'] * 1e3:.0f} ms)")
    mid = total // 2 / engine.fps
    print(f"demo: wrote {out / 'demo.mp4'} and {out / 'demo_controls.mp4'} (blink at {mid:.2f} s, head turn around "
          f"it) in {took:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

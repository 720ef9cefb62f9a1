"""Benchmark the gRPC API against the embedded runtime: per-frame cost and first-frame latency.

Usage: python -m eartalking.runtime.bench_grpc --onnx build/onnx [--seconds 10] [--repeats 3] [--crop-only]
                                               [--json out/bench_grpc.json]

Runs, interleaved ``--repeats`` times (medians reported; this machine is shared):
- embedded: ``Session`` in this process; the utterance pushed in 40 ms chunks as fast as possible;
- grpc (batched / per-stream): the same through ``eartalking serve`` in a subprocess on loopback, frames
  as RAW_RGB decoded by the SDK (so serialisation, transport and decoding are all counted).
Per frame = wall time of the whole utterance, session open included, / frames. First frame = portrait
file bytes in -> frame 0 out, with the audio frame 0 needs (1 + lookahead frames) available at once (PNG
decode + session open + one step; over gRPC also the upload and the round trip, on a connected channel).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def _speech(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return np.clip(env * rng.standard_normal(n) * 4000, -32768, 32767).astype(np.int16)


def _portrait() -> tuple[np.ndarray, bytes]:
    from PIL import Image
    from skimage import data

    img = data.astronaut()
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return img, buf.getvalue()


def _decode(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def embedded_run(engine, png: bytes, pcm, chunk: int, crop_only: bool = False) -> tuple[float, float, int]:
    """(first-frame s, per-frame s, frames) for one in-process session; the portrait arrives as file bytes."""
    from eartalking.runtime.session import Session

    la = engine.lookahead
    t0 = time.perf_counter()
    img = _decode(png)
    s = Session(engine, img, crop_only=crop_only)
    first = s.push_audio(pcm[: (1 + la) * 640])
    t_first = time.perf_counter() - t0
    assert first and first[0].index == 0
    s.close()
    t0 = time.perf_counter()
    s = Session(engine, img, crop_only=crop_only)
    n = 0
    for i in range(0, len(pcm), chunk):
        n += len(s.push_audio(pcm[i : i + chunk]))
    n += len(s.end())
    dt = time.perf_counter() - t0
    s.close()
    return t_first, dt / n, n


def grpc_run(target: str, png: bytes, pcm, chunk_ms: float, lookahead: int,
             crop_only: bool = False) -> tuple[float, float, int]:
    from eartalking.client import TalkingHeadClient

    with TalkingHeadClient(target) as c:
        c.model_info()  # a connected channel, as an application keeps one
        t0 = time.perf_counter()
        s = c.stream(png, [pcm[: (1 + lookahead) * 640]], crop_only=crop_only)
        next(s)
        t_first = time.perf_counter() - t0
        list(s)
        t0 = time.perf_counter()
        frames = list(c.stream(png, pcm, chunk_ms=chunk_ms, crop_only=crop_only))
        dt = time.perf_counter() - t0
    return t_first, dt, len(frames)


def start_server(onnx: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    exe = str(Path(sys.executable).parent / "eartalking")
    p = subprocess.Popen([exe, "serve", "--port", "0", "--onnx", onnx, "--log-level", "WARNING", *extra],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in p.stdout:
        m = re.search(r"listening on [^ ]+:(\d+)", line)
        if m:
            return p, f"127.0.0.1:{m.group(1)}"
    raise RuntimeError("server did not start")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--onnx", default="build/onnx")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chunk-ms", type=float, default=40.0)
    ap.add_argument("--crop-only", action="store_true", help="bare model frames (small) instead of paste-back")
    ap.add_argument("--json", default="out/bench_grpc.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from eartalking.runtime.session import Engine

    engine = Engine(args.onnx)
    _, png = _portrait()
    pcm = _speech(args.seconds)
    chunk = int(16000 * args.chunk_ms / 1000)
    servers = {"grpc batched": start_server(args.onnx, []),
               "grpc per-stream": start_server(args.onnx, ["--no-batching"])}
    res: dict[str, dict[str, list[float]]] = {k: {"first": [], "total": [], "per_frame": []} for k in
                                              ["embedded", *servers]}
    try:
        for _, target in servers.values():  # warm up
            grpc_run(target, png, pcm[:16000], args.chunk_ms, engine.lookahead)
        embedded_run(engine, png, pcm[:16000], chunk)
        for _ in range(args.repeats):
            f, pf, n = embedded_run(engine, png, pcm, chunk, args.crop_only)
            res["embedded"]["first"].append(f)
            res["embedded"]["per_frame"].append(pf)
            for name, (_, target) in servers.items():
                f, total, n2 = grpc_run(target, png, pcm, args.chunk_ms, engine.lookahead, args.crop_only)
                assert n2 == n
                res[name]["first"].append(f)
                res[name]["total"].append(total)
                res[name]["per_frame"].append(total / n2)
    finally:
        for p, _ in servers.values():
            p.terminate()
            p.wait(20)
    med = {k: {m: statistics.median(v) for m, v in d.items() if v} for k, d in res.items()}
    base = med["embedded"]
    print(f"{'path':<18}{'per frame ms':>14}{'vs embedded':>13}{'first frame ms':>16}{'vs embedded':>13}")
    for k, d in med.items():
        print(f"{k:<18}{d['per_frame'] * 1e3:>14.2f}{(d['per_frame'] / base['per_frame'] - 1) * 100:>12.1f}%"
              f"{d['first'] * 1e3:>16.1f}{(d['first'] - base['first']) * 1e3:>+12.1f}ms")
    out = {"seconds": args.seconds, "crop_only": args.crop_only, "frames": n, "repeats": args.repeats, "median": med,
           "runs": res, "onnx": args.onnx, "model": engine.dims.get("model_name"), "cpu_count": os.cpu_count()}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

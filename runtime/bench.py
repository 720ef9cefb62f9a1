"""Benchmark the embedded runtime: latency, throughput, first frame, memory, backends, cache, batching.

Usage: eartalking bench --onnx build/onnx [--checkpoint checkpoints/tiny] --json out/bench.json
       --plot out/bench.png [--frames 5000] [--threads N]

One run prints one table:
- one session through ONNX Runtime, streamed in 40 ms chunks: per-frame latency p50/p99 (audio encoder +
  step decoder + tokenizer decoder + paste-back), frames/s, real-time factor, first-frame latency
  (portrait in -> first frame out, compute only; the lookahead adds (1 + lookahead) / 25 s of audio
  waiting on a live stream), peak RSS, and where the time goes per graph;
- the same pipeline through PyTorch eager (``--checkpoint``; a random model of the export's preset if absent);
- PyTorch cached SFA step vs full-context recompute (``generate.reference_generate``);
- frame ~50 vs frame ~``--frames`` cost and RSS over the long run (plotted);
- 1/2/4/8 sessions batched through ``step_many`` vs the same sessions one after another.
The machine's load average is recorded: on a shared CPU every number depends on it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from eartalking.cli import UserError


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--onnx", default="build/onnx", help="folder of the four ONNX graphs")
    p.add_argument("--checkpoint", default=None, help="checkpoint for the PyTorch comparison (default: random "
                   "weights of the export's preset)")
    p.add_argument("--frames", type=int, default=5000, help="frames in the long run (default 5000)")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    p.add_argument("--sessions", default="1,2,4,8", help="session counts for the batching test")
    p.add_argument("--json", default="out/bench.json")
    p.add_argument("--plot", default="out/bench.png")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def speech(seconds: float, seed: int = 0) -> np.ndarray:
    """Speech-like test signal (random weights do not care what is said; the cost does not either)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    env = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t)
    return (env * (0.3 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(n))).astype(np.float32)


class Timer:
    """Wraps a backend's ``run`` to add up the time spent in each graph."""

    def __init__(self, backend) -> None:
        self.backend, self.orig, self.total = backend, backend.run, defaultdict(float)

    def __enter__(self):
        def run(graph, feeds):
            t = time.perf_counter()
            out = self.orig(graph, feeds)
            self.total[graph] += time.perf_counter() - t
            return out

        self.backend.run = run
        return self

    def __exit__(self, *exc):
        self.backend.run = self.orig


def stream(engine, portrait, face, pcm: np.ndarray, chunk: int = 640, crop_only: bool = False):
    """Stream ``pcm`` through one session; -> (latency per frame [s], rss [MB] per frame, graph ms/frame)."""
    from eartalking.runtime.session import Session

    s = Session(engine, portrait, face=face, crop_only=crop_only)
    lat, rss = [], []
    with Timer(engine.backend) as tm:
        for a in range(0, pcm.size, chunk):
            t = time.perf_counter()
            frames = s.push_audio(pcm[a : a + chunk])
            dt = time.perf_counter() - t
            for _ in frames:
                lat.append(dt / len(frames))
                rss.append(rss_mb())
        t = time.perf_counter()
        n_end = len(s.end())
        lat += [(time.perf_counter() - t) / max(1, n_end)] * n_end
        rss += [rss_mb()] * n_end
    n = max(1, len(lat))
    parts = {g: v / n * 1e3 for g, v in tm.total.items()}
    parts["host (paste, buffers, python)"] = max(0.0, sum(lat) / n * 1e3 - sum(parts.values()))
    s.close()
    return np.array(lat), np.array(rss), parts


def first_frame(engine, portrait, repeats: int = 5) -> float:
    """Median compute latency: portrait in (face finding included) -> first frame out, audio already there."""
    from eartalking.runtime.session import Session

    pcm = speech(0.5, seed=1)[: (engine.lookahead + 1) * engine.hop]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        s = Session(engine, portrait)
        frames = s.push_audio(pcm)
        times.append(time.perf_counter() - t)
        assert frames and frames[0].index == 0
        s.close()
    return float(np.median(times))


def batching(engine, face, counts: list[int], frames: int = 40) -> dict:
    """Aggregate frames/s of n sessions batched by step_many vs run one after another (crop frames)."""
    from eartalking.runtime.session import Session, step_many

    pcm = speech(frames * engine.hop / engine.rate, seed=2)
    out = {}
    for n in counts:
        res = {}
        for mode in ("batched", "sequential"):
            sessions = [Session(engine, face.photo, face=face, crop_only=True) for _ in range(n)]
            t = time.perf_counter()
            for s in sessions:
                s.feed(pcm)
                s.finish()
            made = sum(len(f) for f in step_many(sessions)) if mode == "batched" else \
                sum(len(step_many([s])[0]) for s in sessions)
            res[mode] = made / (time.perf_counter() - t)
        out[n] = res
    return out


def torch_engine(args, dims: dict, threads: int):
    from eartalking.runtime.session import Engine
    from eartalking.runtime.torch_backend import TorchBackend

    if args.checkpoint and Path(args.checkpoint, "config.json").is_file():
        return Engine(TorchBackend(args.checkpoint, threads=threads)), f"checkpoint {args.checkpoint}"
    from eartalking.model.checkpoint import random_model

    name = str(dims.get("model_name", "tiny"))
    return Engine(TorchBackend(model=random_model(name, 0), threads=threads)), f"random {name} weights"


def cache_vs_recompute(torch_eng, face, frames: int = 60) -> dict:
    """PyTorch: cached SFA step (StreamingGenerator) vs full-context recompute, decoder only, ms/frame."""
    import torch

    from eartalking.model.generate import StreamingGenerator, reference_generate

    model = torch_eng.backend.model
    portrait = torch.from_numpy(face.crop.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    with torch.inference_mode():
        audio = model.audio.encode_utterance(torch.from_numpy(speech(frames / 25, seed=3))[None])[:, :frames]
        gen = StreamingGenerator(model, portrait)
        t = time.perf_counter()
        cached = torch.stack([gen.step(audio[:, i]) for i in range(audio.shape[1])], 1)
        t_cached = (time.perf_counter() - t) / frames
        t = time.perf_counter()
        ref, _ = reference_generate(model, portrait, audio)
        t_ref = (time.perf_counter() - t) / frames
    return {"cached_ms": t_cached * 1e3, "recompute_ms": t_ref * 1e3, "same_tokens": bool(torch.equal(cached, ref))}


def run(args) -> int:
    from eartalking.runtime import faces
    from eartalking.runtime.backends import physical_cores
    from eartalking.runtime.session import Engine

    # PyTorch's OpenMP threads spin-wait by default, which collapses on a shared CPU (measured here under
    # load: 487 ms/frame vs 8 ms); ONNX Runtime runs without spinning too (backends.py), so compare alike.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.frames < 200:
        raise UserError(f"--frames must be >= 200 to compare frame ~50 with the end, got {args.frames}")
    threads = args.threads or physical_cores()
    load0 = os.getloadavg()
    t_start = time.perf_counter()
    from skimage import data

    portrait = data.astronaut()
    engine = Engine(args.onnx, kind="onnxruntime", threads=threads)
    face = faces.prepare(portrait, engine.S)
    res: dict = {"threads": threads, "cpu_count": os.cpu_count(), "loadavg_start": load0,
                 "model": engine.dims.get("model_name"), "onnx": str(args.onnx)}

    print(f"bench: {res['model']} via ONNX Runtime, {threads} threads, load average {load0[0]:.1f} "
          f"on {os.cpu_count()} CPUs")
    res["first_frame_s"] = first_frame(engine, portrait)

    short = speech(8.0, seed=4)  # warm-up + per-graph breakdown (40 ms chunks: one frame per call)
    stream(engine, portrait, face, short[:16000])
    lat, _, parts = stream(engine, portrait, face, short)
    res["ort_breakdown_ms"] = parts
    # throughput as `generate` streams (200 ms chunks: rendering overlaps the next step when enabled)
    tp_pcm = speech(20.0, seed=6)
    t = time.perf_counter()
    tp_lat, _, _ = stream(engine, portrait, face, tp_pcm, chunk=3200)
    tp_wall = time.perf_counter() - t
    res["throughput"] = {"chunk_ms": 200, "fps": len(tp_lat) / tp_wall, "rtf": tp_wall / 20.0,
                         "overlap": engine.overlap}

    long_pcm = speech(args.frames * engine.hop / engine.rate, seed=5)
    t = time.perf_counter()
    lat, rss, _ = stream(engine, portrait, face, long_pcm)
    wall = time.perf_counter() - t
    n = len(lat)
    a, b = slice(25, 75), slice(n - 50, n)
    res["ort"] = {"frames": n, "p50_ms": float(np.percentile(lat, 50) * 1e3),
                  "p99_ms": float(np.percentile(lat, 99) * 1e3),
                  "stream40_fps": n / wall, "stream40_rtf": wall / (long_pcm.size / engine.rate),
                  "frame50_ms": float(lat[a].mean() * 1e3), "frame_end_ms": float(lat[b].mean() * 1e3),
                  "rss50_mb": float(rss[a].mean()), "rss_end_mb": float(rss[b].mean()), "peak_rss_mb": peak_rss_mb()}
    print(f"  long run: {n} frames in {wall:.1f} s")

    teng, tsrc = torch_engine(args, engine.dims, threads)
    stream(teng, portrait, face, short[:16000])
    tlat, _, tparts = stream(teng, portrait, face, short)
    res["torch"] = {"source": tsrc, "p50_ms": float(np.percentile(tlat, 50) * 1e3), "mean_ms": float(tlat.mean() * 1e3),
                    "fps": 1 / tlat.mean(), "breakdown_ms": tparts}
    res["ort_short_mean_ms"] = float(lat.mean() * 1e3)
    res["cache"] = cache_vs_recompute(teng, face)
    counts = [int(c) for c in args.sessions.split(",") if c.strip()]
    res["batching"] = batching(engine, face, counts)
    res["loadavg_end"] = os.getloadavg()
    res["bench_seconds"] = time.perf_counter() - t_start

    report(res)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    plot(lat, rss, res, args.plot)
    print(f"wrote {args.json} and {args.plot}")
    return 0


def report(r: dict) -> None:
    o, t, c, bt = r["ort"], r["torch"], r["cache"], r["batching"]
    one = bt.get(1, {}).get("batched") or o["stream40_fps"]
    rows = [
        ("per-frame latency p50 / p99 (ORT)", f"{o['p50_ms']:.1f} / {o['p99_ms']:.1f} ms", ""),
        ("frames/s, one session (ORT, 200 ms chunks)", f"{r['throughput']['fps']:.1f} (overlap "
         f"{r['throughput']['overlap']})", ">= 50"),
        ("real-time factor (compute / audio)", f"{r['throughput']['rtf']:.2f}", "<= 0.5"),
        ("frames/s streaming 40 ms chunks (long run)", f"{o['stream40_fps']:.1f}", ""),
        ("first frame (portrait in -> frame out)", f"{r['first_frame_s'] * 1e3:.0f} ms", "<= 150 ms"),
        ("peak RSS", f"{o['peak_rss_mb']:.0f} MB", ""),
        ("ORT vs PyTorch eager per frame", f"{t['mean_ms']:.1f} / {r['ort_short_mean_ms']:.1f} ms = "
         f"{t['mean_ms'] / r['ort_short_mean_ms']:.2f}x", ">= 1.5x"),
        ("PyTorch decoder: cached step vs recompute", f"{c['cached_ms']:.1f} vs {c['recompute_ms']:.1f} ms "
         f"(same tokens: {c['same_tokens']})", ""),
        (f"frame ~50 vs ~{o['frames']} cost", f"{o['frame50_ms']:.1f} vs {o['frame_end_ms']:.1f} ms = "
         f"{o['frame_end_ms'] / o['frame50_ms']:.2f}", "<= 1.1"),
        (f"RSS at frame ~50 vs ~{o['frames']}", f"{o['rss50_mb']:.0f} vs {o['rss_end_mb']:.0f} MB "
         f"({(o['rss_end_mb'] / o['rss50_mb'] - 1) * 100:+.1f}%)", "within 5%"),
    ]
    for n, v in bt.items():
        rows.append((f"{n} sessions: batched / sequential frames/s", f"{v['batched']:.1f} / {v['sequential']:.1f} "
                     f"({v['batched'] / one:.2f}x one session)", ">= 0.9x" if n == 4 else ""))
    rows.append(("ORT time per frame by part", ", ".join(f"{k} {v:.1f}" for k, v in r["ort_breakdown_ms"].items())
                 + " ms", ""))
    rows.append(("load average start / end", f"{r['loadavg_start'][0]:.1f} / {r['loadavg_end'][0]:.1f}", ""))
    w = max(len(a) for a, _, _ in rows)
    print(f"\n{'measure':<{w}}  {'value':<44} target")
    for a, b, tgt in rows:
        print(f"{a:<{w}}  {b:<44} {tgt}")


def plot(lat: np.ndarray, rss: np.ndarray, r: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot(lat * 1e3, lw=0.4, color="tab:blue", label="per-frame latency")
    k = 50
    if lat.size > k:
        ax.plot(np.arange(k - 1, lat.size), np.convolve(lat * 1e3, np.ones(k) / k, "valid"), color="k", lw=1.2,
                label=f"mean of {k}")
    ax.set_xlabel("frame")
    ax.set_ylabel("ms")
    ax.set_ylim(0, max(1.0, float(np.percentile(lat * 1e3, 99.5)) * 1.3))
    ax2 = ax.twinx()
    ax2.plot(rss, color="tab:red", lw=1.0, label="RSS")
    ax2.set_ylabel("RSS MB")
    ax2.set_ylim(0, rss.max() * 1.2)
    ax.set_title(f"EARTalking {r['model']} via ONNX Runtime, {r['threads']} threads: "
                 f"{r['ort']['stream40_fps']:.1f} frames/s streaming 40 ms chunks")
    fig.legend(loc="upper right")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)

"""Benchmark the CPU Triton deployment against the embedded runtime (same ONNX graphs, same machine).

Usage: python -m eartalking.triton_repo.bench --repo build/triton_repo [--json out/bench_triton.json]
       [--frames 50] [--sessions 1,2,4,8] [--no-perf-analyzer]

Measures, side by side:
- embedded: ``runtime.session`` in this process; per-frame latency (push one frame of audio -> its frame) at
  one session, and aggregate frames/s with N sessions stepped together (``step_many``).
- triton talking_head: our streaming client (tritonclient gRPC), one stream per session in its own thread,
  lock-step (push one frame of audio, wait for the frame): per-frame latency, first-frame latency (portrait
  sent -> first frame), aggregate frames/s and errors at N concurrent sessions.
- perf_analyzer (from the tritonclient==2.51.0 wheel, fetched into .cache with ``pip download --no-deps``)
  against ``talking_head_step`` with sequences at concurrency 1/2/4/8: throughput and p50/p99 latency.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

from eartalking.cli import UserError

from . import client as tc
from .serve import TritonServer, libs_dir


def _pcm(seed: int, frames: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = frames * 640
    env = np.abs(np.sin(np.linspace(0, 7, n))) ** 2
    return (rng.standard_normal(n) * env * 6000).astype(np.int16)


def _portrait() -> np.ndarray:
    from skimage import data

    return data.astronaut()


def embedded(onnx: Path, frames: int, sessions: list[int]) -> dict:
    from eartalking.runtime.session import Engine, Session, step_many

    eng = Engine(onnx, threads=1)
    out: dict = {}
    Session(eng, _portrait()).close()  # warm-up (first face detection)
    t_open = time.perf_counter()
    s = Session(eng, _portrait(), crop_only=False)
    pcm, lat, first = _pcm(0, frames + 3), [], None
    for a in range(0, len(pcm), 640):
        t0 = time.perf_counter()
        got = s.push_audio(pcm[a : a + 640])
        if got:
            lat.append(time.perf_counter() - t0)
            first = first or time.perf_counter() - t_open
    s.close()
    out["latency_ms_p50"] = 1e3 * float(np.median(lat))
    out["first_frame_ms"] = 1e3 * first
    for n in sessions:
        ss = [Session(eng, _portrait()) for _ in range(n)]
        made, t0 = 0, time.perf_counter()
        for a in range(0, frames * 640, 640):
            for k, x in enumerate(ss):
                x.feed(_pcm(k, frames)[a : a + 640])
            made += sum(len(f) for f in step_many(ss))
        out[f"fps_{n}"] = made / (time.perf_counter() - t0)
        for x in ss:
            x.close()
    return out


def _one_session(url: str, seq: int, frames: int, res: dict) -> None:
    sc = tc.StreamClient(url)
    try:
        pcm, lat, got, errors = _pcm(seq, frames + 3), [], 0, 0
        t0 = time.perf_counter()
        sc.open(seq, _portrait())
        ev = sc.events(seq, timeout=60)
        first = None
        for a in range(0, len(pcm), 640):
            ts = time.perf_counter()
            sc.push(seq, pcm[a : a + 640])
            if a // 640 >= 2:  # the lookahead: from the third chunk on, each chunk completes one frame
                while True:
                    e = next(ev)
                    if e.kind == "error":
                        errors += 1
                        raise RuntimeError(e.message)
                    if e.kind == "frame":
                        got += 1
                        lat.append(e.t - ts)
                        first = first or e.t - t0
                        break
        sc.end(seq)
        for e in ev:
            got += e.kind == "frame"
            errors += e.kind == "error"
        res[seq] = {"latency": lat, "frames": got, "errors": errors, "first": first,
                    "wall": time.perf_counter() - t0}
    except Exception as e:  # noqa: BLE001 (counted as an error of this session)
        res[seq] = {"latency": [], "frames": 0, "errors": 1, "first": None, "wall": 0.0, "message": str(e)}
    finally:
        sc.close()


def streaming(url: str, frames: int, sessions: list[int]) -> dict:
    warm: dict = {}
    _one_session(url, 999, 5, warm)  # warm-up: the server's first face detection and graph runs
    out: dict = {"cold_first_frame_ms": 1e3 * (warm[999]["first"] or float("nan"))}
    for n in sessions:
        res: dict = {}
        t0 = time.perf_counter()
        th = [threading.Thread(target=_one_session, args=(url, 1000 * n + k, frames, res)) for k in range(n)]
        for t in th:
            t.start()
        for t in th:
            t.join()
        wall = time.perf_counter() - t0
        lat = [x for r in res.values() for x in r["latency"]]
        out[f"sessions_{n}"] = {
            "fps": sum(r["frames"] for r in res.values()) / wall, "errors": sum(r["errors"] for r in res.values()),
            "latency_ms_p50": 1e3 * float(np.median(lat)) if lat else None,
            "first_frame_ms": 1e3 * float(np.median([r["first"] for r in res.values() if r["first"]] or [np.nan])),
            "messages": [r["message"] for r in res.values() if "message" in r][:3]}
    return out


def perf_analyzer_bin(cache: Path) -> Path:
    """Fetch tritonclient==2.51.0 (the last wheel whose perf_analyzer runs on this glibc) and extract the binary."""
    dst = cache / "perf_analyzer" / "perf_analyzer"
    if dst.is_file():
        return dst
    dst.parent.mkdir(parents=True, exist_ok=True)
    wheels = list(dst.parent.glob("tritonclient-2.51.0-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "tritonclient==2.51.0", "-d",
                        str(dst.parent)], check=True)
        wheels = list(dst.parent.glob("tritonclient-2.51.0-*.whl"))
    with zipfile.ZipFile(wheels[0]) as z:
        dst.write_bytes(z.read("tritonclient-2.51.0.data/data/bin/perf_analyzer"))
    dst.chmod(0o755)
    return dst


def pa_libs(cache: Path) -> Path:
    """A folder of the sonames perf_analyzer asks for (libb64.so.0d, libcudart.so.12), linked to the
    hash-suffixed copies auditwheel put into ``nvidia_pytriton.libs``."""
    d = cache / "perf_analyzer" / "lib"
    d.mkdir(parents=True, exist_ok=True)
    for soname, prefix in (("libb64.so.0d", "libb64-"), ("libcudart.so.12", "libcudart-")):
        found = sorted(libs_dir().glob(prefix + "*"))
        if not found:
            raise UserError(f"{libs_dir()} has no {prefix}*: reinstall nvidia-pytriton")
        link = d / soname
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(found[0])
    return d


def perf_analyzer(srv: TritonServer, dims: dict, cache: Path, concurrency: list[int], seq_len: int) -> dict:
    exe = perf_analyzer_bin(cache)
    S, C, N, K = (int(dims[k]) for k in ("image_size", "n_controls", "tokens_per_frame", "codebook_size"))
    rng = np.random.default_rng(0)
    img = rng.random((3, S, S), np.float32)
    wins = tc.step_windows(_pcm(0, seq_len), dims)

    def step(t: int) -> dict:
        return {"image": {"content": img.ravel().tolist(), "shape": [3, S, S]},
                "pcm": {"content": wins[t].tolist(), "shape": [len(wins[t])]},
                "controls": [0.0] * C, "control_mask": [0.0] * C, "temperature": [0.0],
                "gumbel": {"content": [0.0] * (N * K), "shape": [N, K]}}

    data = cache / "perf_analyzer" / "step_data.json"
    data.write_text(json.dumps({"data": [[step(t) for t in range(seq_len)]]}))
    env = dict(os.environ, LD_LIBRARY_PATH=f"{pa_libs(cache)}:{os.environ.get('LD_LIBRARY_PATH', '')}")
    out = {}
    for c in concurrency:
        csv = cache / "perf_analyzer" / f"pa_{c}.csv"
        cmd = [str(exe), "-m", "talking_head_step", "-u", srv.grpc_url, "-i", "grpc", "--input-data", str(data),
               "--sequence-length", str(seq_len), "--concurrency-range", str(c), "--measurement-interval", "3000",
               "--stability-percentage", "200", "--max-trials", "3", "-f", str(csv), "--percentile", "99"]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            out[c] = {"error": (p.stderr or p.stdout)[-400:]}
            continue
        rows = [line.split(",") for line in csv.read_text().splitlines()]
        row = dict(zip(rows[0], rows[1], strict=False))
        out[c] = {"infer_per_s": float(row["Inferences/Second"]), "p50_ms": float(row["p50 latency"]) / 1e3,
                  "p99_ms": float(row["p99 latency"]) / 1e3}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repo", default="build/triton_repo")
    p.add_argument("--json", default=None)
    p.add_argument("--frames", type=int, default=50)
    p.add_argument("--sessions", default="1,2,4,8")
    p.add_argument("--no-perf-analyzer", action="store_true")
    p.add_argument("--cache", default=".cache")
    a = p.parse_args(argv)
    repo = Path(a.repo)
    onnx = repo / "talking_head" / "1" / "graphs"
    if not (onnx / "step_decoder.onnx").is_file():
        raise UserError(f"{repo}: no CPU-flavour repository with graphs; run `make triton-repo FLAVOR=cpu`")
    sessions = [int(x) for x in a.sessions.split(",")]
    from eartalking.runtime.backends import read_onnx_metadata

    dims = {k: int(v) for k, v in read_onnx_metadata(onnx / "step_decoder.onnx").items() if v.isdigit()}
    res = {"embedded": embedded(onnx, a.frames, sorted({1, 4} | set(sessions)))}
    with TritonServer(repo) as srv:
        res["triton_stream"] = streaming(srv.grpc_url, a.frames, sessions)
        if not a.no_perf_analyzer:
            res["perf_analyzer_step"] = perf_analyzer(srv, dims, Path(a.cache), sessions, seq_len=a.frames)
    e, t = res["embedded"], res["triton_stream"]
    print(f"{'':24}{'embedded':>12}{'triton stream':>16}")
    print(f"{'per-frame latency ms':24}{e['latency_ms_p50']:>12.2f}{t['sessions_1']['latency_ms_p50']:>16.2f}"
          f"   ratio {t['sessions_1']['latency_ms_p50'] / e['latency_ms_p50']:.2f}")
    print(f"{'first frame ms':24}{e['first_frame_ms']:>12.1f}{t['sessions_1']['first_frame_ms']:>16.1f}"
          "   (portrait sent -> first frame, audio sent as fast as possible)")
    for n in sessions:
        r = t[f"sessions_{n}"]
        print(f"{f'fps at {n} sessions':24}{e.get(f'fps_{n}', float('nan')):>12.1f}{r['fps']:>16.1f}"
              f"   errors {r['errors']}")
    if "sessions_4" in t:
        print(f"triton aggregate fps 4 vs 1 sessions: {t['sessions_4']['fps'] / t['sessions_1']['fps']:.2f}x")
    for c, r in res.get("perf_analyzer_step", {}).items():
        print(f"perf_analyzer talking_head_step concurrency {c}: " + (
            f"{r['infer_per_s']:.1f} frames/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms"
            if "error" not in r else f"error: {r['error']}"))
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

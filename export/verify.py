"""Verify exported graphs: against PyTorch (ONNX Runtime), or TensorRT plans against ONNX Runtime.

Usage: eartalking verify --onnx build/onnx [--checkpoint DIR | --preset NAME --random-seed S]
       eartalking verify --onnx build/onnx --backend tensorrt --engines build/engines   (needs TensorRT + GPU)

ONNX Runtime (default), every check printed, exit 1 on any failure (graph, tensor, max abs/rel error):
  static     ONNX checker (full) + strict shape inference; manifest sha256 and dims; metadata_props == config
             dims; I/O == specs; every operator within TensorRT's ONNX support table (trt_support.py)
  graph      each graph vs PyTorch on fresh random inputs (tokens exact, floats atol 1e-4 rtol 1e-3); also
             through ``polygraphy run --onnxrt --load-inputs --load-outputs`` (PyTorch outputs as reference)
  stream     two sessions (greedy, seeded sampling) for 3*W+5 frames from PCM, start=1 on garbage state:
             tokens exact, K/V atol 1e-4, decoded uint8 frames within 2/255
  batch      three sessions at different frames (one starting) in one call == each alone
The model defaults to what the manifest names (checkpoint path, or preset + random seed).
``--backend tensorrt`` compares each plan with ONNX Runtime on random inputs (fp32 plans: tokens exact).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx

from eartalking.config import ModelConfig
from eartalking.export import specs as S
from eartalking.export import trt_support
from eartalking.export.build_engines import CONTAINER_TAG, sha256_file

MANIFEST = "manifest.json"


def ort_runner(onnx_dir: Path, threads: int = 1):
    """``run(graph, feed) -> {output: array}`` over ONNX Runtime CPU sessions (created on first use)."""
    import onnxruntime as ort

    sessions: dict[str, ort.InferenceSession] = {}

    def run(graph: str, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if graph not in sessions:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            sessions[graph] = ort.InferenceSession(str(onnx_dir / f"{graph}.onnx"), so,
                                                   providers=["CPUExecutionProvider"])
        sess = sessions[graph]
        names = [o.name for o in sess.get_outputs()]
        return dict(zip(names, sess.run(names, feed), strict=True))

    return run


def static_checks(cfg, model, onnx_dir: Path, manifest: dict) -> list:
    """Checker, shape inference, hashes, metadata and TensorRT table; one Check per (graph, item)."""
    from eartalking.export.compare import Check
    from eartalking.export.onnx import weights_sha256

    rows = []

    def row(graph: str, item: str, ok: bool, note: str = "") -> None:
        rows.append(Check(graph, item, "static", 0.0 if ok else float("nan"), 0.0, note or "-", ok))
        if not ok:
            print(f"  {graph}/{item}: {note}", file=sys.stderr)

    dims = {k: str(v) for k, v in cfg.dims().items()}
    row("manifest", "dims", {k: str(v) for k, v in manifest["dims"].items()} == dims, "manifest dims == config")
    row("manifest", "weights", manifest["source"].get("weights_sha256") == weights_sha256(model),
        "weights_sha256 == the model verified against")
    for name, spec in S.graph_specs(cfg).items():
        path = onnx_dir / f"{name}.onnx"
        entry = manifest["graphs"].get(name)
        if entry is None or not path.is_file():
            row(name, "present", False, f"{path} or its manifest entry is missing")
            continue
        row(name, "sha256", sha256_file(path) == entry["sha256"], "file sha256 == manifest")
        m = onnx.load(str(path))
        try:
            onnx.checker.check_model(m, full_check=True)
            onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True)
            row(name, "checker", True, "onnx checker + strict shape inference")
        except Exception as e:  # noqa: BLE001 - reported as a failed check
            row(name, "checker", False, f"{type(e).__name__}: {e}")
        meta = {p.key: p.value for p in m.metadata_props}
        bad = sorted(k for k, v in dims.items() if meta.get(k) != v)
        row(name, "metadata", not bad and meta.get("graph") == name, f"metadata dims == config (bad: {bad})")
        io_ok = ([i.name for i in m.graph.input] == [t.name for t in spec.inputs]
                 and [o.name for o in m.graph.output] == [t.name for t in spec.outputs]
                 and json.loads(meta.get("inputs", "[]")) == [t.to_dict() for t in spec.inputs])
        row(name, "io", io_ok, "graph I/O and metadata == specs")
        opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
        row(name, "opset", opset == S.OPSET, f"opset {opset} == {S.OPSET}")
        problems, warnings = trt_support.check_model(m)
        row(name, "trt_ops", not problems and not warnings, "; ".join(problems + warnings) or "within TensorRT table")
    return rows


def polygraphy_checks(onnx_dir: Path, cfg, cases: dict) -> list:
    """Re-check each graph with ``polygraphy run --onnxrt`` against saved PyTorch outputs (exit code decides)."""
    from polygraphy.comparator import RunResults
    from polygraphy.comparator.struct import IterationResult
    from polygraphy.json import save_json
    from polygraphy.logger import G_LOGGER

    from eartalking.export.compare import FLOAT_ATOL, FLOAT_RTOL, Check

    G_LOGGER.module_severity = G_LOGGER.ERROR  # keep our report readable
    exe = Path(sys.executable).with_name("polygraphy")
    if not exe.is_file():
        exe = Path(shutil.which("polygraphy") or "polygraphy")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, (feed, ref) in cases.items():
            spec = S.graph_specs(cfg)[name]
            inp, out = Path(tmp) / f"{name}_in.json", Path(tmp) / f"{name}_ref.json"
            save_json([feed], str(inp))
            RunResults([("pytorch", [IterationResult(ref, runner_name="pytorch")])]).save(str(out))
            exact = [f"{t.name}:0" for t in spec.outputs if t.dtype == "int32"]  # tokens: atol = rtol = 0
            cmd = [str(exe), "run", str(onnx_dir / f"{name}.onnx"), "--onnxrt",
                   "--load-inputs", str(inp), "--load-outputs", str(out),
                   "--atol", str(FLOAT_ATOL), *exact, "--rtol", str(FLOAT_RTOL), *exact]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                print(f"polygraphy run failed for {name}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}",
                      file=sys.stderr)
            rows.append(Check(name, "*", "polygraphy", 0.0, 0.0, "polygraphy run exit code", proc.returncode == 0))
    return rows


def tensorrt_checks(cfg, onnx_dir: Path, engine_dir: Path, rng: np.random.Generator) -> list:
    """Each plan vs ONNX Runtime on random inputs (batch 3); fp16 plans get float tolerance 1e-2."""
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    from eartalking.export.compare import Check, compare
    from eartalking.export.feeds import random_feed

    ort_run = ort_runner(onnx_dir)
    rows = []
    for name, spec in S.graph_specs(cfg).items():
        stamp_path, plan = engine_dir / f"{name}.json", engine_dir / f"{name}.plan"
        if not plan.is_file():
            rows.append(Check(name, "plan", "tensorrt", float("nan"), 0.0, f"{plan} missing", False))
            continue
        fp16 = stamp_path.is_file() and json.loads(stamp_path.read_text())["flags"]["precision"] == "fp16"
        feed = random_feed(spec, cfg, S.example_sizes(spec, batch=3, frames=5, cfg=cfg), rng)
        ref = ort_run(name, feed)
        with TrtRunner(EngineFromBytes(BytesFromPath(str(plan)))) as runner:
            got = runner.infer(feed)
        for t in spec.outputs:
            atol = 0.0 if t.dtype == "int32" else (1e-2 if fp16 else 1e-4)
            rows.append(compare(name, t.name, "tensorrt", np.asarray(got[t.name]), ref[t.name], atol))
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", default="build/onnx", help="folder with <graph>.onnx + manifest.json")
    parser.add_argument("--checkpoint", help="checkpoint to compare against (default: the manifest's source)")
    parser.add_argument("--preset", help="random-weight preset to compare against (with --random-seed)")
    parser.add_argument("--random-seed", type=int, default=None)
    parser.add_argument("--backend", choices=("onnxruntime", "tensorrt"), default="onnxruntime")
    parser.add_argument("--engines", default="build/engines", help="plans for --backend tensorrt")
    parser.add_argument("--no-polygraphy", action="store_true", help="skip the polygraphy re-check (faster)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the random inputs (default: fresh)")
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--json", help="also write every check as JSON here")


def verify(args: argparse.Namespace) -> list:
    """All checks of the chosen backend (see module docstring)."""
    from eartalking.cli import UserError

    onnx_dir = Path(args.onnx)
    if not (onnx_dir / MANIFEST).is_file():
        raise UserError(f"{onnx_dir / MANIFEST} not found: run `eartalking export --out {onnx_dir}` first")
    manifest = json.loads((onnx_dir / MANIFEST).read_text())
    rng = np.random.default_rng(args.seed)
    if args.backend == "tensorrt":  # plans vs ONNX Runtime: no torch, no model needed
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            raise UserError(
                "TensorRT is not installed here (`import tensorrt` failed). Run this check where the plans were "
                "built, e.g.\n  docker run --rm --gpus all -v $PWD:/w -w /w nvcr.io/nvidia/tensorrt:"
                f"{CONTAINER_TAG}-py3 bash -c 'pip install -e .[runtime] polygraphy && eartalking verify "
                f"--backend tensorrt --onnx {args.onnx} --engines {args.engines}'") from None
        return tensorrt_checks(ModelConfig.from_dict(manifest["config"]), onnx_dir, Path(args.engines), rng)
    from eartalking.export.onnx import load_model
    from eartalking.export.parity import batch_parity, graph_parity, streaming_parity

    src = manifest["source"]
    if args.checkpoint or args.preset:
        ckpt, preset, seed = args.checkpoint, args.preset, args.random_seed or 0
    else:
        ckpt, preset, seed = src.get("checkpoint"), src.get("preset"), src.get("random_seed", 0)
    model, cfg, _ = load_model(ckpt, preset, seed)
    run_graph = ort_runner(onnx_dir, args.threads)
    checks = static_checks(cfg, model, onnx_dir, manifest)
    graph_rows, cases = graph_parity(model, cfg, run_graph, rng)
    checks += graph_rows
    if not args.no_polygraphy:
        checks += polygraphy_checks(onnx_dir, cfg, cases)
    checks += streaming_parity(model, cfg, run_graph, rng)
    checks += batch_parity(cfg, run_graph, rng)
    return checks


def run(args: argparse.Namespace) -> int:
    checks = verify(args)
    for c in checks:
        print(c.line())
    if args.json:
        Path(args.json).write_text(json.dumps([c.__dict__ for c in checks], indent=1) + "\n")
    failed = [c for c in checks if not c.ok]
    if failed:
        print(f"verify: {len(failed)} of {len(checks)} checks FAILED:", file=sys.stderr)
        for c in failed:
            print(f"  {c.what} graph={c.graph} tensor={c.tensor} max_abs={c.max_abs:.4g} max_rel={c.max_rel:.4g} "
                  f"({c.tol})", file=sys.stderr)
        return 1
    print(f"verify: all {len(checks)} checks passed ({args.backend})")
    return 0

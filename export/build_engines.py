"""Build TensorRT plans from the exported ONNX graphs (needs TensorRT and an NVIDIA GPU).

Usage: python3 export/build_engines.py --onnx build/onnx --out build/engines [--graphs step_decoder ...]
       [--fp16 GRAPH ...] [--workspace-mib 2048] [--force]
   or: eartalking engines --onnx build/onnx --out build/engines

Reads ``<onnx>/manifest.json`` (written by ``eartalking export`` from ``export/specs.py``): for each graph its
ONNX file and sha256, build precision and TensorRT optimization profile (min/opt/max shapes). Writes
``<out>/<graph>.plan`` and ``<out>/<graph>.json``, a stamp with the TensorRT version, GPU name and compute
capability, ONNX sha256 and build flags; a plan is rebuilt only when its stamp no longer matches. The timing
cache ``<out>/timing.cache`` is reused across builds. TF32 is switched off for fp32 graphs so fp32 plans give
the same tokens as ONNX Runtime.

This file needs only the standard library and ``tensorrt`` (imported lazily), so it runs as a plain script in
NVIDIA's TensorRT container, where our venv is absent. Without TensorRT it says so, prints the container
recipe and exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":  # run as a script: keep export/ off sys.path (export/onnx.py would shadow `onnx`)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

#: NGC container whose TensorRT (10.1.0) matches the operator table we check graphs against; build plans
#: with the same release as the Triton container that will serve them (tritonserver:<same tag>-py3).
CONTAINER_TAG = "24.06"
STAMP_VERSION = 1


def container_recipe(onnx_dir: str, out_dir: str, tag: str = CONTAINER_TAG) -> str:
    return (
        "  docker run --rm --gpus all -v $PWD:/w -w /w nvcr.io/nvidia/tensorrt:" + tag + "-py3 \\\n"
        f"      python3 export/build_engines.py --onnx {onnx_dir} --out {out_dir}\n"
        "  (serve the plans with the Triton container of the same release, "
        f"nvcr.io/nvidia/tritonserver:{tag}-py3)"
    )


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_manifest(onnx_dir: Path) -> dict:
    path = onnx_dir / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `eartalking export --out {onnx_dir}` first")
    return json.loads(path.read_text())


def build_flags(entry: dict, fp16: bool, workspace_mib: int) -> dict:
    """Plain-data build settings of one graph (what the stamp records and the builder applies)."""
    precision = "fp16" if fp16 else entry["precision"]
    return {
        "precision": precision,
        "tf32": False,  # fp32 means fp32: TF32 would change tokens vs ONNX Runtime
        "workspace_mib": workspace_mib,
        "profiles": entry["trt_profiles"],
    }


def gpu_identity() -> dict:
    """Name and compute capability of the GPU the build runs on (nvidia-smi, else torch)."""
    if shutil.which("nvidia-smi"):
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader", "-i", "0"],
            check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[0]
        name, cc = (s.strip() for s in out.rsplit(",", 1))
        return {"gpu": name, "compute_capability": cc}
    try:
        import torch  # noqa: PLC0415 - optional
    except ImportError:
        torch = None
    if torch is not None and torch.cuda.is_available():
        major, minor = torch.cuda.get_device_capability(0)
        return {"gpu": torch.cuda.get_device_name(0), "compute_capability": f"{major}.{minor}"}
    raise RuntimeError("no NVIDIA GPU found (nvidia-smi absent and torch.cuda unavailable)")


def make_stamp(trt_version: str, gpu: dict, onnx_sha: str, flags: dict) -> dict:
    return {"stamp_version": STAMP_VERSION, "tensorrt": trt_version, **gpu, "onnx_sha256": onnx_sha, "flags": flags}


def needs_rebuild(plan: Path, stamp_path: Path, stamp: dict) -> bool:
    """True unless the plan exists, its stamp equals ``stamp`` and the plan's sha256 matches the stamp's."""
    if not plan.is_file() or not stamp_path.is_file():
        return True
    try:
        old = json.loads(stamp_path.read_text())
    except json.JSONDecodeError:
        return True
    plan_sha = old.pop("plan_sha256", None)
    return old != stamp or plan_sha != sha256_file(plan)


def apply_profile(trt, builder, config, network, profiles: dict) -> None:
    """Turn plain-data profiles into one TensorRT optimization profile on ``config``."""
    profile = builder.create_optimization_profile()
    names = {network.get_input(i).name for i in range(network.num_inputs)}
    for name, shapes in profiles.items():
        if name not in names:
            raise ValueError(f"profile names input {name!r}, which the network lacks (inputs: {sorted(names)})")
        profile.set_shape(name, trt.Dims(shapes["min"]), trt.Dims(shapes["opt"]), trt.Dims(shapes["max"]))
    config.add_optimization_profile(profile)


def build_plan(trt, onnx_path: Path, flags: dict, cache_path: Path) -> bytes:
    """Parse ``onnx_path`` and build a serialized plan with ``flags``; updates the timing cache file."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errs = "\n".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}:\n{errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, flags["workspace_mib"] << 20)
    if not flags["tf32"]:
        config.clear_flag(trt.BuilderFlag.TF32)
    if flags["precision"] == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    config.set_timing_cache(cache, ignore_mismatch=False)
    apply_profile(trt, builder, config, network, flags["profiles"])
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build {onnx_path} (see the log above)")
    cache_path.write_bytes(bytes(config.get_timing_cache().serialize()))
    return bytes(plan)


def build_all(trt, onnx_dir: Path, out_dir: Path, graphs: list[str] | None, fp16: set[str],
              workspace_mib: int, force: bool, gpu: dict | None = None) -> dict[str, str]:
    """Build (or keep) each graph's plan; returns graph -> "built" | "up to date"."""
    manifest = load_manifest(onnx_dir)
    names = graphs or list(manifest["graphs"])
    unknown = [g for g in (*names, *fp16) if g not in manifest["graphs"]]
    if unknown:
        raise ValueError(f"unknown graph(s) {unknown}; the manifest has {list(manifest['graphs'])}")
    out_dir.mkdir(parents=True, exist_ok=True)
    gpu = gpu or gpu_identity()
    result = {}
    for name in names:
        entry = manifest["graphs"][name]
        onnx_path = onnx_dir / entry["file"]
        onnx_sha = sha256_file(onnx_path)
        if onnx_sha != entry["sha256"]:
            raise RuntimeError(f"{onnx_path} sha256 {onnx_sha[:12]} differs from the manifest's: re-run export")
        flags = build_flags(entry, name in fp16, workspace_mib)
        stamp = make_stamp(trt.__version__, gpu, onnx_sha, flags)
        plan_path, stamp_path = out_dir / f"{name}.plan", out_dir / f"{name}.json"
        if not force and not needs_rebuild(plan_path, stamp_path, stamp):
            result[name] = "up to date"
            continue
        print(f"building {name} ({flags['precision']}) ...", flush=True)
        plan_path.write_bytes(build_plan(trt, onnx_path, flags, out_dir / "timing.cache"))
        stamp_path.write_text(json.dumps({**stamp, "plan_sha256": sha256_file(plan_path)}, indent=2) + "\n")
        result[name] = "built"
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--onnx", default="build/onnx", help="folder with the ONNX graphs + manifest.json")
    parser.add_argument("--out", default="build/engines", help="folder for <graph>.plan + <graph>.json stamps")
    parser.add_argument("--graphs", nargs="*", help="only these graphs (default: all in the manifest)")
    parser.add_argument("--fp16", nargs="*", default=[], metavar="GRAPH",
                        help="build these graphs in fp16 (opt-in; check with verify --backend tensorrt)")
    parser.add_argument("--workspace-mib", type=int, default=2048)
    parser.add_argument("--force", action="store_true", help="rebuild even when the stamps match")


def run(args: argparse.Namespace) -> int:
    try:
        import tensorrt as trt  # noqa: PLC0415 - lazy: absent on CPU machines
    except ImportError:
        print(
            "build_engines: TensorRT is not installed here (the Python module `tensorrt` cannot be imported), so no\n"
            "plans were built. Build them inside NVIDIA's TensorRT container on a machine with a GPU:\n"
            + container_recipe(args.onnx, args.out),
            file=sys.stderr,
        )
        return 1
    try:
        done = build_all(trt, Path(args.onnx), Path(args.out), args.graphs, set(args.fp16), args.workspace_mib,
                         args.force)
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"build_engines: error: {e}", file=sys.stderr)
        return 1
    for name, what in done.items():
        print(f"{name}: {what} -> {Path(args.out) / (name + '.plan')}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="build_engines.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

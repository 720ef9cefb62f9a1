"""Export a checkpoint to the four ONNX graphs + manifest.json (opset 17, dims in metadata_props).

Usage: eartalking export --checkpoint checkpoints/tiny --out build/onnx
       eartalking export --preset test_small --random-seed 0 --out build/onnx   (random weights, for tests)

Writes ``<out>/<graph>.onnx`` for each graph of ``export/specs.py`` and ``<out>/manifest.json`` (checkpoint
sha256, per-graph sha256/bytes/ops/I-O/TensorRT profile/precision, opset, dims). Every graph's
``metadata_props`` carry ``ModelConfig.dims()`` plus graph facts (name, I/O as JSON, state names, opset,
profile); later stages read dimensions from there. Graphs are traced with ``torch.onnx.export(dynamo=False)``
on batch 2 with dynamic batch (and audio length) axes; ``step_decoder`` is composed from two traced parts
with an ``If`` on ``start`` (``compose.py``). Export is deterministic: the same weights give byte-identical
files. Every graph must pass the ONNX checker and TensorRT's operator table, or export fails.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch

from eartalking.config import ModelConfig
from eartalking.export import specs as S
from eartalking.export import trt_ops_data, trt_support
from eartalking.export.compose import compose_step
from eartalking.export.feeds import random_feed
from eartalking.export.wrappers import (
    CORE_INPUTS,
    CORE_OUTPUTS,
    EFFECTIVE,
    GRAPH_MODULES,
    SINK_INPUTS,
    SINK_OUTPUTS,
    SinkGraph,
    StepCoreGraph,
)
from eartalking.model.model import EARTalking

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_bytes(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def weights_sha256(model: EARTalking) -> str:
    """Hash of the state dict (names, dtypes, shapes, values in name order): identifies random weights too."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        a = t.detach().cpu().contiguous().numpy()
        h.update(f"{name}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _trace(module: torch.nn.Module, args: tuple, input_names, output_names, dyn) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about int casts of shapes are expected
        torch.onnx.export(module.eval(), args, buf, input_names=list(input_names), output_names=list(output_names),
                          dynamic_axes=dyn, opset_version=S.OPSET, dynamo=False, do_constant_folding=True)
    return onnx.load_from_string(buf.getvalue())


def _args(feed: dict[str, np.ndarray], names) -> tuple:
    return tuple(torch.from_numpy(feed[n]) for n in names)


def trace_graph(model: EARTalking, cfg: ModelConfig, spec: S.GraphSpec) -> onnx.ModelProto:
    """Trace one graph (batch 2, fixed seed example inputs) -> ONNX model with the spec's I/O names."""
    rng = np.random.default_rng(1234)
    sizes = S.example_sizes(spec, batch=2, frames=3, cfg=cfg)
    feed = random_feed(spec, cfg, sizes, rng)
    dyn = S.dynamic_axes(spec)
    if spec.state:  # step_decoder: two parts joined by an If on start
        core_dyn = {n: {0: "batch"} for n in (*CORE_INPUTS, *CORE_OUTPUTS)}
        core_feed = {EFFECTIVE.get(k, k): v for k, v in feed.items()}
        core = _trace(StepCoreGraph(model), _args(core_feed, CORE_INPUTS), CORE_INPUTS, CORE_OUTPUTS, core_dyn)
        sink = _trace(SinkGraph(model), _args(feed, SINK_INPUTS), SINK_INPUTS, SINK_OUTPUTS,
                      {n: {0: "batch"} for n in (*SINK_INPUTS, *SINK_OUTPUTS)})
        return compose_step(core, sink, spec)
    names_in = [t.name for t in spec.inputs]
    return _trace(GRAPH_MODULES[spec.name](model), _args(feed, names_in), names_in,
                  [t.name for t in spec.outputs], dyn)


def graph_metadata(cfg: ModelConfig, spec: S.GraphSpec, weights_sha: str) -> dict[str, str]:
    """metadata_props of one graph: every dimension of the config plus this graph's own facts."""
    meta = {k: str(v) for k, v in cfg.dims().items()}
    meta.update({
        "graph": spec.name,
        "opset": str(S.OPSET),
        "inputs": json.dumps([t.to_dict() for t in spec.inputs]),
        "outputs": json.dumps([t.to_dict() for t in spec.outputs]),
        "state": ",".join(spec.state),
        "precision": spec.precision,
        "trt_profiles": json.dumps(S.trt_profiles(spec)),
        "axes": json.dumps({k: list(v) for k, v in spec.axes.items()}),
        "weights_sha256": weights_sha,
        "greedy": cfg.decoder.greedy,
        "code_mean_temperature": str(cfg.decoder.code_mean_temperature),
        "code_mean_cells": ",".join(map(str, cfg.decoder.code_mean_cells)),
        "code_mean_cells_temperature": str(cfg.decoder.code_mean_cells_temperature),
        "code_mean_gain_cells": ",".join(map(str, cfg.decoder.code_mean_gain_cells)),
        "code_mean_gain": str(cfg.decoder.code_mean_gain),
        "isolated_cells": ",".join(map(str, cfg.decoder.isolated_cells)),
        "eye_state_cells": ",".join(map(str, cfg.decoder.eye_state_cells)),
        "eye_state_threshold": str(cfg.decoder.eye_state_threshold),
        "eye_state_absent_threshold": str(cfg.decoder.eye_state_absent_threshold),
        "eye_unblend": str(cfg.tokenizer.eye_unblend).lower(),
        "eye_unblend_axes": ",".join(map(str, cfg.tokenizer.eye_unblend_axes)),
        "eye_refiner_shut_only": str(cfg.tokenizer.eye_refiner_shut_only).lower(),
        "mouth_hide": str(cfg.tokenizer.mouth_hide).lower(),
        "mouth_hide_features": str(cfg.tokenizer.mouth_hide_features).lower(),
        "mouth_hide_axes": ",".join(map(str, cfg.tokenizer.mouth_hide_axes)),
        "isolated_controls": ",".join(cfg.decoder.isolated_controls),
        "sampling": f"{cfg.decoder.greedy} at temperature 0 (code_mean: round the expected FSQ digits under "
                    f"softmax(logits / {cfg.decoder.code_mean_temperature})"
                    + (f"; cells {list(cfg.decoder.code_mean_cells)} at {cfg.decoder.code_mean_cells_temperature}"
                       if cfg.decoder.code_mean_cells else "")
                    + (f"; cells {list(cfg.decoder.code_mean_gain_cells)} moved from the portrait's digits by x"
                       f"{cfg.decoder.code_mean_gain}" if cfg.decoder.code_mean_gain_cells else "")
                    + (f"; cells {list(cfg.decoder.eye_state_cells)} as one shut/open state at "
                       f"{cfg.decoder.eye_state_threshold} shut mass ({cfg.decoder.eye_state_absent_threshold} "
                       "without a blink control)" if cfg.decoder.eye_state_cells else "") + "); "
                    "else argmax(topk(logits, top_k)/temperature + gumbel)",
    })
    return meta


def finalize(model: onnx.ModelProto, cfg: ModelConfig, spec: S.GraphSpec, weights_sha: str) -> onnx.ModelProto:
    """Name the graph, write metadata, check it (ONNX checker + TensorRT table); raise on any problem."""
    model.graph.name = spec.name
    model.doc_string = spec.doc
    del model.metadata_props[:]
    for k, v in sorted(graph_metadata(cfg, spec, weights_sha).items()):
        model.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(model, full_check=True)
    names_in = [i.name for i in model.graph.input]
    names_out = [o.name for o in model.graph.output]
    if names_in != [t.name for t in spec.inputs] or names_out != [t.name for t in spec.outputs]:
        raise RuntimeError(f"{spec.name}: graph I/O {names_in} -> {names_out} differs from its spec")
    problems, _ = trt_support.check_model(model)
    if problems:
        raise RuntimeError(f"{spec.name}: outside TensorRT {trt_ops_data.TENSORRT_VERSION}'s ONNX support:\n  "
                           + "\n  ".join(problems))
    return model


def export_all(model: EARTalking, cfg: ModelConfig, out: Path, source: dict,
               graphs: list[str] | None = None) -> dict:
    """Export the graphs of ``cfg`` into ``out``; write and return the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    wsha = weights_sha256(model)
    all_specs = S.graph_specs(cfg)
    entries = {}
    for name, spec in all_specs.items():
        if graphs and name not in graphs:
            continue
        m = finalize(trace_graph(model, cfg, spec), cfg, spec, wsha)
        data = m.SerializeToString(deterministic=True)
        (out / f"{name}.onnx").write_bytes(data)
        entries[name] = {
            "file": f"{name}.onnx",
            "sha256": sha256_bytes(data),
            "bytes": len(data),
            "opset": S.OPSET,
            "precision": spec.precision,
            "ops": trt_support.used_ops(m),
            "inputs": [t.to_dict() for t in spec.inputs],
            "outputs": [t.to_dict() for t in spec.outputs],
            "state": list(spec.state),
            "axes": {k: list(v) for k, v in spec.axes.items()},
            "trt_profiles": S.trt_profiles(spec),
        }
    manifest = {
        "format": FORMAT_VERSION,
        "model_name": cfg.name,
        "source": {**source, "weights_sha256": wsha},
        "opset": S.OPSET,
        "tensorrt_table": {"version": trt_ops_data.TENSORRT_VERSION, "source": trt_ops_data.SOURCE},
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "dims": cfg.dims(),
        "config": cfg.to_dict(),
        "graphs": entries,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def load_model(checkpoint: str | None, preset: str | None, seed: int) -> tuple[EARTalking, ModelConfig, dict]:
    """(model, cfg, source description) from a checkpoint folder or a random-weight preset."""
    from eartalking.cli import UserError
    from eartalking.model import checkpoint as ckpt

    if bool(checkpoint) == bool(preset):
        raise UserError("give exactly one of --checkpoint DIR or --preset NAME (with --random-seed)")
    if checkpoint:
        model, cfg = ckpt.load(checkpoint)
        wfile = Path(checkpoint) / ckpt.WEIGHTS_FILE
        return model, cfg, {"checkpoint": str(checkpoint), "checkpoint_sha256": sha256_bytes(wfile.read_bytes())}
    from eartalking.config import PRESETS
    if preset not in PRESETS:
        raise UserError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    model = ckpt.random_model(preset, seed)
    return model, model.cfg, {"preset": preset, "random_seed": seed}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="checkpoint folder (config.json + model.safetensors)")
    parser.add_argument("--preset", help="random-weight model of this preset instead (tests): tiny, test_small, ...")
    parser.add_argument("--random-seed", type=int, default=0, help="seed of the random weights (with --preset)")
    parser.add_argument("--out", default="build/onnx", help="output folder for <graph>.onnx + manifest.json")
    parser.add_argument("--graphs", nargs="*", choices=S.GRAPH_NAMES, help="only these graphs (default: all)")


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model, cfg, source = load_model(args.checkpoint, args.preset, args.random_seed)
    out = Path(args.out)
    manifest = export_all(model, cfg, out, source, args.graphs)
    for name, e in manifest["graphs"].items():
        print(f"{name:18s} {e['bytes'] / 1e6:8.2f} MB  opset {e['opset']}  sha256 {e['sha256'][:12]}  "
              f"{len(e['ops'])} op types -> {out / e['file']}")
    print(f"manifest -> {out / MANIFEST}")
    return 0

"""Render the Triton model repository from ``templates/<model>/config.pbtxt.tmpl`` and the ONNX metadata.

Usage: eartalking triton-repo --flavor cpu|gpu --onnx build/onnx [--engines build/engines] --out build/triton_repo

Every dimension comes from the graphs' ``metadata_props`` (I/O lists, sizes); nothing is hand-copied. A
``{{placeholder}}`` left after filling is an error, and every rendered config is parsed against Triton's
``ModelConfig`` proto (``tritonclient.grpc.model_config_pb2``) before it is written.

Models: the four graphs (``tokenizer_encoder``, ``audio_encoder``, ``step_decoder``, ``tokenizer_decoder``),
``talking_head`` (decoupled streaming, Python over ``runtime/session.py``) and ``talking_head_step`` (an
ensemble, one frame per request).
- cpu: the graphs are Python-backend models running the ONNX graphs through ONNX Runtime; the stateful ones
  (tokenizer_encoder/step_decoder/tokenizer_decoder inside the ensemble) keep per-sequence state keyed by
  correlation id under ``sequence_batching`` (oldest), freed at END and after the idle timeout.
- gpu: ``tensorrt_plan`` models (plans from ``--engines``); ``step_decoder`` under ``sequence_batching``
  (oldest) with implicit state ``in_*`` -> ``out_*`` and START mapped to its ``start`` input; the stateless
  graphs use dynamic batching.
- ``talking_head`` (``--talking-head-graphs``): with ``bls`` (the gpu default) it sends ``audio_encoder`` and
  ``step_decoder`` requests to those models (BLS, one correlation id per session, START on its first frame and
  END on its last), so Triton batches the decoder across every session and instance and keeps its state;
  with ``process`` (the cpu default: one CPU gains nothing from the extra hop) it runs every graph itself.
  The portrait graphs (``tokenizer_encoder``/``tokenizer_decoder``) always run in its process, so the
  reference features never cross a process boundary per frame.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from eartalking.cli import UserError

HERE = Path(__file__).resolve().parent
GRAPHS = ("tokenizer_encoder", "tokenizer_decoder", "audio_encoder", "step_decoder")
MODELS = (*GRAPHS, "talking_head", "talking_head_step")
STATEFUL_CPU = ("tokenizer_encoder", "tokenizer_decoder", "step_decoder")
PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_]+)\s*\}\}")
TYPES = {"float32": "TYPE_FP32", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "uint8": "TYPE_UINT8"}


@dataclass
class Options:
    flavor: str = "cpu"
    idle_s: float = 60.0
    max_sequences: int = 16
    queue_delay_us: int = 100
    instances: int = 1
    threads: int = 1
    #: how ``talking_head`` runs audio_encoder/step_decoder: "bls" (requests to the graph models, batched by
    #: Triton across sessions and instances), "process" (in its own process), "auto" (gpu: bls, cpu: process)
    talking_head_graphs: str = "auto"

    def graph_calls(self) -> str:
        if self.talking_head_graphs not in ("auto", "bls", "process"):
            raise UserError(f"--talking-head-graphs must be auto, bls or process, got {self.talking_head_graphs!r}")
        if self.talking_head_graphs != "auto":
            return self.talking_head_graphs
        return "bls" if self.flavor == "gpu" else "process"


def read_graphs(onnx_dir: Path) -> dict[str, dict]:
    """metadata_props of each graph, JSON values decoded."""
    from eartalking.runtime.backends import read_onnx_metadata

    missing = [g for g in GRAPHS if not (onnx_dir / f"{g}.onnx").is_file()]
    if missing:
        raise UserError(f"{onnx_dir}: missing ONNX graphs {missing}; run `eartalking export` first")
    out = {}
    for g in GRAPHS:
        meta = {}
        for k, v in read_onnx_metadata(onnx_dir / f"{g}.onnx").items():
            try:
                meta[k] = json.loads(v)
            except ValueError:
                meta[k] = v
        for k in ("inputs", "outputs", "axes"):
            if k not in meta:
                raise UserError(f"{onnx_dir / g}.onnx: metadata lacks {k!r}; re-export with `eartalking export`")
        out[g] = meta
    return out


def _tensor(t: dict, optional: bool = False, dims: list | None = None, reshape: list | None = None) -> str:
    shape = dims if dims is not None else [d if isinstance(d, int) else -1 for d in t["shape"][1:]]
    s = f'{{ name: "{t["name"]}" data_type: {TYPES[t["dtype"]]} dims: [ {", ".join(map(str, shape))} ]'
    if reshape is not None:
        s += f' reshape: {{ shape: [ {", ".join(map(str, reshape))} ] }}'
    return s + (" optional: true" if optional else "") + " }"


def _block(kind: str, items: list[str]) -> str:
    return f"{kind} [\n  " + ",\n  ".join(items) + "\n]"


def _controls(start_name: str, full: bool) -> str:
    ctl = [f'{{ name: "{start_name}" control [ {{ kind: CONTROL_SEQUENCE_START int32_false_true: [ 0, 1 ] }} ] }}']
    if full:
        ctl += ['{ name: "END" control [ { kind: CONTROL_SEQUENCE_END int32_false_true: [ 0, 1 ] } ] }',
                '{ name: "READY" control [ { kind: CONTROL_SEQUENCE_READY int32_false_true: [ 0, 1 ] } ] }',
                '{ name: "CORRID" control [ { kind: CONTROL_SEQUENCE_CORRID data_type: TYPE_UINT64 } ] }']
    return "control_input [\n    " + ",\n    ".join(ctl) + "\n  ]"


def graph_context(g: str, meta: dict, dims: dict, o: Options) -> dict[str, str]:
    """backend/inputs/outputs/scheduling/instances/parameters of one graph model for the flavour."""
    gpu = o.flavor == "gpu"
    ins, outs = list(meta["inputs"]), list(meta["outputs"])
    S, A, Da = dims["image_size"], dims["audio_tokens_per_frame"], dims["audio_dim"]
    image = {"name": "image", "dtype": "float32", "shape": ["batch", 3, S, S]}
    state: list[str] = []
    in_items: list[str] = []
    for t in ins:
        if g == "step_decoder" and (t["name"] == "start" or t["name"].startswith("in_")):
            continue  # START control / implicit (gpu) or per-sequence (cpu) state
        if g == "step_decoder" and t["name"] == "audio_tokens":  # [1, A, Da] per request (audio_encoder's output)
            in_items.append(_tensor(t, dims=[1, A, Da], reshape=[A, Da]))
        elif g == "tokenizer_decoder" and not gpu and t["name"].startswith("ref_"):
            continue  # cpu: reference features stay in this model's process, seeded from the portrait at START
        else:
            in_items.append(_tensor(t))
    if g == "tokenizer_decoder" and not gpu:
        in_items.append(_tensor(image))
    out_items = []
    for t in outs:
        if t["name"].startswith("out_") or (g == "tokenizer_encoder" and not gpu and t["name"].startswith("ref_")):
            continue
        out_items.append(_tensor(t))
    if g == "step_decoder" and gpu:
        for name in meta.get("state", "").split(","):
            t = next(x for x in ins if x["name"] == f"in_{name}")
            shape = ", ".join(str(d) for d in t["shape"][1:])
            state.append(f'{{ input_name: "in_{name}" output_name: "out_{name}" data_type: {TYPES[t["dtype"]]} '
                         f'dims: [ {shape} ] initial_state: {{ data_type: {TYPES[t["dtype"]]} dims: [ {shape} ] '
                         f'zero_data: true name: "zero_{name}" }} }}')
    stateful = (g == "step_decoder") if gpu else (g in STATEFUL_CPU)
    if stateful:
        sched = (f"sequence_batching {{\n  max_sequence_idle_microseconds: {int(o.idle_s * 1e6)}\n"
                 f"  oldest {{ max_candidate_sequences: {o.max_sequences} "
                 f"max_queue_delay_microseconds: {o.queue_delay_us} }}\n"
                 f"  {_controls('start' if gpu else 'START', full=not gpu)}\n")
        if state:
            sched += "  state [\n    " + ",\n    ".join(state) + "\n  ]\n"
        sched += "}"
    else:
        sched = f"dynamic_batching {{ max_queue_delay_microseconds: {o.queue_delay_us} }}"
    kind = "KIND_GPU" if gpu else "KIND_CPU"
    params = "" if gpu else _params({"idle_timeout_s": o.idle_s, "threads": o.threads})
    return {"backend": 'platform: "tensorrt_plan"' if gpu else 'backend: "python"',
            "inputs": _block("input", in_items), "outputs": _block("output", out_items), "scheduling": sched,
            "instance_group": f"instance_group [ {{ kind: {kind} count: {o.instances} }} ]", "parameters": params}


def _params(p: dict) -> str:
    return "parameters [\n  " + ",\n  ".join(
        f'{{ key: "{k}" value: {{ string_value: "{v}" }} }}' for k, v in p.items()) + "\n]"


def fill(text: str, ctx: dict[str, object], where: str) -> str:
    """Replace ``{{key}}``; an unknown key or a leftover placeholder is an error."""
    out = PLACEHOLDER.sub(lambda m: str(ctx[m.group(1)]) if m.group(1) in ctx else m.group(0), text)
    left = sorted(set(PLACEHOLDER.findall(out)))
    if left:
        raise UserError(f"{where}: placeholders left unfilled: {', '.join(left)} (no such value in the ONNX "
                        "metadata or the render options)")
    return out


def check_config(text: str, where: str) -> None:
    """Parse with Triton's ModelConfig proto (skipped with a note if tritonclient is absent)."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return
    try:
        text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise UserError(f"{where}: rendered config does not parse as a Triton ModelConfig: {e}") from None


def render_configs(graphs: dict[str, dict], o: Options, templates: Path = HERE / "templates") -> dict[str, str]:
    """model name -> rendered config.pbtxt text."""
    if o.flavor not in ("cpu", "gpu"):
        raise UserError(f"--flavor must be cpu or gpu, got {o.flavor!r}")
    dims = {k: v for k, v in graphs["step_decoder"].items() if isinstance(v, int)}
    batch_max = int(graphs["step_decoder"]["axes"]["batch"][2])
    gpu = o.flavor == "gpu"
    n_refs = len(graphs["tokenizer_decoder"]["inputs"]) - 1
    base = {**{k: v for k, v in dims.items()}, "flavor": o.flavor, "max_batch_size": batch_max,
            "idle_us": int(o.idle_s * 1e6), "idle_s": o.idle_s, "max_sequences": o.max_sequences,
            "queue_delay_us": o.queue_delay_us, "threads": o.threads,
            "graph_backend": "tensorrt" if gpu else "onnxruntime", "graph_calls": o.graph_calls(),
            "frame_pcm": dims["audio_left_context"] + dims["samples_per_frame"],
            "encoder_ref_outputs": "\n      ".join(f'output_map {{ key: "ref_{i}" value: "ref_{i}" }}'
                                                   for i in range(n_refs)) if gpu else "",
            "decoder_portrait_inputs": "\n      ".join(f'input_map {{ key: "ref_{i}" value: "ref_{i}" }}'
                                                       for i in range(n_refs)) if gpu
            else 'input_map { key: "image" value: "image" }'}
    out = {}
    for m in MODELS:
        tmpl = templates / m / "config.pbtxt.tmpl"
        if not tmpl.is_file():
            raise UserError(f"template missing: {tmpl}")
        ctx = dict(base)
        if m in GRAPHS:
            ctx |= graph_context(m, graphs[m], dims, o)
        text = fill(tmpl.read_text(), ctx, str(tmpl))
        check_config(text, str(tmpl))
        out[m] = text
    return out


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def render(onnx_dir: Path, out: Path, o: Options, engines: Path | None = None) -> list[str]:
    """Write the repository; returns notes (e.g. GPU plans not yet built)."""
    graphs = read_graphs(onnx_dir)
    configs = render_configs(graphs, o)
    if out.exists():
        if any(out.iterdir()) and not any(out.glob("*/config.pbtxt")):
            raise UserError(f"{out} exists and is not a model repository; refusing to overwrite it")
        shutil.rmtree(out)
    notes = []
    gpu = o.flavor == "gpu"
    for m, text in configs.items():
        d = out / m
        (d / "1").mkdir(parents=True)
        (d / "config.pbtxt").write_text(text)
        if m == "talking_head_step":
            continue
        src_py = HERE / "models" / m / "1" / "model.py"
        if m == "talking_head" or not gpu:
            shutil.copy2(src_py, d / "1" / "model.py")
            for g in GRAPHS:
                _link(onnx_dir / f"{g}.onnx", d / "1" / "graphs" / ("onnx" if gpu else "") / f"{g}.onnx")
        if gpu:
            for g in (GRAPHS if m == "talking_head" else (m,)):
                plan = engines / f"{g}.plan" if engines else None
                if plan is None or not plan.is_file():
                    notes.append(f"{m}: TensorRT plan {g}.plan not found (build it with `make engines` on a GPU)")
                    continue
                _link(plan, d / "1" / ("graphs" if m == "talking_head" else "") / (f"{g}.plan" if m == "talking_head"
                                                                                   else "model.plan"))
    return notes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--flavor", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--onnx", default="build/onnx", help="folder with the four exported graphs")
    p.add_argument("--engines", default=None, help="folder with <graph>.plan (gpu flavour)")
    p.add_argument("--out", default="build/triton_repo")
    p.add_argument("--idle-timeout-s", type=float, default=60.0,
                   help="free a sequence after this long without requests (max_sequence_idle_microseconds)")
    p.add_argument("--max-sequences", type=int, default=16, help="sequence batcher max_candidate_sequences")
    p.add_argument("--queue-delay-us", type=int, default=100, help="batcher max_queue_delay_microseconds")
    p.add_argument("--instances", type=int, default=1, help="instances per graph model")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads per Python model (cpu)")
    p.add_argument("--talking-head-graphs", choices=("auto", "bls", "process"), default="auto",
                   help="where talking_head runs audio_encoder and step_decoder: bls = BLS requests to the graph "
                        "models (Triton batches all sessions of all instances; decoder state stays in the server), "
                        "process = in talking_head's own process (fewest hops on one CPU); auto = bls on gpu, "
                        "process on cpu. The portrait graphs always run in process (their features stay local)")


def run(args: argparse.Namespace) -> int:
    if args.idle_timeout_s <= 0 or args.max_sequences < 1 or args.instances < 1 or args.threads < 1:
        raise UserError("--idle-timeout-s must be > 0 and --max-sequences/--instances/--threads >= 1")
    o = Options(args.flavor, args.idle_timeout_s, args.max_sequences, args.queue_delay_us, args.instances, args.threads,
                args.talking_head_graphs)
    engines = Path(args.engines) if args.engines else None
    notes = render(Path(args.onnx), Path(args.out), o, engines)
    for n in notes:
        print("note:", n)
    print(f"rendered {len(MODELS)} models ({args.flavor}) -> {args.out}")
    return 0

"""Graph specifications: the single source of truth for every exported graph.

One :class:`GraphSpec` per graph (``tokenizer_encoder``, ``tokenizer_decoder``, ``audio_encoder``,
``step_decoder``). The graph name is also the ONNX file name, the TensorRT engine name and the Triton
model name. Export, verify, the engine builder and the Triton renderer all read these specs (or the
copy written into ``manifest.json`` / ONNX ``metadata_props``); no code special-cases a graph name.

Shapes are tuples whose entries are ints (static, from ``ModelConfig``) or symbolic axis names:
  ``batch``   sessions in one call (dynamic everywhere; TensorRT profile 1 / 4 / 16)
  ``samples`` PCM samples of an ``audio_encoder`` chunk = ``audio_left_context + frames * samples_per_frame``
  ``frames``  whole video frames of audio tokens an ``audio_encoder`` chunk yields

``step_decoder`` state is explicit I/O in pairs ``in_<name>`` -> ``out_<name>`` (see ``STATE_NAMES``), so
Triton's implicit state maps onto it directly; ``start`` = 1 makes the graph compute the sink K/V from
``ref_tokens`` and reset the window (no outside seeding of the state is needed).

TensorRT profiles are plain data (:func:`trt_profiles`), testable without TensorRT.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from eartalking.config import ModelConfig

OPSET = 17
GRAPH_NAMES: tuple[str, ...] = ("tokenizer_encoder", "tokenizer_decoder", "audio_encoder", "step_decoder")
#: step_decoder state, each an ``in_<name>`` input and an ``out_<name>`` output.
STATE_NAMES: tuple[str, ...] = ("sink_k", "sink_v", "window_k", "window_v", "prev_tokens", "frame")
#: TensorRT optimization profile of the batch axis (min, opt, max).
BATCH_PROFILE: tuple[int, int, int] = (1, 4, 16)
#: TensorRT optimization profile of ``audio_encoder`` chunk length, in whole video frames (min, opt, max).
AUDIO_FRAMES_PROFILE: tuple[int, int, int] = (1, 4, 64)
DTYPES = ("float32", "int32")


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, element type and shape (ints or symbolic axis names)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    doc: str = ""

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "doc": self.doc}


@dataclass(frozen=True)
class GraphSpec:
    """What one exported graph looks like and how TensorRT should build it."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    #: TensorRT build precision: "fp32" (default everywhere: same tokens on every backend) or "fp16"
    #: (opt-in per graph, only where ``verify --backend tensorrt`` shows parity).
    precision: str = "fp32"
    #: state names (``in_<s>`` -> ``out_<s>``); empty for stateless graphs
    state: tuple[str, ...] = ()
    #: symbolic axis -> (min, opt, max) used for TensorRT profiles
    axes: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    doc: str = ""

    def input(self, name: str) -> TensorSpec:
        return next(t for t in self.inputs if t.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(t for t in self.outputs if t.name == name)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        d["state"] = list(self.state)
        d["axes"] = {k: list(v) for k, v in self.axes.items()}
        return d


def _refs(cfg: ModelConfig) -> tuple[TensorSpec, ...]:
    return tuple(
        TensorSpec(f"ref_{i}", "float32", ("batch", c, h, w), f"portrait reference features at {h}x{w}")
        for i, (c, h, w) in enumerate(cfg.tokenizer.ref_shapes)
    )


def graph_specs(cfg: ModelConfig) -> dict[str, GraphSpec]:
    """All four graph specs for ``cfg``, keyed (and ordered) by graph name."""
    S, N = cfg.tokenizer.image_size, cfg.tokens_per_frame
    A, Da, C = cfg.audio.tokens_per_frame, cfg.audio.dim, cfg.decoder.n_controls
    L, H, dh, K = cfg.decoder.layers, cfg.decoder.heads, cfg.decoder.head_dim, cfg.tokenizer.codebook_size
    WL = cfg.window_len
    batch = {"batch": BATCH_PROFILE}
    lc, spf = cfg.audio.left_context, cfg.audio.samples_per_frame
    samples = tuple(lc + n * spf for n in AUDIO_FRAMES_PROFILE)
    image = TensorSpec("image", "float32", ("batch", 3, S, S), "RGB in 0..1")
    tokens = TensorSpec("tokens", "int32", ("batch", N), "visual tokens of one frame")
    specs = [
        GraphSpec("tokenizer_encoder", (image,), (tokens, *_refs(cfg)), axes=batch,
                  doc="portrait -> its tokens (the sink frame) and reference features; once per session"),
        GraphSpec("tokenizer_decoder", (tokens, *_refs(cfg)), (image,), axes=batch,
                  doc="one frame's tokens + the portrait's reference features -> RGB frame"),
        GraphSpec(
            "audio_encoder",
            (TensorSpec("pcm", "float32", ("batch", "samples"), "16 kHz mono PCM16/32768 with left context"),),
            (TensorSpec("audio_tokens", "float32", ("batch", "frames", A, Da)),),
            axes={**batch, "samples": samples, "frames": AUDIO_FRAMES_PROFILE},
            doc="raw PCM chunk (audio_left_context + n*samples_per_frame) -> audio tokens of n whole frames",
        ),
    ]
    state_shapes: dict[str, tuple[str, tuple[int | str, ...]]] = {
        "sink_k": ("float32", ("batch", L, H, N, dh)),
        "sink_v": ("float32", ("batch", L, H, N, dh)),
        "window_k": ("float32", ("batch", L, H, WL, dh)),
        "window_v": ("float32", ("batch", L, H, WL, dh)),
        "prev_tokens": ("int32", ("batch", N)),
        "frame": ("int32", ("batch", 1)),
    }
    step_in = (
        TensorSpec("start", "int32", ("batch", 1), "1 = first frame of a session (sink from ref_tokens, reset window)"),
        TensorSpec("ref_tokens", "int32", ("batch", N), "the portrait's tokens, every frame (the sink at "
                   "start = 1; the anchor cells' previous tokens; code_mean's gain origin)"),
        TensorSpec("audio_tokens", "float32", ("batch", A, Da), "this frame's audio tokens"),
        TensorSpec("controls", "float32", ("batch", C), "raw control values (CONTROL_RANGES units)"),
        TensorSpec("control_mask", "float32", ("batch", C), "1 = control given, 0 = absent"),
        TensorSpec("temperature", "float32", ("batch", 1),
                   "0 = greedy (decoder.greedy: argmax | code_mean); > 0 = top-k sampling"),
        TensorSpec("gumbel", "float32", ("batch", N, K), "host Gumbel noise from (seed, frame); unused when greedy"),
        *(TensorSpec(f"in_{s}", dt, shp, "state") for s, (dt, shp) in state_shapes.items()),
    )
    step_out = (
        TensorSpec("tokens", "int32", ("batch", N), "this frame's visual tokens"),
        *(TensorSpec(f"out_{s}", dt, shp, "state") for s, (dt, shp) in state_shapes.items()),
    )
    specs.append(GraphSpec("step_decoder", step_in, step_out, state=STATE_NAMES, axes=batch,
                           doc="one video frame: SFA step with explicit sink/window KV state"))
    return {s.name: s for s in specs}


def resolve_shape(shape: tuple[int | str, ...], sizes: dict[str, int]) -> list[int]:
    """Replace symbolic axes by ``sizes[axis]``; ints pass through."""
    return [d if isinstance(d, int) else int(sizes[d]) for d in shape]


def trt_profiles(spec: GraphSpec) -> dict[str, dict[str, list[int]]]:
    """TensorRT optimization profile of one graph as plain data: input -> {"min","opt","max": shape}.

    Only inputs with a symbolic axis are listed (TensorRT needs a profile for each dynamic input).
    """
    out: dict[str, dict[str, list[int]]] = {}
    for t in spec.inputs:
        if all(isinstance(d, int) for d in t.shape):
            continue
        out[t.name] = {
            level: resolve_shape(t.shape, {ax: rng[i] for ax, rng in spec.axes.items()})
            for i, level in enumerate(("min", "opt", "max"))
        }
    return out


def example_sizes(spec: GraphSpec, batch: int = 2, frames: int = 3, cfg: ModelConfig | None = None) -> dict[str, int]:
    """Concrete sizes of the symbolic axes for a test feed (``samples`` consistent with ``frames``)."""
    sizes = {"batch": batch, "frames": frames}
    if "samples" in spec.axes:
        if cfg is None:
            raise ValueError("example_sizes needs cfg for a graph with a 'samples' axis")
        sizes["samples"] = cfg.audio.left_context + frames * cfg.audio.samples_per_frame
    return sizes


def dynamic_axes(spec: GraphSpec) -> dict[str, dict[int, str]]:
    """``torch.onnx.export`` dynamic_axes for the spec's inputs and outputs."""
    return {
        t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
        for t in (*spec.inputs, *spec.outputs)
        if any(isinstance(d, str) for d in t.shape)
    }

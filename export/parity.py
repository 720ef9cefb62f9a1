"""Parity checks between exported graphs and PyTorch (used by ``verify``), each returning ``Check`` rows.

- ``graph_parity``: one graph, fresh random inputs (batch 3; audio 5 frames; ``start`` mixed), every output.
- ``streaming_parity``: two sessions (greedy; seeded top-k sampling) for ``3*W + 5`` frames from PCM:
  ``audio_encoder`` chunk by chunk (ONNX) vs whole utterance (PyTorch), ``step_decoder`` with ``start=1``
  on random garbage state (the reset must clear it) vs ``generate.StreamingGenerator``, tokens identical,
  sink/window K/V within tolerance, and the decoded frames as uint8 within ``PIXEL_TOL``.
- ``batch_parity``: three sessions at different frames (one of them starting) in one call == each alone.

``run_graph(name, feed) -> {output: array}`` is any backend (ONNX Runtime, TensorRT).
"""

from __future__ import annotations

import numpy as np
import torch

from eartalking.config import ModelConfig
from eartalking.export import specs as S
from eartalking.export.compare import FLOAT_ATOL, FLOAT_RTOL, PIXEL_TOL, Check, Runner, compare  # noqa: F401
from eartalking.export.feeds import random_feed
from eartalking.export.wrappers import torch_reference
from eartalking.model.generate import StreamingGenerator
from eartalking.model.model import EARTalking
from eartalking.sampling import gumbel_noise


def tolerance(dtype: str) -> float:
    return 0.0 if dtype == "int32" else FLOAT_ATOL


def graph_parity(model: EARTalking, cfg: ModelConfig, run_graph: Runner, rng: np.random.Generator,
                 graphs: list[str] | None = None) -> tuple[list[Check], dict]:
    """Each graph vs PyTorch on fresh random inputs. Returns (checks, {graph: (feed, reference outputs)})."""
    checks, cases = [], {}
    for name, spec in S.graph_specs(cfg).items():
        if graphs and name not in graphs:
            continue
        feed = random_feed(spec, cfg, S.example_sizes(spec, batch=3, frames=5, cfg=cfg), rng)
        names = [t.name for t in spec.outputs]
        ref = torch_reference(model, name, feed, names)
        got = run_graph(name, feed)
        cases[name] = (feed, ref)
        for t in spec.outputs:
            checks.append(compare(name, t.name, "graph", got[t.name], ref[t.name], tolerance(t.dtype)))
    return checks, cases


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


@torch.no_grad()
def streaming_parity(model: EARTalking, cfg: ModelConfig, run_graph: Runner, rng: np.random.Generator,
                     frames: int | None = None) -> list[Check]:
    """Two sessions streamed from PCM through all four graphs vs PyTorch (see module docstring)."""
    T = frames or 3 * cfg.decoder.window + 5
    spf, lc, la = cfg.audio.samples_per_frame, cfg.audio.left_context, cfg.audio.lookahead_frames
    N, K, C = cfg.tokens_per_frame, cfg.tokenizer.codebook_size, cfg.decoder.n_controls
    specs = S.graph_specs(cfg)
    portrait = rng.random((2, 3, cfg.tokenizer.image_size, cfg.tokenizer.image_size)).astype(np.float32)
    pcm = (np.sin(np.arange(T * spf) / 7.0)[None] * 0.3 + rng.standard_normal((2, T * spf)) * 0.1).astype(np.float32)
    controls = random_feed(specs["step_decoder"], cfg, {"batch": 2 * T}, rng)
    ctrl = controls["controls"].reshape(2, T, C)
    mask = controls["control_mask"].reshape(2, T, C)
    temps, seeds = (0.0, 0.8), (0, 3)
    checks: list[Check] = []

    # portrait -> tokens + refs
    enc = run_graph("tokenizer_encoder", {"image": portrait})
    gens = [StreamingGenerator(model, torch.from_numpy(portrait[i:i + 1]), temps[i], seeds[i]) for i in range(2)]
    ref_tokens = np.concatenate([g.ref_tokens.numpy() for g in gens]).astype(np.int32)
    checks.append(compare("tokenizer_encoder", "tokens", "stream", enc["tokens"], ref_tokens, 0.0))

    # audio: chunk by chunk (one frame + left context each) vs whole utterance
    whole = model.audio.encode_utterance(torch.from_numpy(pcm), T).numpy()  # [2, T, A, Da]
    padded = np.pad(pcm, ((0, 0), (lc, la * spf)))
    chunks = [run_graph("audio_encoder", {"pcm": padded[:, (t + la) * spf:(t + la) * spf + lc + spf]})
              ["audio_tokens"][:, 0] for t in range(T)]
    audio = np.stack(chunks, 1)
    checks.append(compare("audio_encoder", "audio_tokens", "stream", audio, whole))

    # steps: start on garbage state; compare tokens, state, frames every frame (report the worst)
    state = {k: v for k, v in random_feed(specs["step_decoder"], cfg, {"batch": 2}, rng).items() if k.startswith("in_")}
    worst: dict[str, Check] = {}
    for t in range(T):
        feed = {
            "start": np.full((2, 1), 1 if t == 0 else 0, np.int32), "ref_tokens": enc["tokens"],
            "audio_tokens": audio[:, t], "controls": ctrl[:, t], "control_mask": mask[:, t],
            "temperature": np.array([[temps[0]], [temps[1]]], np.float32),
            "gumbel": np.stack([gumbel_noise(s, t, (N, K)) for s in seeds]), **state,
        }
        out = run_graph("step_decoder", feed)
        ref_tok = np.concatenate([g.step(torch.from_numpy(whole[i:i + 1, t]), torch.from_numpy(ctrl[i:i + 1, t]),
                                         torch.from_numpy(mask[i:i + 1, t])).numpy() for i, g in enumerate(gens)])
        refs_state = {
            "out_sink_k": np.concatenate([g.sink_k.numpy() for g in gens]),
            "out_sink_v": np.concatenate([g.sink_v.numpy() for g in gens]),
            "out_window_k": np.concatenate([g.window_k.numpy() for g in gens]),
            "out_window_v": np.concatenate([g.window_v.numpy() for g in gens]),
            "out_frame": np.full((2, 1), t + 1, np.int32),
        }
        rows = [compare("step_decoder", "tokens", "stream", out["tokens"], ref_tok.astype(np.int32), 0.0)]
        rows += [compare("step_decoder", k, "stream", out[k], v, 0.0 if v.dtype.kind == "i" else FLOAT_ATOL)
                 for k, v in refs_state.items()]
        refs = {f"ref_{i}": enc[f"ref_{i}"] for i in range(len(cfg.tokenizer.ref_shapes))}
        img = run_graph("tokenizer_decoder", {"tokens": out["tokens"], **refs})
        ref_img = np.concatenate([g.render(torch.from_numpy(ref_tok[i:i + 1])).numpy() for i, g in enumerate(gens)])
        rows.append(compare("end_to_end", "frame_uint8", "stream", _to_uint8(img["image"]).astype(np.int16),
                            _to_uint8(ref_img).astype(np.int16), PIXEL_TOL))
        for r in rows:
            key = f"{r.graph}/{r.tensor}"
            old = worst.get(key)
            if old is None or (old.ok and not r.ok) or (r.ok == old.ok and r.max_abs > old.max_abs):
                worst[key] = r
        state = {f"in_{s}": out[f"out_{s}"] for s in S.STATE_NAMES}
    return checks + list(worst.values())


def batch_parity(cfg: ModelConfig, run_graph: Runner, rng: np.random.Generator) -> list[Check]:
    """Sessions at frames (start, W+1, 2W+3) stepped together (batch 3) == each stepped alone (batch 1)."""
    spec = S.graph_specs(cfg)["step_decoder"]
    W = cfg.decoder.window
    rows = []
    for frames_before in (0, W + 1, 2 * W + 3):
        f = random_feed(spec, cfg, {"batch": 1}, rng, start=np.array([[1]], np.int32))
        for _ in range(frames_before):  # advance this session alone
            out = run_graph("step_decoder", f)
            f = {**random_feed(spec, cfg, {"batch": 1}, rng, start=np.array([[0]], np.int32)),
                 "ref_tokens": f["ref_tokens"], **{f"in_{s}": out[f"out_{s}"] for s in S.STATE_NAMES}}
        rows.append(f)
    alone = [run_graph("step_decoder", f) for f in rows]
    batched = run_graph("step_decoder", {k: np.concatenate([f[k] for f in rows]) for k in rows[0]})
    checks = []
    for t in spec.outputs:
        ref = np.concatenate([o[t.name] for o in alone])
        atol = 0.0 if t.dtype == "int32" else 1e-5
        checks.append(compare("step_decoder", t.name, "batch", batched[t.name], ref, atol))
    return checks

"""Reference PyTorch model: SFA scope, streaming == no-cache reference, teacher-forcing parity, audio
chunking, FCIC causality, portrait conditioning, checkpoint round trip, position invariance.

All on the ``test_small`` preset with random weights and fresh random inputs (fast, CPU).
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from eartalking import config
from eartalking.config import CONTROL_NAMES
from eartalking.model import checkpoint
from eartalking.model.decoder import code_mean, select, teacher_prev_tokens
from eartalking.model.generate import StreamingGenerator, reference_generate
from eartalking.sampling import gumbel_noise

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
LOGIT_ATOL = 1e-4  # fp32 reordering of the same sums (measured ~1e-6)


@pytest.fixture(scope="module")
def model():
    return checkpoint.random_model("test_small", seed=0)


def _inputs(model, T: int, seed: int, B: int = 1):
    g = torch.Generator().manual_seed(seed)
    d, cfg = model.decoder, model.cfg
    S = cfg.tokenizer.image_size
    portrait = torch.rand(B, 3, S, S, generator=g)
    audio = torch.randn(B, T, d.A, cfg.audio.dim, generator=g)
    controls = torch.randn(B, T, d.C, generator=g) * 10.0
    mask = (torch.rand(B, T, d.C, generator=g) > 0.4).float()
    return portrait, audio, controls, mask


def _stream(model, portrait, audio, controls, mask, temperature=0.0, seed=0):
    gen = StreamingGenerator(model, portrait, temperature=temperature, seed=seed)
    toks, logs = [], []
    for t in range(audio.shape[1]):
        toks.append(gen.step(audio[:, t], controls[:, t], mask[:, t]))
        logs.append(gen.last_logits)
    return gen, torch.stack(toks, 1), torch.stack(logs, 1)


# ---------------------------------------------------------------- SFA scope
def test_sfa_mask_is_sink_window_and_self(model):
    d = model.decoder
    T = 2 * d.W + 3
    m = d.sfa_mask(T)
    assert m.shape == (T * d.BL, d.N + T * d.BL)
    assert m[:, : d.N].all()  # every query sees the sink
    for t in range(T):
        for s in range(T):
            block = m[t * d.BL:(t + 1) * d.BL, d.N + s * d.BL:d.N + (s + 1) * d.BL]
            allowed = 0 <= t - s <= d.W
            assert bool(block.all()) == allowed and bool(block.any()) == allowed, (t, s)


def test_dense_mask_path_equals_age_path(model):
    """forward_train's per-age attention == one attention with sfa_mask (independent implementation)."""
    d = model.decoder
    portrait, audio, controls, mask = _inputs(model, T=2 * d.W + 3, seed=1, B=2)
    ref = model.tokenizer.encode(portrait)
    prev = torch.randint(0, d.K, (2, audio.shape[1], d.N), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a = d.forward_train(ref, audio, controls, mask, prev)
        b = d.forward_train(ref, audio, controls, mask, prev, dense=True)
    assert a.shape == (2, audio.shape[1], d.N, d.K)
    torch.testing.assert_close(a, b, atol=LOGIT_ATOL, rtol=0)


def test_perturbation_outside_window_has_no_effect():
    """One layer: block t sees only sink + blocks t-W..t. L layers: reach is exactly L*W blocks back."""
    for layers in (1, 2):
        cfg = config.test_small()
        cfg.decoder.layers = layers
        m = checkpoint.random_model(cfg, seed=3)
        d = m.decoder
        reach = layers * d.W
        T = reach + 3
        portrait, audio, controls, mask = _inputs(m, T=T, seed=4)
        ref = m.tokenizer.encode(portrait)
        prev = torch.randint(0, d.K, (1, T, d.N), generator=torch.Generator().manual_seed(5))
        t = T - 1
        with torch.no_grad():
            base = d.forward_train(ref, audio, controls, mask, prev)[:, t]
            for s, expect_change in ((t - reach - 1, False), (t - reach, True)):
                a2, c2, p2 = audio.clone(), controls.clone(), prev.clone()
                a2[:, s] = torch.randn_like(a2[:, s])
                c2[:, s] += 5.0
                p2[:, s] = (p2[:, s] + 1) % d.K
                out = d.forward_train(ref, a2, c2, mask, p2)[:, t]
                changed = (out - base).abs().max().item()
                if expect_change:
                    assert changed > 1e-5, f"layers={layers}: block {s} should reach block {t}"
                else:
                    assert changed == 0.0, f"layers={layers}: block {s} leaked into block {t} ({changed})"


def _isolated_model(seed: int = 0):
    cfg = config.test_small()
    cfg.decoder.isolated_cells, cfg.decoder.isolated_controls = (1, 6), ("blink",)
    return checkpoint.random_model(cfg, seed=seed)


def test_isolated_group_is_read_by_nothing_outside_it():
    """decoder.isolated_cells/controls: changing the group's inputs (blink values and presence, its cells'
    previous tokens) and its own rows of the weights leaves every other cell's logits bit-identical in every
    frame, and does change the group's; the sfa_mask says the same."""
    m = _isolated_model(seed=30)
    d = m.decoder
    T, cells, b = 2 * d.W + 3, [1, 6], config.CONTROL_NAMES.index("blink")
    others = [c for c in range(d.N) if c not in cells]
    portrait, audio, controls, mask = _inputs(m, T=T, seed=31, B=2)
    ref = m.tokenizer.encode(portrait)
    prev = torch.randint(0, d.K, (2, T, d.N), generator=torch.Generator().manual_seed(32))
    with torch.no_grad():
        base = d.forward_train(ref, audio, controls, mask, prev)
        c2, m2, p2 = controls.clone(), mask.clone(), prev.clone()
        c2[..., b] = torch.randn(2, T) * 10.0
        m2[..., b] = 1.0 - m2[..., b]
        p2[..., cells] = (p2[..., cells] + 7) % d.K
        for rows, idx in ((d.slot_query, cells), (d.control_weight, [b]), (d.type_embedding, [b]),
                          (d.null_embedding, [b])):
            rows[idx] += torch.randn_like(rows[idx])
        out = d.forward_train(ref, audio, c2, m2, p2)
        dense = d.forward_train(ref, audio, c2, m2, p2, dense=True)
    assert torch.equal(out[:, :, others], base[:, :, others])
    assert (out[:, :, cells] - base[:, :, cells]).abs().amax() > 1e-3
    torch.testing.assert_close(dense, out, atol=LOGIT_ATOL, rtol=0)
    mk = d.sfa_mask(T)
    q_other, k_group = d.C + d.A + others[0], d.C + d.A + cells[0]
    for t in range(T):  # an outside query sees no group key of its own block or of any earlier one
        assert not mk[t * d.BL + q_other, d.N + b::d.BL].any() and not mk[t * d.BL + q_other, d.N + k_group::d.BL].any()
        assert mk[t * d.BL + d.C + d.A + cells[1], d.N + t * d.BL + k_group]  # the group reads itself
    with pytest.raises(ValueError, match="isolated_controls"):
        cfg = config.test_small()
        cfg.decoder.isolated_controls = ("wink",)
        checkpoint.random_model(cfg, seed=0)


def test_isolated_streaming_equals_teacher_forcing():
    """With an isolated group, the step (its bias over the window and the current block) computes what
    forward_train does, frame by frame past the window's wrap."""
    m = _isolated_model(seed=33)
    d = m.decoder
    T = 2 * d.W + 3
    portrait, audio, controls, mask = _inputs(m, T=T, seed=34, B=2)
    ref = m.tokenizer.encode(portrait)
    prev = torch.randint(0, d.K, (2, T, d.N), generator=torch.Generator().manual_seed(35))
    _assert_steps_equal_forward_train(d, ref, audio, controls, mask, prev)


def _assert_steps_equal_forward_train(d, ref, audio, controls, mask, prev):
    """``d.step`` frame by frame (fresh window) gives forward_train's logits for the same previous tokens."""
    B, T = audio.shape[:2]
    with torch.no_grad():
        full = d.forward_train(ref, audio, controls, mask, prev)
        sk, sv = d.sink(ref)
        wk, wv = d.empty_window(B)
        for t in range(T):
            frame = torch.full((B, 1), t, dtype=torch.int32)
            logits, wk, wv = d.step(audio[:, t], controls[:, t], mask[:, t], sk, sv, wk, wv, prev[:, t], frame)
            torch.testing.assert_close(logits, full[:, t], atol=LOGIT_ATOL, rtol=0)


# ---------------------------------------------------------------- streaming == reference
@pytest.mark.parametrize("temperature,seed", [(0.0, 0), (1.0, 7)])
def test_streaming_equals_full_recompute(model, temperature, seed):
    d = model.decoder
    T = 3 * d.W + 5  # the window wraps several times
    portrait, audio, controls, mask = _inputs(model, T=T, seed=10 + seed)
    _, toks, logs = _stream(model, portrait, audio, controls, mask, temperature, seed)
    ref_toks, ref_logs = reference_generate(model, portrait, audio, controls, mask, temperature, seed)
    torch.testing.assert_close(logs, ref_logs, atol=LOGIT_ATOL, rtol=0)
    assert torch.equal(toks, ref_toks)
    assert len(torch.unique(toks)) > 1


def test_teacher_forcing_parity(model):
    """forward_train on given previous tokens == step by step with the same previous tokens."""
    d = model.decoder
    T = 2 * d.W + 2
    portrait, audio, controls, mask = _inputs(model, T=T, seed=20, B=2)
    ref = model.tokenizer.encode(portrait)
    target = torch.randint(0, d.K, (2, T, d.N), generator=torch.Generator().manual_seed(21))
    prev = teacher_prev_tokens(ref, target)
    assert torch.equal(prev[:, 0], ref) and torch.equal(prev[:, 1:], target[:, :-1])
    _assert_steps_equal_forward_train(d, ref, audio, controls, mask, prev)


def test_position_invariance(model):
    """Same window content at frame 10 and frame 10**6 -> bit-identical step outputs."""
    d = model.decoder
    portrait, audio, controls, mask = _inputs(model, T=11, seed=30)
    gen, _, _ = _stream(model, portrait, audio[:, :10], controls[:, :10], mask[:, :10])
    outs = []
    for frame in (10, 10**6):
        with torch.no_grad():
            outs.append(d.step(audio[:, 10], controls[:, 10], mask[:, 10], gen.sink_k, gen.sink_v, gen.window_k,
                               gen.window_v, gen.prev_tokens, torch.tensor([[frame]], dtype=torch.int32)))
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)


def test_window_masking_before_it_fills(model):
    """At frame f < W the empty window slots are masked: garbage in them changes nothing."""
    d = model.decoder
    portrait, audio, controls, mask = _inputs(model, T=1, seed=31)
    ref = model.tokenizer.encode(portrait)
    with torch.no_grad():
        sk, sv = d.sink(ref)
        wk, wv = d.empty_window(1)
        f0 = torch.zeros(1, 1, dtype=torch.int32)
        out0 = d.step(audio[:, 0], controls[:, 0], mask[:, 0], sk, sv, wk, wv, ref, f0)
        junk_k, junk_v = torch.randn_like(wk), torch.randn_like(wv)
        out1 = d.step(audio[:, 0], controls[:, 0], mask[:, 0], sk, sv, junk_k, junk_v, ref, f0)
    torch.testing.assert_close(out0[0], out1[0], atol=1e-6, rtol=0)


def test_batched_sessions_at_different_frames_equal_single_runs(model):
    """Two sessions in one step call (different portraits, frames and windows) == each run alone."""
    d = model.decoder
    gens, feeds = [], []
    for i, T in enumerate((2, d.W + 3)):  # one inside its first W frames, one past the wrap
        portrait, audio, controls, mask = _inputs(model, T=T + 1, seed=80 + i)
        gen, _, _ = _stream(model, portrait, audio[:, :T], controls[:, :T], mask[:, :T])
        gens.append(gen)
        feeds.append((audio[:, T], controls[:, T], mask[:, T]))
    with torch.no_grad():
        singles = [d.step(*f, g.sink_k, g.sink_v, g.window_k, g.window_v, g.prev_tokens, g.frame)
                   for f, g in zip(feeds, gens, strict=True)]
        cat = [torch.cat(x) for x in zip(*feeds, strict=True)]
        state = [torch.cat([getattr(g, n) for g in gens]) for n in
                 ("sink_k", "sink_v", "window_k", "window_v", "prev_tokens", "frame")]
        batched = d.step(*cat, *state)
    for j in range(3):
        torch.testing.assert_close(batched[j], torch.cat([s[j] for s in singles]), atol=1e-5, rtol=0)


# ---------------------------------------------------------------- FCIC controls
def test_control_at_frame_k_changes_no_earlier_frame(model):
    d = model.decoder
    T, k = 2 * d.W + 2, d.W + 1
    portrait, audio, controls, mask = _inputs(model, T=T, seed=40)
    _, toks, logs = _stream(model, portrait, audio, controls, mask)
    c2, m2 = controls.clone(), mask.clone()
    c2[:, k, 0], m2[:, k, 0] = 25.0, 1.0  # set yaw at frame k
    c2[:, k, 3], m2[:, k, 3] = 1.0, 1.0  # and a blink
    _, toks2, logs2 = _stream(model, portrait, audio, c2, m2)
    assert torch.equal(logs[:, :k], logs2[:, :k]) and torch.equal(toks[:, :k], toks2[:, :k])
    assert (logs[:, k] - logs2[:, k]).abs().max() > 1e-5


def test_masked_control_uses_null_embedding(model):
    """A masked control's value is ignored (even NaN); the same value unmasked is not."""
    d = model.decoder
    _, audio, controls, mask = _inputs(model, T=1, seed=41)
    prev = torch.randint(0, d.K, (1, d.N))
    zero = torch.zeros(1, d.C)
    x0 = d.embed_block(audio[:, 0], controls[:, 0], zero, prev)
    x1 = d.embed_block(audio[:, 0], torch.full_like(controls[:, 0], float("nan")), zero, prev)  # even NaN
    x2 = d.embed_block(audio[:, 0], controls[:, 0], torch.ones(1, d.C), prev)
    assert torch.equal(x0, x1) and not torch.allclose(x0, x2)


# ---------------------------------------------------------------- sampling
def test_select_greedy_and_seeded(model):
    g = torch.Generator().manual_seed(50)
    logits = torch.randn(2, 16, 64, generator=g)
    noise = torch.from_numpy(np.stack([gumbel_noise(3, 9, (16, 64))] * 2))
    temp = torch.tensor([[0.0], [1.0]])
    out = select(logits, temp, noise, top_k=8)
    assert torch.equal(out[0], logits[0].argmax(-1))
    top = logits[1].topk(8, -1).indices
    assert all(int(out[1, i]) in top[i].tolist() for i in range(16))
    assert torch.equal(out, select(logits, temp, noise, top_k=8))
    assert not torch.equal(out[1], logits[1].argmax(-1))  # noise of std 1.28 moves some picks
    a, b = gumbel_noise(3, 9, (4, 5)), gumbel_noise(3, 10, (4, 5))
    assert a.dtype == np.float32 and np.array_equal(a, gumbel_noise(3, 9, (4, 5))) and not np.array_equal(a, b)


def test_code_mean_is_the_token_nearest_the_expected_code():
    """code_mean == brute force (digits of every token, probability-weighted mean, rounded) on fresh random
    logits; a sharp distribution gives its argmax; a 50/50 mix of two tokens lands between them."""
    g = torch.Generator().manual_seed(51)
    K, L = 64, 4  # test_small: 4 levels x 3 digits
    logits = torch.randn(3, 16, K, generator=g) * 3.0
    p = torch.softmax(logits, -1).numpy().astype(np.float64)
    digits = np.array([[(k // L ** i) % L for i in range(3)] for k in range(K)], np.float64)
    want = (np.clip(np.round(p @ digits), 0, L - 1) @ np.array([1, L, L * L])).astype(np.int64)
    assert np.array_equal(code_mean(logits).numpy(), want)
    sharp = torch.full((1, K), -30.0)
    sharp[0, 37] = 30.0
    assert int(code_mean(sharp)[0]) == 37
    mix = torch.full((1, K), -30.0)
    mix[0, 0] = mix[0, 2] = 5.0  # digits (0,0,0) and (2,0,0): mean digit 1.0 -> token 1
    assert int(code_mean(mix)[0]) == 1 and int(mix.argmax(-1)[0]) in (0, 2)
    temp = torch.tensor([[0.0], [1.0], [0.0]])
    noise = torch.from_numpy(np.stack([gumbel_noise(4, 2, (16, K))] * 3))
    out = select(logits, temp, noise, top_k=8, greedy="code_mean")
    assert torch.equal(out[0], code_mean(logits[0])) and torch.equal(out[2], code_mean(logits[2]))
    assert torch.equal(out[1], select(logits, temp, noise, top_k=8)[1])  # sampling is unchanged
    with pytest.raises(ValueError, match="greedy"):
        select(logits, temp, noise, top_k=8, greedy="mode")


def test_code_mean_temperature_flattens_the_distribution_and_reaches_every_path():
    """code_mean at temperature t == code_mean of logits / t, on fresh random logits; at t > 1 less likely
    tokens weigh more, so some choices change; select and StepDecoder.pick (which every generation path and the
    exported graph call) apply decoder.code_mean_temperature; a temperature <= 0 is refused by name."""
    import dataclasses

    from eartalking import config
    from eartalking.model.checkpoint import random_model

    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 30)))
    K = 64
    logits = torch.randn(2, 16, K, generator=g) * 3.0
    assert torch.equal(code_mean(logits, 1.7), code_mean(logits / 1.7))
    assert torch.equal(code_mean(logits, 1.0), code_mean(logits))
    assert not torch.equal(code_mean(logits, 2.5), code_mean(logits))
    temp = torch.zeros(2, 1)
    noise = torch.from_numpy(np.stack([gumbel_noise(4, 2, (16, K))] * 2))
    assert torch.equal(select(logits, temp, noise, top_k=8, greedy="code_mean", code_mean_temperature=1.7),
                       code_mean(logits, 1.7))
    cfg = config.preset("test_small")
    cfg = dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, greedy="code_mean",
                                                               code_mean_temperature=1.7))
    dec = random_model(cfg, seed=0).decoder
    ref = torch.randint(0, K, (2, 16), generator=g)
    assert torch.equal(dec.pick(logits, temp, noise, ref), code_mean(logits, 1.7))
    bad = dataclasses.replace(cfg, decoder=dataclasses.replace(cfg.decoder, code_mean_temperature=0.0))
    with pytest.raises(ValueError, match="code_mean_temperature must be > 0"):
        random_model(bad, seed=0)


def test_code_mean_cells_take_their_own_temperature():
    """decoder.code_mean_cells read at code_mean_cells_temperature, every other cell at code_mean_temperature
    (cell by cell equal to code_mean at that cell's temperature, on fresh random logits), through
    StepDecoder.pick; cells outside the grid and a temperature <= 0 are refused by name."""
    import dataclasses

    from eartalking import config
    from eartalking.model.checkpoint import random_model

    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 30)))
    K, cells = 64, (3, 7, 8)
    logits = torch.randn(4, 16, K, generator=g) * 3.0
    per_cell = torch.full((16,), 2.5)
    per_cell[list(cells)] = 0.4
    got = code_mean(logits, per_cell)
    for n in range(16):
        assert torch.equal(got[:, n], code_mean(logits[:, n], 0.4 if n in cells else 2.5))
    assert not torch.equal(got[:, list(cells)], code_mean(logits, 2.5)[:, list(cells)])
    cfg = config.preset("test_small")
    dcfg = dataclasses.replace(cfg.decoder, greedy="code_mean", code_mean_temperature=2.5, code_mean_cells=cells,
                               code_mean_cells_temperature=0.4)
    dec = random_model(dataclasses.replace(cfg, decoder=dcfg), seed=0).decoder
    temp = torch.zeros(4, 1)
    noise = torch.from_numpy(np.stack([gumbel_noise(4, 2, (16, K))] * 4))
    assert torch.equal(dec.pick(logits, temp, noise, torch.randint(0, K, (4, 16), generator=g)), got)
    for bad, msg in (({"code_mean_cells": (3, cfg.tokens_per_frame)}, "outside"),
                     ({"code_mean_cells_temperature": 0.0}, "code_mean_cells_temperature must be > 0")):
        with pytest.raises(ValueError, match=msg):
            random_model(dataclasses.replace(cfg, decoder=dataclasses.replace(dcfg, **bad)), seed=0)


def test_code_mean_gain_scales_the_move_away_from_the_portrait():
    """decoder.code_mean_gain at code_mean_gain_cells == brute force (expected digits d, portrait digits r,
    rounded r + gain (d - r)) on fresh random logits and portrait tokens; every other cell is bit-identical to
    code_mean without a gain; StepDecoder.pick applies it, and gain 1 is no gain; a gain without ref_tokens,
    a gain <= 0 and cells outside the grid are refused by name."""
    import dataclasses

    from eartalking import config
    from eartalking.model.checkpoint import random_model

    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 30)))
    K, L, cells, gain = 64, 4, (2, 9, 10), 1.6
    logits = torch.randn(4, 16, K, generator=g) * 3.0
    ref = torch.randint(0, K, (4, 16), generator=g)
    per_cell = torch.ones(16)
    per_cell[list(cells)] = gain
    got = code_mean(logits, 1.3, per_cell, ref)
    digits = np.array([[(k // L ** i) % L for i in range(3)] for k in range(K)], np.float64)
    d = torch.softmax(logits / 1.3, -1).double().numpy() @ digits  # [4, 16, 3]
    r = digits[ref.numpy()]
    want_d = np.where(per_cell.numpy()[None, :, None] != 1, r + gain * (d - r), d)
    want = (np.clip(np.round(want_d), 0, L - 1) @ np.array([1, L, L * L])).astype(np.int64)
    assert np.array_equal(got.numpy(), want)
    plain = code_mean(logits, 1.3)
    others = [n for n in range(16) if n not in cells]
    assert torch.equal(got[:, others], plain[:, others])
    assert not torch.equal(got[:, list(cells)], plain[:, list(cells)])
    with pytest.raises(ValueError, match="needs ref_tokens"):
        code_mean(logits, 1.3, per_cell)
    cfg = config.preset("test_small")
    dcfg = dataclasses.replace(cfg.decoder, greedy="code_mean", code_mean_temperature=1.3,
                               code_mean_gain_cells=cells, code_mean_gain=gain)
    dec = random_model(dataclasses.replace(cfg, decoder=dcfg), seed=0).decoder
    temp = torch.zeros(4, 1)
    noise = torch.from_numpy(np.stack([gumbel_noise(4, 2, (16, K))] * 4))
    assert torch.equal(dec.pick(logits, temp, noise, ref), got)
    dec.code_mean_gain = 1.0
    assert dec.cell_gains() is None and torch.equal(dec.pick(logits, temp, noise, ref), plain)
    for bad, msg in (({"code_mean_gain_cells": (3, cfg.tokens_per_frame)}, "outside"),
                     ({"code_mean_gain": 0.0}, "code_mean_gain must be > 0")):
        with pytest.raises(ValueError, match=msg):
            random_model(dataclasses.replace(cfg, decoder=dataclasses.replace(dcfg, **bad)), seed=0)


def test_code_mean_gain_streaming_equals_full_recompute():
    """With a gain on some cells, cached streaming and the full-recompute reference pick the same tokens
    (both move away from the same portrait tokens), and the gained cells' tokens differ from gain 1's. The
    gained cells are anchored, as the shipped mouth cells are, so the other cells' tokens stay gain 1's."""
    cfg = config.preset("test_small")
    cfg.decoder.greedy, cfg.decoder.code_mean_gain_cells, cfg.decoder.code_mean_gain = "code_mean", (0, 3, 4), 2.0
    cfg.decoder.anchor_cells = (0, 3, 4)
    m = checkpoint.random_model(cfg, seed=5)
    with torch.no_grad():  # a sharper head than init's, so the expected digits move between frames
        m.decoder.head.weight.mul_(20.0)
    T = 2 * m.decoder.W + 3
    portrait, audio, controls, mask = _inputs(m, T=T, seed=int(np.random.default_rng().integers(1 << 20)))
    _, toks, logs = _stream(m, portrait, audio, controls, mask)
    ref_toks, ref_logs = reference_generate(m, portrait, audio, controls, mask)
    torch.testing.assert_close(logs, ref_logs, atol=LOGIT_ATOL, rtol=0)
    assert torch.equal(toks, ref_toks)
    m.decoder.code_mean_gain = 1.0
    _, plain, _ = _stream(m, portrait, audio, controls, mask)
    assert torch.equal(toks[..., [1, 2, 5]], plain[..., [1, 2, 5]])
    assert not torch.equal(toks[..., [0, 3, 4]], plain[..., [0, 3, 4]])


# ---------------------------------------------------------------- audio encoder
def test_audio_chunked_equals_whole(model):
    enc, c = model.audio, model.cfg.audio
    n = 9
    pcm = torch.randn(2, c.left_context + n * c.samples_per_frame, generator=torch.Generator().manual_seed(60)) * 0.3
    with torch.no_grad():
        whole = enc(pcm)
        assert whole.shape == (2, n, c.tokens_per_frame, c.dim)
        for cuts in ([0, 1, 2, 9], [0, 4, 5, 9], [0, 3, 6, 9]):
            parts = [enc(pcm[:, a * c.samples_per_frame: c.left_context + b * c.samples_per_frame])
                     for a, b in zip(cuts[:-1], cuts[1:], strict=True)]
            torch.testing.assert_close(torch.cat(parts, 1), whole, atol=1e-5, rtol=0)


def test_audio_causal_and_length_errors(model):
    enc, c = model.audio, model.cfg.audio
    n = 6
    pcm = torch.randn(1, c.left_context + n * c.samples_per_frame, generator=torch.Generator().manual_seed(61))
    with torch.no_grad():
        base = enc(pcm)
        p2 = pcm.clone()
        p2[:, c.left_context + 4 * c.samples_per_frame:] += 0.5  # change frames >= 4 only
        out = enc(p2)
    assert torch.equal(out[:, :4], base[:, :4]) and not torch.allclose(out[:, 4], base[:, 4])
    with pytest.raises(ValueError, match="left_context"):
        enc(pcm[:, :-1])
    with pytest.raises(ValueError, match="left_context"):
        enc(pcm[:, : c.left_context])


def test_encode_utterance_matches_streaming_with_lookahead(model):
    """Video frame t = encoder frame t + lookahead of the zero-prefixed stream; it hears PCM up to
    (t + 1 + lookahead) * 640 and nothing later."""
    enc, c = model.audio, model.cfg.audio
    spf, la, n = c.samples_per_frame, c.lookahead_frames, 5
    pcm = torch.randn(1, n * spf - 100, generator=torch.Generator().manual_seed(62)) * 0.3  # partial last frame
    with torch.no_grad():
        utt = enc.encode_utterance(pcm)
        assert utt.shape == (1, n, c.tokens_per_frame, c.dim)
        stream = torch.nn.functional.pad(pcm, (c.left_context, (n + la) * spf - pcm.shape[1]))
        torch.testing.assert_close(utt, enc(stream)[:, la:la + n], atol=1e-5, rtol=0)
        t = 1
        p2 = pcm.clone()
        p2[:, (t + 1 + la) * spf:] += 0.5
        out = enc.encode_utterance(p2)
    assert torch.equal(out[:, : t + 1], utt[:, : t + 1]) and not torch.allclose(out[:, t + 1], utt[:, t + 1])


# ---------------------------------------------------------------- tokenizer
def test_tokenizer_shapes_and_reference_conditioning(model):
    tok, tc = model.tokenizer, model.cfg.tokenizer
    g = torch.Generator().manual_seed(70)
    S = tc.image_size
    img, ref_a, ref_b = (torch.rand(2, 3, S, S, generator=g) for _ in range(3))
    with torch.no_grad():
        tokens = tok.encode(img)
        refs_a, refs_b = tok.reference(ref_a), tok.reference(ref_b)
        assert tokens.shape == (2, tc.tokens_per_frame) and tokens.dtype == torch.int64
        assert [tuple(r.shape[1:]) for r in refs_a] == [tuple(s) for s in tc.ref_shapes]
        out_a = tok.decode(tokens, refs_a)
        out_b = tok.decode(tokens, refs_b)
        out_t = tok.decode(torch.randint(0, tc.codebook_size, tokens.shape, generator=g), refs_a)
    assert out_a.shape == (2, 3, S, S) and 0.0 <= out_a.min() and out_a.max() <= 1.0
    assert (out_a - out_b).abs().mean() > 1e-4  # the portrait matters
    assert (out_a - out_t).abs().mean() > 1e-4  # and so do the tokens


def test_tokenizer_forward_losses_and_gradients(model):
    tok = checkpoint.random_model("test_small", seed=1).tokenizer.train()
    S = tok.cfg.image_size
    g = torch.Generator().manual_seed(71)
    img, ref = torch.rand(2, 3, S, S, generator=g), torch.rand(2, 3, S, S, generator=g)
    recon, losses = tok(img, ref)
    assert recon.shape == img.shape
    assert {"vq", "commit", "vq_total", "l1", "perplexity", "usage", "indices"} <= set(losses)
    (losses["l1"] + losses["vq_total"]).backward()
    assert tok.encoder.stages[0][0].weight.grad.abs().sum() > 0  # straight-through reaches the encoder
    assert tok.from_fsq.weight.grad.abs().sum() > 0
    # FSQ: every token index decodes through the grid; indices are in range and match encode()
    assert int(losses["indices"].min()) >= 0 and int(losses["indices"].max()) < tok.cfg.codebook_size
    assert torch.equal(losses["indices"], tok.encode(img))
    assert tok.codes().shape == (tok.cfg.codebook_size, tok.cfg.code_dim)


def test_reference_alignment_starts_as_identity_and_learns():
    """flow_at: an untrained aligner reproduces the unaligned tokenizer exactly (so older weights load into
    it), a constant flow of one pixel shifts the reference features by one pixel, and the aligner gets a
    gradient from the reconstruction loss."""
    import dataclasses

    from eartalking.model.tokenizer import RefAlign, Tokenizer

    cfg = config.preset("test_small").tokenizer
    assert cfg.flow_at
    torch.manual_seed(3)
    tok = Tokenizer(cfg)
    plain = Tokenizer(dataclasses.replace(cfg, flow_at=0, ref_pixels=False))
    missing, unexpected = plain.load_state_dict(tok.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith(("align.", "pix.")) for k in unexpected)
    g = torch.Generator().manual_seed(52)
    S = cfg.image_size
    img, ref = torch.rand(2, 3, S, S, generator=g), torch.rand(2, 3, S, S, generator=g)
    with torch.no_grad():
        t = tok.encode(img)
        assert torch.equal(tok.decode(t, tok.reference(ref)), plain.decode(t, plain.reference(ref)))
    fmap = torch.randn(1, 5, 16, 16, generator=g)
    one_px = torch.zeros(1, 2, 4, 4)
    one_px[:, 0] = 2.0 / 16  # +1 pixel in x (normalised units: 2 / width)
    moved = RefAlign.warp(fmap, one_px)
    torch.testing.assert_close(moved[..., :, :-1], fmap[..., :, 1:], atol=1e-5, rtol=1e-5)
    rec, _ = tok(img, ref)
    (rec - img).abs().mean().backward()
    assert tok.align.conv.weight.grad is not None and float(tok.align.conv.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="flow_at"):
        Tokenizer(dataclasses.replace(cfg, flow_at=S))


def test_pixel_path_starts_as_identity_and_uses_the_portrait_pixels():
    """ref_pixels: the portrait itself is reference 0; an untrained pixel path returns the generated image
    exactly (so weights trained without it load unchanged); every pixel-path conv gets a gradient from the
    reconstruction loss; once its masks open, the output follows the portrait's pixels; without flow_at it is
    a clear error."""
    import dataclasses

    from eartalking.model.tokenizer import Tokenizer

    cfg = config.preset("test_small").tokenizer
    assert cfg.ref_pixels and cfg.ref_shapes[0] == (3, cfg.image_size, cfg.image_size)
    torch.manual_seed(5)
    tok = Tokenizer(cfg)
    plain = Tokenizer(dataclasses.replace(cfg, ref_pixels=False))
    missing, unexpected = plain.load_state_dict(tok.state_dict(), strict=False)
    assert not missing and sorted({k.split(".")[0] for k in unexpected}) == ["pix"]
    g = torch.Generator().manual_seed(77)
    S = cfg.image_size
    img, ref = torch.rand(2, 3, S, S, generator=g), torch.rand(2, 3, S, S, generator=g)
    refs = tok.reference(ref)
    assert [tuple(r.shape[1:]) for r in refs] == [tuple(s) for s in cfg.ref_shapes]
    assert torch.equal(refs[0], ref)
    with torch.no_grad():
        t = tok.encode(img)
        assert torch.equal(tok.decode(t, refs), plain.decode(t, plain.reference(ref)))
    rec, _ = tok(img, ref)
    (rec - img).abs().mean().backward()
    for conv in (tok.pix.mix_map, tok.pix.mix_img):
        assert conv.weight.grad is not None and float(conv.weight.grad.abs().sum()) > 0
    # open the replace mask fully and keep the flow at zero: the output is the portrait's own pixels
    with torch.no_grad():
        for conv in (tok.align.conv, tok.pix.flow, tok.pix.mix_map, tok.pix.mix_img):
            conv.weight.zero_()
            conv.bias.zero_()
        tok.pix.mix_img.bias[0] = 5.0
        out = tok.decode(t, refs)
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
        other = torch.rand(2, 3, S, S, generator=g)
        refs_other = [other, *refs[1:]]  # same features, other pixels
        assert float((tok.decode(t, refs_other) - out).abs().mean()) > 0.1
    with pytest.raises(ValueError, match="ref_pixels needs flow_at"):
        Tokenizer(dataclasses.replace(cfg, flow_at=0))


def test_fsq_grid_matches_token_index():
    """grid[k] holds the digits of token k, so decode(encode(x)) sees exactly the quantised values."""
    tok = checkpoint.random_model("test_small", seed=2).tokenizer
    L, d = tok.levels, tok.grid.shape[1]
    k = torch.arange(tok.cfg.codebook_size)
    digits = torch.stack([(k // L ** i) % L for i in range(d)], -1).float()
    assert torch.equal(tok.grid, digits * (2.0 / (L - 1)) - 1.0)


# ---------------------------------------------------------------- checkpoint
def test_checkpoint_round_trip_is_bitwise(tmp_path, model):
    checkpoint.save(tmp_path / "ck", model)
    again, cfg = checkpoint.load(tmp_path / "ck")
    assert cfg == model.cfg
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    from eartalking.cli import UserError

    with pytest.raises(UserError, match="missing"):
        checkpoint.load(tmp_path / "nowhere")


def test_load_tokenizer_reads_checkpoints_and_tokenizer_runs(tmp_path, model):
    """A checkpoint folder and a train-tokenizer run folder (tokenizer.safetensors + config.json) give the same
    tokenizer weights, in eval mode; a folder with neither is a clear error."""
    from safetensors.torch import save_file

    from eartalking.cli import UserError

    checkpoint.save(tmp_path / "ck", model)
    run = tmp_path / "run"
    run.mkdir()
    save_file({k: v.contiguous() for k, v in model.tokenizer.state_dict().items()}, str(run / "tokenizer.safetensors"))
    model.cfg.save(run / "config.json")
    want = model.tokenizer.state_dict()
    for d in (tmp_path / "ck", run):
        tok, cfg = checkpoint.load_tokenizer(d)
        got = tok.state_dict()
        assert cfg == model.cfg and not tok.training
        assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    with pytest.raises(UserError, match="missing"):
        checkpoint.load_tokenizer(tmp_path / "nowhere")


def test_random_model_is_reproducible():
    a, b = checkpoint.random_model("test_small", 4), checkpoint.random_model("test_small", 4)
    c = checkpoint.random_model("test_small", 5)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["decoder.head.weight"], sc["decoder.head.weight"])


def test_model_package_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, eartalking.model, eartalking.sampling; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------- information (printed, not asserted)
def test_print_tiny_sizes_and_step_time(capsys):
    m = checkpoint.random_model("tiny", seed=0)
    d = m.decoder
    portrait = torch.rand(1, 3, m.cfg.tokenizer.image_size, m.cfg.tokenizer.image_size)
    gen = StreamingGenerator(m, portrait)
    audio = torch.randn(1, d.A, m.cfg.audio.dim)
    for _ in range(3):
        gen.step(audio)
    t0 = time.perf_counter()
    n = 10
    for _ in range(n):
        gen.step(audio)
    ms = (time.perf_counter() - t0) / n * 1e3
    with capsys.disabled():
        print(f"\n[tiny] params {m.param_counts()}  step_decoder eager {ms:.1f} ms/frame "
              f"({torch.get_num_threads()} threads)")


# ---------------------------------------------------------------- anchored previous tokens
def test_anchored_cells_ignore_previous_tokens_on_every_path():
    """With ``anchor_cells`` the previous-frame input of those cells is the portrait's token: what the model
    produced there before has no effect, and streaming still equals the full recompute."""
    cfg = config.preset("test_small")
    cfg.decoder.anchor_cells = (1, 2, 5)
    m = checkpoint.random_model(cfg, seed=3)
    d = m.decoder
    T = 2 * d.W + 3
    portrait, audio, controls, mask = _inputs(m, T=T, seed=40)
    ref = m.tokenizer.encode(portrait)
    g = torch.Generator().manual_seed(41)
    prev = torch.randint(0, d.K, (1, T, d.N), generator=g)
    other = prev.clone()
    other[..., [1, 2, 5]] = torch.randint(0, d.K, (1, T, 3), generator=g)  # only anchored cells differ
    with torch.no_grad():
        a = d.forward_train(ref, audio, controls, mask, prev)
        b = d.forward_train(ref, audio, controls, mask, other)
        assert torch.equal(a, b)
        changed = prev.clone()
        changed[..., 0] = (changed[..., 0] + 1) % d.K  # a free cell still matters
        assert not torch.equal(a, d.forward_train(ref, audio, controls, mask, changed))
    _, toks, logs = _stream(m, portrait, audio, controls, mask)
    ref_toks, ref_logs = reference_generate(m, portrait, audio, controls, mask)
    torch.testing.assert_close(logs, ref_logs, atol=LOGIT_ATOL, rtol=0)
    assert torch.equal(toks, ref_toks)
    with pytest.raises(ValueError, match="anchor_cells"):
        bad = config.preset("test_small")
        bad.decoder.anchor_cells = (d.N,)
        checkpoint.random_model(bad, seed=0)


def test_eye_refiner_changes_only_the_eye_boxes_and_starts_as_identity():
    """EyeRefiner: at its zero start the decoded image is bit-identical to the same tokenizer without one; with
    random weights it changes pixels inside the grown eye boxes and none outside them (the mouth stays what
    the image side drew); a tokenizer saved without one loads into one with it."""
    import dataclasses

    from eartalking.model.tokenizer import Tokenizer, grown_eye_boxes

    base_cfg = config.preset("test_small").tokenizer
    torch.manual_seed(int(np.random.default_rng().integers(1 << 30)))
    plain = Tokenizer(base_cfg).eval()
    refined = Tokenizer(dataclasses.replace(base_cfg, eye_refiner=8)).eval()
    missing, unexpected = refined.load_state_dict(plain.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("eyes.") for k in missing)
    S = base_cfg.image_size
    refs = plain.reference(torch.rand(2, 3, S, S))
    tokens = torch.randint(0, base_cfg.codebook_size, (2, base_cfg.tokens_per_frame))
    with torch.no_grad():
        a = plain.decode(tokens, refs)
        assert torch.equal(refined.decode(tokens, refs), a)
        torch.nn.init.normal_(refined.eyes.net[-1].weight, std=0.2)
        b = refined.decode(tokens, refs)
    inside = grown_eye_boxes(S).bool().expand_as(a)
    assert torch.equal(b[~inside], a[~inside])
    assert (b[inside] - a[inside]).abs().mean() > 1e-3


def _unblend_pair(seed: int):
    """(plain, unblend) test_small tokenizers with the same random weights, an eye code and a pixel path that
    blends (its masks start at zero, so their biases are set), + the eye cells and the shut token."""
    import dataclasses

    from eartalking.model.tokenizer import Tokenizer

    cfg = dataclasses.replace(config.preset("test_small").tokenizer, eye_code=(1,))
    torch.manual_seed(seed)
    plain = Tokenizer(cfg).eval()
    with torch.no_grad():
        plain.pix.mix_img.bias.uniform_(0.3, 0.7)
        torch.nn.init.normal_(plain.pix.mix_img.weight, std=0.1)
    unb = Tokenizer(dataclasses.replace(cfg, eye_unblend=True)).eval()
    unb.load_state_dict(plain.state_dict())  # no new weights: the same state dict loads strictly
    cells = [int(i) for i in torch.nonzero(unb.eye_cell_mask.flatten()).flatten()]
    return cfg, plain, unb, cells, cfg.codebook_size - 1  # token K-1: every digit at the top level (shut)


def _open_and_shut(cfg, levels: int, cells: list[int], shut: int, batch: int = 2):
    """Fresh random tokens [batch, N] with no cell in the eye code's shut corner (digit 0 capped at open_max),
    and the same with the eye ``cells`` set to the ``shut`` token."""
    tokens = torch.randint(0, cfg.codebook_size, (batch, cfg.tokens_per_frame))
    digit0 = tokens % levels
    open_ = torch.where(digit0 > cfg.eye_code[0], tokens - (digit0 - cfg.eye_code[0]), tokens)
    shut_t = open_.clone()
    shut_t[:, cells] = shut
    return open_, shut_t


def test_eye_cell_mask_matches_the_step_decoders_eye_cells():
    from eartalking.model.tokenizer import eye_cell_mask
    from eartalking.train.decoder import eye_cells

    for name in ("tiny", "test_small"):
        cfg = config.preset(name)
        t = cfg.tokenizer
        got = [int(i) for i in torch.nonzero(eye_cell_mask(t.image_size, t.grid).flatten()).flatten()]
        assert got == eye_cells(cfg) and got


def test_eye_unblend_changes_only_the_eye_boxes_of_shut_eye_tokens():
    """tokenizer.eye_unblend: with open eye tokens the decoded image is bit-identical to the same weights without
    it; with the eye cells in the shut corner, pixels outside the grown eye boxes are unchanged and some inside
    change; where the portrait's eye mask covers everything, the boxes equal what the decoder draws with no
    pixel path blend at all (the portrait's open eyes held back)."""
    from eartalking.model.tokenizer import grown_eye_boxes

    cfg, plain, unb, cells, shut = _unblend_pair(int(np.random.default_rng().integers(1 << 30)))
    S = cfg.image_size
    refs = plain.reference(torch.rand(2, 3, S, S))
    open_, shut_t = _open_and_shut(cfg, plain.levels, cells, shut)
    inside = grown_eye_boxes(S).bool().expand(2, 3, S, S)
    with torch.no_grad():
        assert torch.equal(unb.decode(open_, refs), plain.decode(open_, refs))
        a, b = plain.decode(shut_t, refs), unb.decode(shut_t, refs)
        assert torch.equal(b[~inside], a[~inside])
        assert (b[inside] - a[inside]).abs().max() > 1e-3  # the portrait's eye pixels were left out
        unb.portrait_eyes.fill_(1.0)  # a portrait that is all eye: nothing of it blends into the shut boxes
        b = unb.decode(shut_t, refs)
        for conv in (plain.pix.mix_img, plain.pix.mix_map):  # no blend anywhere: the decoder's own drawing
            conv.weight.zero_()
            conv.bias.zero_()
        torch.testing.assert_close(b[inside], plain.decode(shut_t, refs)[inside], atol=1e-6, rtol=0)


def test_portrait_eyes_sit_on_the_alignment_templates_eyes():
    """The ellipses eye_unblend holds back are centred where the face aligner puts the eyes (one fact, two
    modules), cover each centre fully and stay inside the eye boxes' rows."""
    from eartalking.data.faces import TEMPLATE
    from eartalking.model.tokenizer import PORTRAIT_EYE_CENTRES, eye_boxes, portrait_eyes

    assert np.allclose(np.array(PORTRAIT_EYE_CENTRES), TEMPLATE[:2])
    S = 128
    m = portrait_eyes(S)[0, 0]
    for cx, cy in PORTRAIT_EYE_CENTRES:
        assert m[int(cy * S), int(cx * S)] == 1.0
    rows = torch.nonzero(m.amax(1)).flatten()
    box_rows = torch.nonzero(eye_boxes(S)[0, 0].amax(1)).flatten()
    assert rows.min() >= box_rows.min() - 3 and rows.max() <= box_rows.max() + 3 and m.sum() > 100


def test_eye_refiner_shut_only_leaves_open_eyes_exactly_and_refines_shut_ones():
    """tokenizer.eye_refiner_shut_only: with random (not zero-start) refiner weights, frames whose eye tokens are
    open decode bit-identically to the same weights with no refiner at all; frames with shut eye tokens change
    inside the grown eye boxes and nowhere else. Refused without eye_unblend (no shut map to gate by)."""
    import dataclasses

    from eartalking.model.tokenizer import Tokenizer, grown_eye_boxes

    cfg, plain, unb, cells, shut = _unblend_pair(int(np.random.default_rng().integers(1 << 30)))
    gated = Tokenizer(dataclasses.replace(cfg, eye_unblend=True, eye_refiner=8, eye_refiner_shut_only=True)).eval()
    missing, unexpected = gated.load_state_dict(unb.state_dict(), strict=False)
    assert unexpected == [] and missing and all(k.startswith("eyes.") for k in missing)
    with torch.no_grad():
        torch.nn.init.normal_(gated.eyes.net[-1].weight, std=0.2)
        gated.eyes.net[-1].bias.uniform_(-0.1, 0.1)
    S = cfg.image_size
    refs = unb.reference(torch.rand(2, 3, S, S))
    open_, shut_t = _open_and_shut(cfg, plain.levels, cells, shut)
    inside = grown_eye_boxes(S).bool().expand(2, 3, S, S)
    with torch.no_grad():
        assert torch.equal(gated.decode(open_, refs), unb.decode(open_, refs))
        a, b = unb.decode(shut_t, refs), gated.decode(shut_t, refs)
    assert torch.equal(b[~inside], a[~inside])
    assert (b[inside] - a[inside]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="eye_refiner_shut_only"):
        Tokenizer(dataclasses.replace(cfg, eye_refiner=8, eye_refiner_shut_only=True))  # no eye_unblend
    with pytest.raises(ValueError, match="eye_refiner_shut_only"):
        Tokenizer(dataclasses.replace(cfg, eye_unblend=True, eye_refiner_shut_only=True))  # no refiner


def test_eye_unblend_axes_size_the_held_back_ellipses():
    """tokenizer.eye_unblend_axes: larger semi-axes give a mask that contains the default one and covers more,
    the tokenizer's buffer follows its config, and axes outside (0, 0.25) are refused by name."""
    import dataclasses

    from eartalking.model.tokenizer import PORTRAIT_EYE_AXES, Tokenizer, portrait_eyes

    S = 64
    small, big = portrait_eyes(S), portrait_eyes(S, (0.10, 0.065))
    assert torch.equal(small, portrait_eyes(S, PORTRAIT_EYE_AXES))
    assert bool((big >= small).all()) and float(big.sum()) > 1.3 * float(small.sum())
    cfg = dataclasses.replace(config.preset("test_small").tokenizer, eye_code=(1,), eye_unblend=True,
                              eye_unblend_axes=(0.10, 0.065))
    assert torch.equal(Tokenizer(cfg).portrait_eyes, portrait_eyes(cfg.image_size, (0.10, 0.065)))
    for bad in ((0.3, 0.05), (0.08, 0.0), (0.08,)):
        with pytest.raises(ValueError, match="eye_unblend_axes"):
            Tokenizer(dataclasses.replace(cfg, eye_unblend_axes=bad))


def test_eye_unblend_needs_a_pixel_path_and_an_eye_code():
    import dataclasses

    from eartalking.model.tokenizer import Tokenizer

    t = config.preset("test_small").tokenizer
    with pytest.raises(ValueError, match="eye_unblend needs"):
        Tokenizer(dataclasses.replace(t, eye_unblend=True))  # no eye_code
    with pytest.raises(ValueError, match="eye_unblend needs"):
        Tokenizer(dataclasses.replace(t, eye_unblend=True, eye_code=(1,), ref_pixels=False))


def test_eye_state_pick_is_one_shut_or_open_state_for_the_group():
    """decoder.eye_state_*: on fresh random logits the group's cells are all in the shut corner exactly when their
    mean shut mass is above the threshold, and none is otherwise (brute force: code_mean over the shut tokens;
    open = the portrait's token with its first digit capped out of the corner); the case that motivates it, 30%
    shut mass over open tokens with high digits, is a shut corner under plain code_mean and open here; cells
    outside the group and sampled rows are what select() gives; bad settings are refused by name."""
    import dataclasses

    from eartalking import config
    from eartalking.model.checkpoint import random_model
    from eartalking.model.decoder import state_pick

    K, L, om, cells = 64, 4, 1, (5, 6)
    k = np.arange(K)
    dig = np.stack([(k // L ** i) % L for i in range(3)], -1)
    shut = torch.from_numpy((dig > om).all(-1))
    g = torch.Generator().manual_seed(int(np.random.default_rng().integers(1 << 30)))
    logits = torch.randn(6, 16, K, generator=g) * 2.0
    logits[:, list(cells)] += shut.float() * torch.linspace(-4, 4, 6)[:, None, None]  # shut mass low .. high
    ref = torch.randint(0, K, (6, 16), generator=g)
    ref[0, cells[0]] = K - 1  # a portrait whose own eye token is in the corner: capped when open
    got = torch.zeros(6, 16, dtype=torch.long)
    got[:, list(cells)] = state_pick(logits[:, list(cells)], shut, om, 0.5, 0.7, ref[:, list(cells)])
    p = torch.softmax(logits.double(), -1).numpy()
    mass = p[:, list(cells)][..., shut.numpy()].sum(-1).mean(-1)  # [6]
    assert (mass > 0.5).any() and (mass <= 0.5).any()  # both states occur
    for b in range(6):
        for c in cells:
            if mass[b] > 0.5:
                q = np.exp(logits[b, c].double().numpy() / 0.7) * shut.numpy()
                e = np.clip(np.round((q / q.sum()) @ dig), 0, L - 1)
            else:
                e = dig[int(ref[b, c])].copy()
                if (e > om).all():
                    e[0] = om
            assert int(got[b, c]) == int(e @ np.array([1, L, L * L]))
            assert bool(shut[got[b, c]]) == bool(mass[b] > 0.5)
    # the motivating case: 30% on the shut corner, 70% on open tokens whose digits are high ((3,3,1) and its
    # rotations): the expected digits (about 2.4 each) round into the corner, though the eyes are most likely open
    lg = torch.full((1, 16, K), -30.0)
    hi_open = [1 * a + L * b + L * L * c for a, b, c in ((3, 3, 1), (3, 1, 3), (1, 3, 3))]
    lg[0, :, hi_open] = float(np.log(0.7 / 3))
    lg[0, :, shut] = float(np.log(0.3 / shut.sum().item()))
    assert bool(shut[code_mean(lg, 1.0)[0, 5]])
    assert not bool(shut[state_pick(lg[:, list(cells)], shut, om, 0.5, 1.0, torch.full((1, 2), K - 1))[0, 0]])
    cfg = config.preset("test_small")
    dcfg = dataclasses.replace(cfg.decoder, greedy="code_mean", code_mean_temperature=0.7, eye_state_cells=cells,
                               eye_state_open_max=om, eye_state_threshold=0.5)
    dec = random_model(dataclasses.replace(cfg, decoder=dcfg), seed=0).decoder
    temp = torch.zeros(6, 1)
    temp[0] = 0.9  # a sampled row: untouched
    noise = torch.from_numpy(np.stack([gumbel_noise(4, 2, (16, K))] * 6))
    plain = select(logits, temp, noise, dec.top_k, "code_mean", 0.7, None, ref)
    out = dec.pick(logits, temp, noise, ref)
    others = [n for n in range(16) if n not in cells]
    assert torch.equal(out[:, others], plain[:, others]) and torch.equal(out[0], plain[0])
    assert torch.equal(out[1:, list(cells)], got[1:, list(cells)])
    # without a blink control the absent threshold decides (1 = open unless asked); with one, the threshold
    dec.eye_state_absent_threshold = 1.0
    mask = torch.zeros(6, cfg.decoder.n_controls)
    mask[:3, CONTROL_NAMES.index("blink")] = 1.0
    out = dec.pick(logits, temp, noise, ref, mask)
    assert torch.equal(out[1:3, list(cells)], got[1:3, list(cells)])
    assert not bool(shut[out[3:, list(cells)]].any())
    assert torch.equal(dec.pick(logits, temp, noise, ref), dec.pick(logits, temp, noise, ref, torch.zeros_like(mask)))
    for bad, msg in (({"eye_state_cells": (3, 16)}, "outside"), ({"eye_state_threshold": 1.0}, "(0, 1)"),
                     ({"eye_state_absent_threshold": 0.0}, "absent_threshold"),
                     ({"eye_state_open_max": L - 1}, "eye_state_open_max")):
        with pytest.raises(ValueError, match=msg):
            random_model(dataclasses.replace(cfg, decoder=dataclasses.replace(dcfg, **bad)), seed=0)


def _hide_pair(seed: int, axes=(0.24, 0.24)):
    """(plain, hidden) test_small tokenizers with the same random weights and a pixel path that blends (its
    masks start at zero, so their biases are set); ``hidden`` has tokenizer.mouth_hide on with ``axes``."""
    import dataclasses

    from eartalking.model.tokenizer import Tokenizer

    cfg = config.preset("test_small").tokenizer
    torch.manual_seed(seed)
    plain = Tokenizer(cfg).eval()
    with torch.no_grad():
        plain.pix.mix_img.bias.uniform_(0.3, 0.7)
        torch.nn.init.normal_(plain.pix.mix_img.weight, std=0.1)
    hidden = Tokenizer(dataclasses.replace(cfg, mouth_hide=True, mouth_hide_axes=axes)).eval()
    hidden.load_state_dict(plain.state_dict())  # no new weights: the same state dict loads strictly
    return cfg, plain, hidden


def test_mouth_hide_keeps_the_portraits_mouth_out_of_the_frame():
    """tokenizer.mouth_hide: two portraits that differ only inside the hidden ellipse (by a perturbation with zero
    mean there, so the fill colour is the same) give the same reference features (bar the raw portrait) and the
    same decoded frames for fresh random tokens; without mouth_hide the same weights draw them differently."""
    cfg, plain, hidden = _hide_pair(int(np.random.default_rng().integers(1 << 30)))
    S = cfg.image_size
    full = hidden.portrait_mouth[0, 0] >= 1.0
    inner = -torch.nn.functional.max_pool2d(-full.float()[None, None], 13, stride=1, padding=6)[0, 0] > 0
    assert int(inner.sum()) > 20  # the part of the ellipse away from its ramp by 6 px
    a = torch.rand(2, 3, S, S) * 0.6 + 0.2
    delta = torch.randn(2, 3, S, S) * 0.15 * inner
    delta = delta - inner * delta.sum((2, 3), keepdim=True) / inner.sum()  # zero mean inside: the same fill
    b = a + delta
    tokens = torch.randint(0, cfg.codebook_size, (2, cfg.tokens_per_frame))
    with torch.no_grad():
        ra, rb = hidden.reference(a), hidden.reference(b)
        assert torch.equal(ra[0], a) and torch.equal(rb[0], b)  # the pixel path gets the portrait as given
        for fa, fb in zip(ra[1:], rb[1:], strict=True):
            torch.testing.assert_close(fa, fb, atol=1e-5, rtol=0)
        torch.testing.assert_close(hidden.decode(tokens, ra), hidden.decode(tokens, rb), atol=1e-5, rtol=0)
        pa, pb = plain.decode(tokens, plain.reference(a)), plain.decode(tokens, plain.reference(b))
    assert (pa - pb).abs().max() > 1e-3


def test_portrait_mouth_sits_on_the_alignment_templates_mouth():
    """The ellipse mouth_hide hides is centred where the face aligner puts the mouth (one fact, two modules),
    covers the centre fully, grows with its axes, and axes outside (0, 0.25) are refused by name."""
    import dataclasses

    from eartalking.data.faces import TEMPLATE
    from eartalking.model.tokenizer import PORTRAIT_MOUTH_CENTRE, Tokenizer, hide_mouth, portrait_mouth

    assert np.allclose(np.array(PORTRAIT_MOUTH_CENTRE), TEMPLATE[2])
    S = 128
    m = portrait_mouth(S, (0.17, 0.1))[0, 0]
    cx, cy = PORTRAIT_MOUTH_CENTRE
    assert m[int(cy * S), int(cx * S)] == 1.0 and m[int(0.4 * S), :].sum() == 0  # the eyes' rows are untouched
    big = portrait_mouth(S, (0.2, 0.12))[0, 0]
    assert bool((big >= m).all()) and float(big.sum()) > 1.2 * float(m.sum())
    img = torch.rand(1, 3, S, S)
    out = hide_mouth(img, m[None, None])
    assert torch.equal(out[..., m == 0], img[..., m == 0])  # nothing outside the ellipse changes
    inside = out[..., m >= 1.0]
    assert float((inside - inside.mean(-1, keepdim=True)).abs().max()) < 1e-6  # one colour per channel inside
    t = config.preset("test_small").tokenizer
    for bad in ((0.3, 0.1), (0.1, 0.0), (0.1,)):
        with pytest.raises(ValueError, match="mouth_hide_axes"):
            Tokenizer(dataclasses.replace(t, mouth_hide=True, mouth_hide_axes=bad))
    with pytest.raises(ValueError, match="mouth_hide needs ref_pixels"):
        Tokenizer(dataclasses.replace(t, mouth_hide=True, ref_pixels=False))


def test_mouth_hide_pixels_only_keeps_the_features_and_holds_the_pixel_path():
    """tokenizer.mouth_hide_features false: the reference features are exactly those of the same weights without
    hiding (the portrait's lips stay in them), while the pixel path holds the mouth back exactly as full hiding
    does (decoding the same refs gives the same frame); the frame differs from no hiding at all."""
    import dataclasses

    from eartalking.model.tokenizer import Tokenizer

    cfg, plain, hidden = _hide_pair(int(np.random.default_rng().integers(1 << 30)), axes=(0.17, 0.1))
    pix = Tokenizer(dataclasses.replace(hidden.cfg, mouth_hide_features=False)).eval()
    pix.load_state_dict(plain.state_dict())
    S = cfg.image_size
    a = torch.rand(2, 3, S, S)
    tokens = torch.randint(0, cfg.codebook_size, (2, cfg.tokens_per_frame))
    with torch.no_grad():
        refs = plain.reference(a)
        for x, y in zip(pix.reference(a), refs, strict=True):
            assert torch.equal(x, y)
        assert not torch.equal(hidden.reference(a)[1], refs[1])
        got = pix.decode(tokens, refs)
        assert torch.equal(got, hidden.decode(tokens, refs))
        assert (got - plain.decode(tokens, refs)).abs().max() > 1e-3

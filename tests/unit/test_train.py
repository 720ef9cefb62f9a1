"""Training CLIs on a tiny real corpus (64 px, 3 clips) with the test_small preset: resumable tokenizer training,
decoder training that writes a loadable checkpoint holding exactly the trained tokenizer, metrics and plots.
A few optimizer steps each (quality is not tested here; ``eartalking evaluate`` measures it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from eartalking.cli import main
from eartalking.model.tokenizer import ENCODER_PARTS


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _tok_args(data: Path, out: Path, steps: int) -> list[str]:
    return ["train-tokenizer", "--data", str(data), "--out", str(out), "--preset", "test_small", "--steps",
            str(steps), "--batch", "2", "--threads", "1", "--device", "cpu", "--minutes", "0", "--seed", "5"]


def _optimizer_steps(argv: list[str]) -> int:
    """Run the CLI with ``argv`` (it must succeed) -> how many AdamW steps it took."""
    calls = []
    original = torch.optim.AdamW.step

    def counted(self, *a, **k):
        calls.append(1)
        return original(self, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.optim.AdamW, "step", counted)
        assert main(argv) == 0
    return len(calls)


@pytest.fixture(scope="module")
def tokenizer_runs(corpus_dir, tmp_path_factory) -> dict:
    """Train 3 steps, snapshot, resume to 5 steps."""
    out = tmp_path_factory.mktemp("tok")
    assert main(_tok_args(corpus_dir, out, 3)) == 0
    snap = {"state": json.loads((out / "trainer_state.json").read_text()),
            "optim": load_file(str(out / "optimizer.safetensors")),
            "weights": load_file(str(out / "tokenizer.safetensors")),
            "rows": _rows(out / "metrics.jsonl")}
    return {"out": out, "after3": snap, "resumed_steps": _optimizer_steps(_tok_args(corpus_dir, out, 5))}


def test_tokenizer_trains_and_resumes(tokenizer_runs):
    out, s3 = tokenizer_runs["out"], tokenizer_runs["after3"]
    assert s3["state"]["step"] == 3
    steps3 = {k: float(v) for k, v in s3["optim"].items() if k.endswith(".step")}
    assert steps3 and set(steps3.values()) == {3.0}  # AdamW's per-parameter step counters
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] == 5
    optim = load_file(str(out / "optimizer.safetensors"))
    assert tokenizer_runs["resumed_steps"] == 2  # went on from step 3 (a restart would take 5 steps) ...
    assert {float(v) for k, v in optim.items() if k.endswith(".step")} == {5.0}  # ... with the restored state
    assert set(optim) == set(s3["optim"])
    moved = [k for k in s3["optim"] if k.endswith("exp_avg_sq") and not torch.equal(optim[k], s3["optim"][k])]
    assert moved
    w5 = load_file(str(out / "tokenizer.safetensors"))
    assert any(not torch.equal(w5[k], s3["weights"][k]) for k in w5)  # the two resumed steps trained
    rows = _rows(out / "metrics.jsonl")
    assert len(rows) > len(s3["rows"]) >= 1 and rows[-1]["step"] == 5
    assert all(r["step"] for r in rows) and 0 < rows[-1]["eval_psnr"] < 60
    assert (out / "loss.png").stat().st_size > 1000 and (out / "config.json").is_file()


def test_decoder_training_writes_loadable_checkpoint(tokenizer_runs, corpus_dir, tmp_path):
    from eartalking.model import checkpoint

    tok = tokenizer_runs["out"]
    out = tmp_path / "dec"
    rc = main(["train", "--data", str(corpus_dir), "--tokenizer", str(tok), "--out", str(out), "--steps", "3",
               "--batch", "2", "--frames", "8", "--threads", "1", "--device", "cpu", "--minutes", "0",
               "--change-weight", "4", "--max-corrupt", "0.5", "--region-drop", "0.5", "--region-weight", "2",
               "--blink-weight", "4"])
    assert rc == 0
    model, cfg = checkpoint.load(out)
    assert cfg.name == "test_small" and cfg.tokenizer.image_size == 64
    trained = load_file(str(tok / "tokenizer.safetensors"))
    got = model.tokenizer.state_dict()
    assert set(trained) <= set(got)
    for k, v in trained.items():
        assert torch.equal(got[k], v), k
    fresh = checkpoint.random_model(cfg, seed=0)  # = the initial weights of `train --seed 0`: 3 steps moved them
    assert any(not torch.equal(a, b) for a, b in zip(model.decoder.state_dict().values(),
                                                      fresh.decoder.state_dict().values(), strict=True))
    rows = _rows(out / "metrics.jsonl")
    assert rows and rows[-1]["step"] == 3 and 0 <= rows[-1]["eval_acc"] <= 1 and rows[-1]["eval_ce"] > 0
    assert 0 <= rows[-1]["eval_acc_changed"] <= 1  # accuracy on tokens that differ from the previous frame
    assert 0 <= rows[-1]["eval_acc_region"] <= 1  # accuracy over the mouth and eye cells
    blink = rows[-1]["eval_acc_blink"]  # eye cells in blinking frames (NaN when no eval window blinks)
    assert blink != blink or 0 <= blink <= 1
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 3
    assert (out / "loss.png").stat().st_size > 1000


def test_decoder_init_and_eye_only_loss_keep_the_audio_encoder(tokenizer_runs, corpus_dir, tmp_path, capsys):
    """train --init RUN --loss-cells eyes: starts from RUN's weights at step 0, keeps the audio encoder (what
    the mouth is drawn from) bit-identical and trains the step decoder; a missing --init is a clear error."""
    from eartalking.model import checkpoint

    tok = tokenizer_runs["out"]
    base = ["train", "--data", str(corpus_dir), "--tokenizer", str(tok), "--batch", "2", "--frames", "8",
            "--threads", "1", "--device", "cpu", "--minutes", "0", "--region-drop", "1.0", "--blink-weight", "4"]
    first = tmp_path / "first"
    assert main(base + ["--out", str(first), "--steps", "2"]) == 0
    assert main(base + ["--out", str(tmp_path / "bad"), "--steps", "1", "--init", str(tmp_path / "none")]) == 2
    assert "--init" in capsys.readouterr().err
    out = tmp_path / "eyes"
    assert main(base + ["--out", str(out), "--steps", "2", "--init", str(first), "--loss-cells", "eyes"]) == 0
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 2  # a fresh count, not first's 2 + 2
    a, _ = checkpoint.load(first)
    b, _ = checkpoint.load(out)
    for (k, va), vb in zip(a.audio.state_dict().items(), b.audio.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert any(not torch.equal(va, vb) for va, vb in zip(a.decoder.state_dict().values(),
                                                         b.decoder.state_dict().values(), strict=True))


def _init_decoder(tokenizer_runs, corpus_dir, tmp_path, capsys) -> tuple[list[str], Path]:
    """The `train` arguments the eye-training tests share, and a 1-step decoder run under tmp_path/first for
    their --init (captured output cleared)."""
    base = ["train", "--data", str(corpus_dir), "--tokenizer", str(tokenizer_runs["out"]), "--batch", "2",
            "--frames", "8", "--threads", "1", "--device", "cpu", "--minutes", "0", "--region-drop", "1.0",
            "--seed", "3"]
    first = tmp_path / "first"
    assert main(base + ["--out", str(first), "--steps", "1"]) == 0
    capsys.readouterr()
    return base, first


def _decoder_inputs(cfg, B: int = 3, T: int = 6) -> tuple[torch.Tensor, ...]:
    """Fixed-seed random step-decoder inputs for ``cfg``: ref [B,N], audio [B,T,A,D_a], controls and presence
    mask [B,T,C], previous tokens [B,T,N]."""
    g = torch.Generator().manual_seed(0)
    N, K, C = cfg.tokenizer.tokens_per_frame, cfg.tokenizer.codebook_size, cfg.decoder.n_controls
    ref, prev = torch.randint(0, K, (B, N), generator=g), torch.randint(0, K, (B, T, N), generator=g)
    audio = torch.randn(B, T, cfg.audio.tokens_per_frame, cfg.audio.dim, generator=g)
    controls, mask = torch.rand(B, T, C, generator=g), (torch.rand(B, T, C, generator=g) < 0.5).float()
    return ref, audio, controls, mask, prev


def test_keep_others_holds_the_non_eye_cells_at_the_init_decoder(tokenizer_runs, corpus_dir, tmp_path, capsys):
    """train --loss-cells eyes --keep-others W: refused without --loss-cells eyes; with it, the other cells'
    token distributions (on fresh random inputs) move less from the --init decoder's than without it."""
    import torch.nn.functional as F

    from eartalking.model import checkpoint
    from eartalking.train.decoder import eye_cells

    base, first = _init_decoder(tokenizer_runs, corpus_dir, tmp_path, capsys)
    assert main(base + ["--out", str(tmp_path / "bad"), "--steps", "1", "--init", str(first),
                        "--keep-others", "1"]) == 2
    assert "--loss-cells eyes" in capsys.readouterr().err
    eyes = ["--init", str(first), "--loss-cells", "eyes", "--steps", "4", "--lr", "1e-2", "--blink-weight", "4"]
    assert main(base + ["--out", str(tmp_path / "plain")] + eyes) == 0
    assert main(base + ["--out", str(tmp_path / "kept"), "--keep-others", "50"] + eyes) == 0
    init, cfg = checkpoint.load(first)
    ref, audio, ctrl, mask, prev = _decoder_inputs(cfg)
    others = [c for c in range(cfg.tokenizer.tokens_per_frame) if c not in eye_cells(cfg)]

    def logp(model) -> torch.Tensor:
        with torch.no_grad():
            return F.log_softmax(model.decoder.forward_train(ref, audio, ctrl, mask, prev)[..., others, :], -1)

    want = logp(init)

    def moved(run: str) -> float:
        got = logp(checkpoint.load(tmp_path / run)[0])
        return float((want.exp() * (want - got)).sum(-1).mean())

    plain, kept = moved("plain"), moved("kept")
    assert plain > 1e-3 and kept < 0.5 * plain, (plain, kept)


def test_eye_rows_only_changes_only_the_eye_slot_and_blink_control_rows(tokenizer_runs, corpus_dir, tmp_path,
                                                                        capsys):
    """train --loss-cells eyes --eye-rows-only: refused without --loss-cells eyes; a run changes the eye
    cells' slot_query rows and the blink control's rows and leaves every other decoder and audio weight
    bit-identical to the --init run's."""
    from eartalking.config import CONTROL_NAMES
    from eartalking.model import checkpoint
    from eartalking.train.decoder import eye_cells

    base, first = _init_decoder(tokenizer_runs, corpus_dir, tmp_path, capsys)
    assert main(base + ["--out", str(tmp_path / "bad"), "--steps", "1", "--init", str(first),
                        "--eye-rows-only"]) == 2
    assert "--loss-cells eyes" in capsys.readouterr().err
    assert main(base + ["--out", str(tmp_path / "rows"), "--init", str(first), "--loss-cells", "eyes",
                        "--eye-rows-only", "--steps", "3", "--lr", "1e-2", "--blink-weight", "4"]) == 0
    (init, cfg), (got, _) = checkpoint.load(first), checkpoint.load(tmp_path / "rows")
    before, after = init.state_dict(), got.state_dict()
    rows = {"decoder.slot_query": eye_cells(cfg), "decoder.control_weight": [CONTROL_NAMES.index("blink")],
            "decoder.type_embedding": [CONTROL_NAMES.index("blink")],
            "decoder.null_embedding": [CONTROL_NAMES.index("blink")]}
    for k, v in before.items():
        if k in rows:
            moved = (after[k] != v).any(-1)
            assert moved[rows[k]].all() and not moved[[i for i in range(len(v)) if i not in rows[k]]].any(), k
        else:
            assert torch.equal(after[k], v), k


def test_isolate_eyes_rows_only_leaves_every_other_cell_exactly_as_loaded(tokenizer_runs, corpus_dir, tmp_path,
                                                                           capsys):
    """train --isolate-eyes --eye-rows-only: the run's config records the eye cells and the blink control as
    the isolated group, and on fresh random inputs (blink requested or not) every other cell's logits are
    bit-identical to the --init weights' under that config, while the eye cells' moved."""
    from eartalking.model import checkpoint
    from eartalking.train.decoder import eye_cells

    base, first = _init_decoder(tokenizer_runs, corpus_dir, tmp_path, capsys)
    assert main(base + ["--out", str(tmp_path / "iso"), "--init", str(first), "--loss-cells", "eyes",
                        "--eye-rows-only", "--isolate-eyes", "--steps", "3", "--lr", "1e-2",
                        "--blink-weight", "4"]) == 0
    got, cfg = checkpoint.load(tmp_path / "iso")
    eyes = eye_cells(cfg)
    resume = base + ["--out", str(tmp_path / "iso"), "--init", str(first), "--loss-cells", "eyes", "--eye-rows-only",
                     "--steps", "4"]
    assert main(resume) == 2  # resuming without --isolate-eyes would train another graph
    assert "resume with the same --isolate-eyes" in capsys.readouterr().err
    assert cfg.decoder.isolated_cells == tuple(eyes) and cfg.decoder.isolated_controls == ("blink",)
    init = checkpoint.random_model(cfg, seed=1)
    init.load_state_dict(checkpoint.load(first)[0].state_dict())
    ref, audio, controls, mask, prev = _decoder_inputs(cfg)
    others = [c for c in range(cfg.tokenizer.tokens_per_frame) if c not in eyes]
    with torch.no_grad():
        a = init.decoder.forward_train(ref, audio, controls, mask, prev)
        b = got.decoder.forward_train(ref, audio, controls, mask, prev)
    assert torch.equal(a[:, :, others], b[:, :, others])
    assert (a[:, :, eyes] - b[:, :, eyes]).abs().amax() > 1e-4


def test_tokenizer_init_adds_the_aligner_and_keeps_the_encoder(tokenizer_runs, corpus_dir, tmp_path):
    """--init from weights without the reference aligner (an older tokenizer): they load, the aligner starts at
    identity and trains, and with --freeze-encoder the encoder (so every token index) stays bit-identical."""
    w = load_file(str(tokenizer_runs["out"] / "tokenizer.safetensors"))
    plain = {k: v for k, v in w.items() if not k.startswith("align.")}
    assert len(plain) < len(w)
    save_file(plain, str(tmp_path / "plain.safetensors"))
    out = tmp_path / "al"
    assert main(_tok_args(corpus_dir, out, 2) + ["--init", str(tmp_path / "plain.safetensors"),
                                                 "--freeze-encoder"]) == 0
    got = load_file(str(out / "tokenizer.safetensors"))
    enc = [k for k in plain if k.startswith(ENCODER_PARTS)]
    assert enc and all(torch.equal(got[k], plain[k]) for k in enc)
    assert float(got["align.conv.weight"].abs().sum()) > 0  # starts at zero (identity), then trained
    save_file({**plain, "extra.weight": torch.zeros(1)}, str(tmp_path / "bad.safetensors"))
    with pytest.raises(SystemExit, match="do not fit"):
        main(_tok_args(corpus_dir, tmp_path / "bad", 1) + ["--init", str(tmp_path / "bad.safetensors")])


def test_decoder_needs_a_trained_tokenizer(corpus_dir, tmp_path):
    with pytest.raises(SystemExit, match="train-tokenizer"):
        main(["train", "--data", str(corpus_dir), "--tokenizer", str(tmp_path / "none"), "--out",
              str(tmp_path / "dec"), "--steps", "1", "--threads", "1"])


def test_audio_pretraining_initialises_decoder_training(tokenizer_runs, corpus_dir, tmp_path):
    """train-audio writes an encoder + openness head that `train --init-audio` starts from (0 steps: the
    loaded weights must be exactly the pretrained ones)."""
    audio_out = tmp_path / "audio"
    rc = main(["train-audio", "--data", str(corpus_dir), "--out", str(audio_out), "--preset", "test_small",
               "--steps", "3", "--batch", "2", "--frames", "8", "--threads", "1", "--device", "cpu", "--minutes", "0"])
    assert rc == 0 and _rows(audio_out / "metrics.jsonl")[-1]["step"] == 3
    pre = load_file(str(audio_out / "audio.safetensors"))
    assert any(k.startswith("aux.") for k in pre) and any(k.startswith("audio.") for k in pre)
    out = tmp_path / "dec"
    rc = main(["train", "--data", str(corpus_dir), "--tokenizer", str(tokenizer_runs["out"]), "--out", str(out),
               "--init-audio", str(audio_out), "--steps", "0", "--batch", "2", "--frames", "8", "--threads", "1",
               "--device", "cpu", "--minutes", "0"])
    assert rc == 0
    from eartalking.model import checkpoint

    model, _ = checkpoint.load(out)
    for k, v in model.audio.state_dict().items():
        assert torch.equal(v, pre[f"audio.{k}"]), k
    # --init a decoder run and --init-audio together: the pretrained encoder replaces the run's, and with
    # --freeze-audio it stays exactly that while the step decoder trains on from the run's weights
    out2 = tmp_path / "dec2"
    rc = main(["train", "--data", str(corpus_dir), "--tokenizer", str(tokenizer_runs["out"]), "--out", str(out2),
               "--init", str(out), "--init-audio", str(audio_out), "--freeze-audio", "--steps", "2", "--batch",
               "2", "--frames", "8", "--threads", "1", "--device", "cpu", "--minutes", "0"])
    assert rc == 0
    model2, _ = checkpoint.load(out2)
    for k, v in model2.audio.state_dict().items():
        assert torch.equal(v, pre[f"audio.{k}"]), k
    assert any(not torch.equal(a, b) for a, b in zip(model.decoder.state_dict().values(),
                                                      model2.decoder.state_dict().values(), strict=True))
    aux = load_file(str(out2 / "aux_head.safetensors"))
    assert all(torch.equal(v, pre[f"aux.{k}"]) for k, v in aux.items())


def test_frame_sampler_mixes_real_video_clips_at_the_requested_share():
    import numpy as np

    from eartalking.train.common import MemClip
    from eartalking.train.tokenizer import FrameSampler

    def clip(value: int) -> MemClip:
        frames = np.full((4, 8, 8, 3), value, np.uint8)
        return MemClip(str(value), frames, np.zeros(0, np.float32), np.zeros((4, 0), np.float32),
                       np.full(4, np.nan, np.float32), frames[0], str(value))

    corpus, real = [clip(10)], [clip(200)]
    imgs, _ = FrameSampler(corpus, 0, real, 0.25).batch(400)
    share = float((imgs[:, 0, 0, 0] == 200).mean())
    assert 0.18 < share < 0.32  # binomial(400, 0.25): 5 sigma either side
    assert set(np.unique(imgs[:, 0, 0, 0])) == {10, 200}
    imgs, _ = FrameSampler(corpus, 0).batch(50)
    assert set(np.unique(imgs[:, 0, 0, 0])) == {10}


def test_frame_sampler_draws_blinking_frames_at_the_requested_share():
    """--blink-share: that share of a batch comes from frames whose blink label is >= 0.5 (frame value 255
    here, the open frames 0..); without it they appear at their natural rate. --ref-blink-share: the same for
    the references."""
    import numpy as np

    from eartalking.config import CONTROL_NAMES
    from eartalking.train.common import MemClip
    from eartalking.train.tokenizer import FrameSampler

    rng = np.random.default_rng()
    T, bi = 40, CONTROL_NAMES.index("blink")
    frames = np.zeros((T, 8, 8, 3), np.uint8)
    frames[..., 0] = np.arange(T)[:, None, None]  # whole frames: the sampler may flip them
    controls = np.zeros((T, len(CONTROL_NAMES)), np.float32)
    # frame 0 is the portrait: never shut; frame 5 (unknown openness, below) stays open so it can be drawn
    shut = rng.choice(np.r_[1:5, 6:T], size=2, replace=False)
    controls[shut, bi] = rng.uniform(0.5, 1.0, size=2)
    frames[shut, ..., 0] = 255
    opening = rng.uniform(0, 1, T).astype(np.float32)
    opening[5] = np.nan  # unknown openness stays unknown
    c = MemClip("c", frames, np.zeros(0, np.float32), controls, opening, frames[0].copy(), "p")
    imgs, _, labels, opens, replace = FrameSampler([c], 1, p_blink=0.4).labeled_batch(400)
    assert replace is None  # no decoder picks given
    share = float((imgs[:, 0, 0, 0] == 255).mean())  # 0.4 + 0.6 * 2/40 = 0.43
    assert 0.35 < share < 0.51, share
    # each frame comes with its own blink label (--blink-aux-weight): shut frames >= 0.5, the others 0
    assert labels.shape == (400,) and labels.dtype == np.float32
    assert np.array_equal(labels >= 0.5, imgs[:, 0, 0, 0] == 255) and set(labels[labels < 0.5]) == {0.0}
    # ... and its own openness label (--mouth-aux-weight)
    t = imgs[:, 0, 0, 0].astype(int)
    t[t == 255] = -1  # the shut frames, told apart by value only
    drawn = t >= 0
    assert opens.shape == (400,) and np.array_equal(opens[drawn], opening[t[drawn]], equal_nan=True)
    assert np.isnan(opens[t == 5]).all() and (t == 5).any()
    imgs, _ = FrameSampler([c], 1).batch(400)
    assert float((imgs[:, 0, 0, 0] == 255).mean()) < 0.12
    # --ref-blink-share: that share of references is a blinking frame (jitter keeps them far above 100)
    _, refs = FrameSampler([c], 2, p_ref_blink=0.4).batch(400)
    share = float((refs[..., 0].mean(axis=(1, 2)) > 100).mean())  # 0.4 + 0.6 * 0.3 * 2/40 = 0.41
    assert 0.32 < share < 0.50, share
    _, refs = FrameSampler([c], 2).batch(400)
    assert float((refs[..., 0].mean(axis=(1, 2)) > 100).mean()) < 0.06
    # --blink-share-min: the share is drawn only from frames at or above that label (here the higher of the two)
    hi, lo = (shut[0], shut[1]) if controls[shut[0], bi] >= controls[shut[1], bi] else (shut[1], shut[0])
    frames[hi, ..., 1], frames[lo, ..., 1] = 200, 100
    cut = float((controls[hi, bi] + controls[lo, bi]) / 2) if controls[hi, bi] > controls[lo, bi] else None
    if cut is not None:
        imgs, _ = FrameSampler([c], 3, p_blink=0.4, blink_min=cut).batch(400)
        g = imgs[:, 0, 0, 1]
        assert 0.35 < float((g == 200).mean()) < 0.5 and float((g == 100).mean()) < 0.08
    c.controls[:, bi] = 0.0
    from eartalking.cli import UserError

    with pytest.raises(UserError, match="blink-share"):
        FrameSampler([c], 1, p_blink=0.4)
    with pytest.raises(UserError, match="ref-blink-share"):
        FrameSampler([c], 1, p_ref_blink=0.4)
    c.controls[shut, bi] = 0.6
    with pytest.raises(UserError, match="blink-share-min 0.9"):
        FrameSampler([c], 1, p_blink=0.4, blink_min=0.9)


def test_region_tokens_mark_mouth_and_eyes_on_the_token_grid():
    from eartalking.train.decoder import region_tokens

    r = region_tokens(128, 8, torch.device("cpu")).reshape(8, 8)
    assert float(r.max()) == 1.0 and float(r.min()) >= 0.0
    mouth, eyes, forehead = r[5:6, 3:5], r[3, 2:6], r[0]
    assert float(mouth.min()) > 0.5 and float(eyes.max()) > 0.25 and float(forehead.max()) < 0.05


def test_eye_cells_are_the_upper_region_cells():
    from eartalking import config
    from eartalking.train.decoder import eye_cells, region_cells

    cfg = config.preset("tiny")
    eyes, region = eye_cells(cfg), region_cells(cfg)
    assert eyes and set(eyes) < set(region)  # the mouth cells remain
    assert all(c // cfg.tokenizer.grid < cfg.tokenizer.grid // 2 for c in eyes)
    assert all(c // cfg.tokenizer.grid >= cfg.tokenizer.grid // 2 for c in set(region) - set(eyes))


def test_latent_anchor_holds_every_cell_but_the_eyes(tokenizer_runs, corpus_dir, tmp_path, capsys):
    """--anchor-latent: the drift penalty is zero for the --init encoder, ignores the eye cells, counts every
    other cell's digit drift, and the CLI trains with it (logging the kept share) only from --init weights."""
    from eartalking.config import preset
    from eartalking.model.tokenizer import Tokenizer
    from eartalking.train.decoder import eye_cells
    from eartalking.train.tokenizer import LatentAnchor

    cfg = preset("test_small")
    torch.manual_seed(0)
    tok = Tokenizer(cfg.tokenizer).eval()
    anchor = LatentAnchor(tok, cfg, torch.device("cpu"))
    img, ref = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    _, L = tok(img, ref)
    drift, kept = anchor(img, L["bounded"], L["indices"])
    assert float(drift.detach()) == 0.0 and kept == 1.0
    g, eyes = cfg.tokenizer.grid, eye_cells(cfg)
    moved = L["bounded"].detach().clone().flatten(2)
    moved[:, :, eyes] += torch.rand(3, moved.shape[1], len(eyes)) + 1.0  # eye cells: free
    assert float(anchor(img, moved.view_as(L["bounded"]), L["indices"])[0]) == 0.0
    other = next(c for c in range(g * g) if c not in eyes)
    moved[:, :, other] += 0.5  # one other cell, every digit, 0.5 off
    expected = 0.25 / (g * g - len(eyes))
    assert float(anchor(img, moved.view_as(L["bounded"]), L["indices"])[0]) == pytest.approx(expected, rel=1e-5)
    with torch.no_grad():
        tok.to_fsq.bias.add_(torch.randn_like(tok.to_fsq.bias) * 3)  # an encoder that moved
    _, L = tok(img, ref)
    drift, kept = anchor(img, L["bounded"], L["indices"])
    assert float(drift.detach()) > 0.01 and kept < 1.0

    init = tokenizer_runs["out"]
    for extra in ([], ["--init", str(init), "--freeze-encoder"]):
        assert main(_tok_args(corpus_dir, tmp_path / "bad", 1) + ["--anchor-latent", "5", *extra]) == 2
        assert "--anchor-latent keeps a trainable encoder near its --init weights" in capsys.readouterr().err
    out = tmp_path / "anchored"
    assert main(_tok_args(corpus_dir, out, 200) + ["--init", str(init), "--anchor-latent", "5",
                                                   "--eye-weight", "6", "--eye-box-weight", "2",
                                                   "--mouth-box-weight", "3"]) == 0
    row = next(r for r in _rows(out / "metrics.jsonl") if "anchor_kept" in r)
    assert 0.0 <= row["anchor_kept"] <= 1.0 and row["anchor_drift"] >= 0.0


def _aux_code_run(corpus_dir: Path, tmp_path: Path, capsys, flag: str, refusal: str, extra: list[str],
                  logged: str) -> dict:
    """The CLI side of a fixed-code option (``flag`` = --blink-aux-weight / --mouth-aux-weight): refused with
    --freeze-encoder (the error names the flag and ``refusal``), then 200 steps from an --init run with
    --anchor-latent 5 and ``extra`` -> the first metrics row that logs ``logged``."""
    init = tmp_path / "init"
    assert main(_tok_args(corpus_dir, init, 1)) == 0
    assert main(_tok_args(corpus_dir, tmp_path / "bad", 1) + ["--init", str(init), "--freeze-encoder",
                                                             flag, "1"]) == 2
    assert f"{flag} {refusal}" in capsys.readouterr().err
    out = tmp_path / "coded"
    assert main(_tok_args(corpus_dir, out, 200) + ["--init", str(init), "--anchor-latent", "5", flag, "1",
                                                   *extra]) == 0
    return next(r for r in _rows(out / "metrics.jsonl") if logged in r)


def test_blink_code_reads_only_the_eye_tokens_first_digit_and_skips_unknown_labels(corpus_dir, tmp_path, capsys):
    """--blink-aux-weight: the loss's gradient reaches digit 0 of the eye cells and nothing else, high digits
    mean shut, frames with an unknown (NaN) label do not count, and the CLI trains with it (logging loss and
    accuracy) only when the encoder can learn."""
    from eartalking.config import preset
    from eartalking.model.tokenizer import Tokenizer
    from eartalking.train.decoder import eye_cells
    from eartalking.train.tokenizer import BlinkCode

    cfg = preset("tiny")  # 8 FSQ levels: the digit values below (0 .. 7) are valid digits
    g, eyes = cfg.tokenizer.grid, eye_cells(cfg)
    levels = Tokenizer(cfg.tokenizer).levels
    assert levels == 8
    code = BlinkCode(cfg, levels, torch.device("cpu"))
    bounded = (torch.rand(6, 3, g, g) * 7.0 - 0.4).requires_grad_(True)
    blink = torch.rand(6)
    blink[[1, 4]] = float("nan")
    loss, acc = code(bounded, blink)
    loss.backward()
    grad = bounded.grad.abs().sum(0).flatten(1)  # [d, g*g]
    others = [c for c in range(g * g) if c not in eyes]
    assert float(grad[0, eyes].min()) > 0 and float(grad[0, others].max()) == 0.0 and float(grad[1:].max()) == 0.0
    assert float(bounded.grad[[1, 4]].abs().sum()) == 0.0  # unknown labels give no gradient
    known = [0, 2, 3, 5]
    alone, _ = code(bounded[known].detach(), blink[known])
    assert float(loss.detach()) == pytest.approx(float(alone), rel=1e-6) and 0.0 <= acc <= 1.0
    none, acc = code(bounded.detach(), torch.full((6,), float("nan")))
    assert float(none) == 0.0 and acc != acc
    top, low = torch.full((2, 3, g, g), 6.8), torch.full((2, 3, g, g), 0.2)  # digit 7 = shut, digit 0 = open
    assert code(top, torch.ones(2))[1] == 1.0 and code(low, torch.zeros(2))[1] == 1.0
    assert float(code(top, torch.ones(2))[0]) < 0.01 < float(code(low, torch.ones(2))[0])

    row = _aux_code_run(corpus_dir, tmp_path, capsys, "--blink-aux-weight", "trains the encoder's eye tokens",
                        ["--ref-eye-mask", "0.5"], "blink_loss")
    assert row["blink_loss"] >= 0.0 and (row["blink_acc"] != row["blink_acc"] or 0 <= row["blink_acc"] <= 1)


def test_mouth_code_reads_the_mouth_tokens_first_digit_as_openness(corpus_dir, tmp_path, capsys):
    """--mouth-aux-weight: the L1's gradient reaches digit 0 of the mouth cells and nothing else, the top digit
    reads as openness 1 and digit 0 as 0, NaN labels do not count, and the CLI trains with it (logging the
    error) with the mouth cells left free by --anchor-free mouth, and only when the encoder can learn."""
    from eartalking.config import preset
    from eartalking.model.tokenizer import Tokenizer
    from eartalking.train.decoder import eye_cells, mouth_cells, region_cells
    from eartalking.train.tokenizer import LatentAnchor, MouthCode

    cfg = preset("tiny")
    g, mouth = cfg.tokenizer.grid, mouth_cells(cfg)
    assert mouth and sorted(mouth + eye_cells(cfg)) == sorted(region_cells(cfg))
    assert all(c // g >= g // 2 for c in mouth)
    code = MouthCode(cfg, 8, torch.device("cpu"))
    bounded = (torch.rand(6, 3, g, g) * 7.0 - 0.4).requires_grad_(True)
    opening = torch.rand(6)
    opening[[0, 3]] = float("nan")
    loss, err = code(bounded, opening)
    loss.backward()
    grad = bounded.grad.abs().sum(0).flatten(1)
    others = [c for c in range(g * g) if c not in mouth]
    assert float(grad[0, mouth].min()) > 0 and float(grad[0, others].max()) == 0.0 and float(grad[1:].max()) == 0.0
    assert float(bounded.grad[[0, 3]].abs().sum()) == 0.0
    known = [1, 2, 4, 5]
    alone, _ = code(bounded[known].detach(), opening[known])
    assert float(loss.detach()) == pytest.approx(float(alone), rel=1e-6) == pytest.approx(err, rel=1e-6)
    top, low = torch.full((2, 3, g, g), 6.8), torch.full((2, 3, g, g), 0.2)
    assert torch.allclose(code.predict(top), torch.ones(2)) and torch.allclose(code.predict(low), torch.zeros(2))
    assert float(code(top, torch.ones(2))[0]) == 0.0 and float(code(low, torch.ones(2))[0]) == pytest.approx(1.0)
    half = torch.full((1, 3, g, g), 0.2)
    half.view(1, 3, -1)[0, 0, mouth[: len(mouth) // 2]] = 6.8  # half the mouth cells at the top digit
    assert float(code.predict(half)) == pytest.approx(0.5)
    none, _ = code(bounded.detach(), torch.full((6,), float("nan")))
    assert float(none) == 0.0

    small = preset("test_small")
    tok = Tokenizer(small.tokenizer).eval()
    anchor = LatentAnchor(tok, small, torch.device("cpu"), free="mouth")
    img = torch.rand(2, 3, 64, 64)
    _, L = tok(img, torch.rand(2, 3, 64, 64))
    moved = L["bounded"].detach().clone().flatten(2)
    moved[:, :, mouth_cells(small)] += 1.0  # the mouth cells: free
    assert float(anchor(img, moved.view_as(L["bounded"]), L["indices"])[0]) == 0.0
    moved[:, :, eye_cells(small)] += 1.0  # the eyes are held now
    assert float(anchor(img, moved.view_as(L["bounded"]), L["indices"])[0]) > 0.0

    row = _aux_code_run(corpus_dir, tmp_path, capsys, "--mouth-aux-weight", "trains the encoder's mouth tokens",
                        ["--anchor-free", "mouth", "--ref-mouth-mask", "0.5"], "mouth_code_err")
    assert 0.0 <= row["mouth_code_err"] <= 1.0 and 0.0 <= row["anchor_kept"] <= 1.0


def test_ref_mouth_mask_fills_only_the_mouth_box_of_that_share_of_references():
    """--ref-mouth-mask: ``hide_mouth`` sets every pixel of the mouth box to the box's mean colour and leaves the
    rest alone; the sampler does it to about that share of references."""
    import numpy as np

    from eartalking.train.common import MemClip
    from eartalking.train.tokenizer import FrameSampler, mouth_boxes

    rng = np.random.default_rng()
    S, T = 64, 6
    frames = rng.integers(0, 256, (T, S, S, 3), dtype=np.uint8)
    c = MemClip("c", frames, np.zeros(0, np.float32), np.zeros((T, 0), np.float32), np.zeros(T, np.float32),
                frames[0].copy(), "p")
    box = mouth_boxes(S, torch.device("cpu"))[0, 0].numpy() > 0
    ref = frames[3]
    hidden = FrameSampler([c], 0, p_ref_mouth=1.0).hide_mouth(ref)
    assert np.array_equal(hidden[~box], ref[~box]) and not np.array_equal(hidden[box], ref[box])
    assert np.array_equal(hidden[box], np.broadcast_to(ref[box].mean(0).astype(np.uint8), hidden[box].shape))
    # the sampler's references: jitter shifts by <= 6 px, so the box's inner part stays flat where it was hidden
    inner = np.zeros_like(box)
    ys, xs = np.nonzero(box)
    inner[ys.min() + 7:ys.max() - 6, xs.min() + 7:xs.max() - 6] = True
    flat = lambda refs: float((refs[:, inner].std(axis=1).max(axis=1) < 1.0).mean())  # noqa: E731
    assert flat(FrameSampler([c], 1, p_ref_mouth=0.5).batch(300)[1]) == pytest.approx(0.5, abs=0.1)
    assert flat(FrameSampler([c], 1).batch(300)[1]) == 0.0


def test_eye_boxes_cover_both_eyes_of_the_aligned_crop():
    from eartalking.model.tokenizer import eye_boxes
    from eartalking.train.tokenizer import region_weights

    for size in (64, 128):
        m = eye_boxes(size, torch.device("cpu"))[0, 0]
        assert set(m.unique().tolist()) == {0.0, 1.0} and torch.equal(m, m.flip(1))  # mirror-symmetric 0/1 mask
        assert 0.03 < float(m.mean()) < 0.07
        w = region_weights(size, torch.device("cpu"), eye=4.0)[0, 0]
        assert float(w[m > 0].mean()) > 2.0 > float(w[:size // 4].mean())  # the boxes sit on the weighted eyes


def test_mouth_box_covers_the_weighted_mouth_and_its_losses_see_only_the_box():
    from eartalking.train.tokenizer import box_grad_l1, box_l1, mouth_boxes, region_weights

    cpu = torch.device("cpu")
    for size in (64, 128):
        m = mouth_boxes(size, cpu)[0, 0]
        assert set(m.unique().tolist()) == {0.0, 1.0} and torch.equal(m, m.flip(1))
        assert 0.08 < float(m.mean()) < 0.14
        w = region_weights(size, cpu)[0, 0]
        assert float(w[m > 0].mean()) > 1.5 > float(w[:size // 3].mean())  # the box sits on the weighted mouth
    box = mouth_boxes(64, cpu)
    g = torch.Generator().manual_seed(5)
    a, b = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    outside = b * box + torch.rand(2, 3, 64, 64, generator=g) * (1 - box)  # b inside the box, noise outside
    assert torch.allclose(box_l1(a, outside, box), box_l1(a, b, box))
    assert torch.allclose(box_grad_l1(a, outside, box), box_grad_l1(a, b, box))
    assert float(box_l1(a, b, box).min()) > 0.1 and float(box_grad_l1(a, b, box).min()) > 0.1
    assert float(box_l1(b, b, box).max()) == 0.0 and float(box_grad_l1(b, b, box).max()) == 0.0
    # a uniform offset inside the box moves the L1 by exactly that offset and no gradient inside the box
    assert torch.allclose(box_l1(b + 0.25 * box, b, box), torch.full((2,), 0.25))
    assert float(box_grad_l1(b + 0.25 * box, b, box).max()) < 1e-6


def test_ema_saves_the_average_and_keeps_frozen_weights_bit_identical(tokenizer_runs, corpus_dir, tmp_path):
    """--ema D: tokenizer.safetensors is the running average (after one step with D = 0.5 exactly the mean of
    the start and the trained weights), tokenizer_raw.safetensors the trained weights; a --freeze-encoder run
    keeps the encoder bit-identical in both; a resume continues from the raw weights."""
    init = load_file(str(tokenizer_runs["out"] / "tokenizer.safetensors"))
    out = tmp_path / "ema"
    args = ["--init", str(tokenizer_runs["out"]), "--freeze-encoder", "--ema", "0.5", "--bf16", "off"]
    assert main(_tok_args(corpus_dir, out, 1) + args) == 0
    avg, raw = load_file(str(out / "tokenizer.safetensors")), load_file(str(out / "tokenizer_raw.safetensors"))
    enc = [k for k in init if k.startswith(ENCODER_PARTS)]
    assert enc and all(torch.equal(avg[k], init[k]) and torch.equal(raw[k], init[k]) for k in enc)
    from eartalking.config import preset
    from eartalking.model.tokenizer import Tokenizer

    params = {n for n, _ in Tokenizer(preset("test_small").tokenizer).named_parameters()}  # buffers are copied
    trained = [k for k in params if k not in enc and not torch.equal(raw[k], init[k])]
    assert trained and torch.equal(avg["code_usage"], raw["code_usage"])
    for k in trained:
        torch.testing.assert_close(avg[k], 0.5 * (init[k] + raw[k]), rtol=1e-5, atol=1e-6)
    assert _optimizer_steps(_tok_args(corpus_dir, out, 2) + args) == 1  # resumed at step 1
    raw2, avg2 = load_file(str(out / "tokenizer_raw.safetensors")), load_file(str(out / "tokenizer.safetensors"))
    for k in trained:
        torch.testing.assert_close(avg2[k], 0.5 * (avg[k] + raw2[k]), rtol=1e-5, atol=1e-6)


def _drawn(src, img: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """The test_small image side of tokenizer ``src`` (eval mode) on ``img`` with reference ``ref``."""
    from eartalking.config import preset
    from eartalking.model.tokenizer import Tokenizer
    from eartalking.train.tokenizer import load_init

    tok = Tokenizer(preset("test_small").tokenizer)
    load_init(tok, str(src), torch.device("cpu"))
    return tok.eval()(img, ref)[0].detach()


def test_keep_image_holds_the_image_outside_the_eyes_at_the_init_tokenizer(tokenizer_runs, corpus_dir, tmp_path,
                                                                          capsys):
    """--keep-image W: after the same steps from the same start, the image outside the eye boxes moves at least
    2x less from the --init tokenizer's (same tokens, same reference) than without it; refused without --init."""
    from eartalking.config import preset
    from eartalking.train.tokenizer import outside_eyes

    assert main(_tok_args(corpus_dir, tmp_path / "bad", 1) + ["--keep-image", "1"]) == 2
    assert "--keep-image" in capsys.readouterr().err
    cfg = preset("test_small").tokenizer
    gen = torch.Generator().manual_seed(11)
    img, ref = (torch.rand(6, 3, cfg.image_size, cfg.image_size, generator=gen) for _ in range(2))
    mask = outside_eyes(cfg.image_size, torch.device("cpu"))
    assert 0.8 < mask.mean() < 0.98  # the grown eye boxes are out, the rest in

    start = _drawn(tokenizer_runs["out"], img, ref)
    moved = {}
    for w in ("0", "20"):
        out = tmp_path / f"keep{w}"
        args = ["--init", str(tokenizer_runs["out"]), "--freeze-encoder", "--keep-image", w, "--lr", "3e-3",
                "--bf16", "off"]
        assert main(_tok_args(corpus_dir, out, 6) + args) == 0
        moved[w] = float(((_drawn(out, img, ref) - start).abs() * mask).mean())
    assert moved["0"] > 0 and moved["20"] < 0.5 * moved["0"], moved


def test_keep_image_where_eyes_holds_the_eyes_at_the_init_tokenizer(tokenizer_runs, corpus_dir, tmp_path, capsys,
                                                                    monkeypatch):
    """--keep-image-where eyes: the hold's L1 is taken over the grown eye boxes instead of outside them (for
    training the mouth while the --init image side's eyes stay), and the eyes then move at least 2x less than
    with no hold; refused without --keep-image."""
    from eartalking.config import preset
    from eartalking.model.tokenizer import grown_eye_boxes
    from eartalking.train import tokenizer as train_tok

    init = ["--init", str(tokenizer_runs["out"]), "--freeze-encoder", "--lr", "3e-3", "--bf16", "off"]
    assert main(_tok_args(corpus_dir, tmp_path / "bad", 1) + init + ["--keep-image-where", "eyes"]) == 2
    assert "--keep-image W" in capsys.readouterr().err
    cfg = preset("test_small").tokenizer
    eyes = grown_eye_boxes(cfg.image_size, 3, torch.device("cpu"))
    assert 0.02 < eyes.mean() < 0.2
    masks = []
    real_box_l1 = train_tok.box_l1

    def recording(x, target, box):
        masks.append(box.detach().clone())
        return real_box_l1(x, target, box)

    monkeypatch.setattr(train_tok, "box_l1", recording)
    for where, want in (("eyes", eyes), ("outside-eyes", 1 - eyes)):
        masks.clear()
        assert main(_tok_args(corpus_dir, tmp_path / f"rec_{where}", 1) + init
                    + ["--keep-image", "1", "--keep-image-where", where]) == 0
        assert any(torch.equal(m, want) for m in masks), where  # the hold's mask (the only box_l1 in this run)
    monkeypatch.setattr(train_tok, "box_l1", real_box_l1)
    gen = torch.Generator().manual_seed(int(torch.randint(1 << 30, ())))
    img, ref = (torch.rand(6, 3, cfg.image_size, cfg.image_size, generator=gen) for _ in range(2))
    start = _drawn(tokenizer_runs["out"], img, ref)
    moved = {}
    for name, extra in (("none", []), ("eyes", ["--keep-image", "20", "--keep-image-where", "eyes"])):
        out = tmp_path / f"keep_{name}"
        assert main(_tok_args(corpus_dir, out, 6) + init + extra) == 0
        moved[name] = float(((_drawn(out, img, ref) - start).abs() * eyes).sum() / eyes.sum())
    assert moved["none"] > 0 and moved["eyes"] < 0.5 * moved["none"], moved


HEAD_BIAS = "head.2.bias"  # the image decoder's last conv (RGB, before the sigmoid)


def test_keep_image_from_holds_the_image_at_another_tokenizer(tokenizer_runs, corpus_dir, tmp_path, capsys):
    """--keep-image-from B: the image outside the eyes is pulled to B's (same encoder) instead of --init's, so
    after 20 steps from --init it is nearer B's than --init's was, and far nearer than training without it;
    refused without --keep-image and when B's encoder differs (its tokens would not be the student's)."""
    from eartalking.config import preset
    from eartalking.train.tokenizer import outside_eyes

    init = str(tokenizer_runs["out"])
    base = ["--init", init, "--freeze-encoder", "--lr", "3e-3", "--bf16", "off"]
    assert main(_tok_args(corpus_dir, tmp_path / "bad", 1) + base + ["--keep-image-from", init]) == 2
    assert "--keep-image" in capsys.readouterr().err
    other = tmp_path / "other"  # trained from scratch: another encoder
    assert main(_tok_args(corpus_dir, other, 1) + ["--seed", "9"]) == 0
    assert main(_tok_args(corpus_dir, tmp_path / "bad2", 1) + base + ["--keep-image", "5",
                                                                      "--keep-image-from", str(other)]) == 2
    assert "encoder differs" in capsys.readouterr().err
    b = tmp_path / "b"  # the same encoder, another image side: --init's drawing a brighter image
    b.mkdir()
    w = load_file(str(tokenizer_runs["out"] / "tokenizer.safetensors"))
    assert not HEAD_BIAS.startswith(ENCODER_PARTS)
    save_file(dict(w, **{HEAD_BIAS: w[HEAD_BIAS] + 0.1}), str(b / "tokenizer.safetensors"))
    cfg = preset("test_small").tokenizer
    gen = torch.Generator().manual_seed(12)
    img, ref = (torch.rand(6, 3, cfg.image_size, cfg.image_size, generator=gen) for _ in range(2))
    mask = outside_eyes(cfg.image_size, torch.device("cpu"))

    target = _drawn(b, img, ref)
    gap = {}
    for name, extra in (("plain", []), ("held", ["--keep-image", "20", "--keep-image-from", str(b)])):
        out = tmp_path / name
        assert main(_tok_args(corpus_dir, out, 20) + base + ["--seed", "6", "--lr", "1e-2"] + extra) == 0
        gap[name] = float(((_drawn(out, img, ref) - target).abs() * mask).mean())
    gap["init"] = float(((_drawn(init, img, ref) - target).abs() * mask).mean())
    assert gap["held"] < 0.8 * gap["init"] and gap["held"] < 0.5 * gap["plain"], gap  # measured 0.6x, 0.17x


def test_hide_eyes_flattens_each_eye_box_and_nothing_else():
    import numpy as np

    from eartalking.model.tokenizer import eye_boxes
    from eartalking.train.tokenizer import FrameSampler

    rng = np.random.default_rng()
    ref = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = FrameSampler([], 0).hide_eyes(ref)
    box = eye_boxes(64, torch.device("cpu"))[0, 0].numpy() > 0
    assert np.array_equal(out[~box], ref[~box])
    for cols in (slice(0, 32), slice(32, None)):
        m = np.zeros_like(box)
        m[:, cols] = box[:, cols]
        assert len(np.unique(out[m].reshape(-1, 3), axis=0)) == 1  # one flat colour per eye ...
        assert np.abs(out[m][0].astype(float) - ref[m].reshape(-1, 3).mean(0)).max() <= 1.0  # ... its mean


def test_only_eye_refiner_trains_the_refiner_alone(tokenizer_runs, corpus_dir, tmp_path, capsys):
    """--only-eye-refiner: refused without --eye-refiner W and --init; with them, every weight but the refiner's
    stays bit-identical to --init's, the refiner moves off its zero start, and the saved config records it."""
    from eartalking.config import ModelConfig

    init = str(tokenizer_runs["out"])
    assert main(_tok_args(corpus_dir, tmp_path / "bad", 1) + ["--only-eye-refiner", "--init", init]) == 2
    assert "--eye-refiner" in capsys.readouterr().err
    assert main(_tok_args(corpus_dir, tmp_path / "bad2", 1) + ["--only-eye-refiner", "--eye-refiner", "8"]) == 2
    assert "--init" in capsys.readouterr().err
    assert main(_tok_args(corpus_dir, tmp_path / "bad3", 1) + ["--eye-refiner", "-1"]) == 2
    assert "width >= 0" in capsys.readouterr().err
    out = tmp_path / "eyes"
    assert main(_tok_args(corpus_dir, out, 3) + ["--init", init, "--freeze-encoder", "--eye-refiner", "8",
                                                 "--only-eye-refiner", "--blink-share", "0.5",
                                                 "--eye-box-weight", "10", "--lr", "1e-2", "--bf16", "off"]) == 0
    before = load_file(str(tokenizer_runs["out"] / "tokenizer.safetensors"))
    after = load_file(str(out / "tokenizer.safetensors"))
    assert set(after) - set(before) and all(k.startswith("eyes.") for k in set(after) - set(before))
    # (code_usage is the encoder's token-usage statistic, a buffer that every training step updates; no graph reads it)
    assert [k for k in before if not torch.equal(before[k], after[k])] == ["code_usage"]
    assert after["eyes.net.4.weight"].abs().max() > 0  # off its zero start
    assert ModelConfig.load(out / "config.json").tokenizer.eye_refiner == 8


def test_eye_unblend_flag_needs_an_eye_code_and_is_recorded(tokenizer_runs, corpus_dir, tmp_path, capsys):
    """train-tokenizer --eye-unblend: refused by name without --eye-code (before the corpus loads); with it the
    run trains with the unblend on (here the eye refiner alone) and its config.json records it."""
    from eartalking.config import ModelConfig

    init = str(tokenizer_runs["out"])
    assert main(_tok_args(corpus_dir, tmp_path / "bad", 1) + ["--eye-unblend", "--init", init,
                                                              "--freeze-encoder"]) == 2
    assert "--eye-code" in capsys.readouterr().err and not (tmp_path / "bad" / "config.json").exists()
    out = tmp_path / "ub"
    assert main(_tok_args(corpus_dir, out, 2) + ["--init", init, "--freeze-encoder", "--eye-code", "1",
                                                 "--eye-unblend", "--eye-refiner", "8", "--only-eye-refiner",
                                                 "--blink-share", "0.5", "--bf16", "off"]) == 0
    t = ModelConfig.load(out / "config.json").tokenizer
    assert t.eye_unblend and t.eye_code == (1,) and t.eye_refiner == 8


def test_eye_refiner_shut_only_flag_is_checked_trains_and_is_recorded(tokenizer_runs, corpus_dir, tmp_path, capsys):
    """train-tokenizer --eye-refiner-shut-only: refused by name without --eye-unblend or without --eye-refiner;
    with both, the refiner still learns (shut frames reach it through the gate, --blink-share) and config.json
    records the setting."""
    from eartalking.config import ModelConfig

    init = str(tokenizer_runs["out"])
    base = ["--init", init, "--freeze-encoder", "--eye-code", "1"]
    assert main(_tok_args(corpus_dir, tmp_path / "bad", 1) + base + ["--eye-refiner", "8",
                                                                      "--eye-refiner-shut-only"]) == 2
    assert "--eye-unblend" in capsys.readouterr().err
    assert main(_tok_args(corpus_dir, tmp_path / "bad2", 1) + base + ["--eye-unblend", "--eye-refiner-shut-only"]) == 2
    assert "--eye-refiner W" in capsys.readouterr().err
    assert main(_tok_args(corpus_dir, tmp_path / "bad3", 1) + base + ["--save-every", "0"]) == 2
    assert "--save-every" in capsys.readouterr().err
    assert main(_tok_args(corpus_dir, tmp_path / "bad4", 1) + base + ["--blink-share-min", "0.3"]) == 2
    assert "--blink-share-min" in capsys.readouterr().err
    out = tmp_path / "gated"
    assert main(_tok_args(corpus_dir, out, 3) + base + ["--eye-unblend", "--eye-refiner", "8", "--only-eye-refiner",
                                                        "--eye-refiner-shut-only", "--blink-share", "1.0",
                                                        "--eye-box-weight", "10", "--lr", "1e-2",
                                                        "--save-every", "2", "--bf16", "off"]) == 0
    assert load_file(str(out / "tokenizer.safetensors"))["eyes.net.4.weight"].abs().max() > 0
    t = ModelConfig.load(out / "config.json").tokenizer
    assert t.eye_refiner_shut_only and t.eye_unblend and t.eye_refiner == 8


def test_mouth_hide_flag_is_checked_trains_and_is_recorded(tokenizer_runs, corpus_dir, tmp_path, capsys):
    """train-tokenizer --mouth-hide: --mouth-hide-axes alone and axes outside (0, 0.25) are refused by name before
    the corpus loads; with it a run from --init trains with the mouth hidden and its config.json records it (the
    same weights, so a checkpoint built from the run loads strictly)."""
    from eartalking.config import ModelConfig
    from eartalking.model.tokenizer import Tokenizer

    init = str(tokenizer_runs["out"])
    assert main(_tok_args(corpus_dir, tmp_path / "bad", 1) + ["--mouth-hide-axes", "0.1", "0.1"]) == 2
    assert "--mouth-hide" in capsys.readouterr().err and not (tmp_path / "bad" / "config.json").exists()
    assert main(_tok_args(corpus_dir, tmp_path / "bad2", 1) + ["--mouth-hide", "--mouth-hide-axes", "0.3", "0.1"]) == 2
    assert "mouth_hide_axes" in capsys.readouterr().err and not (tmp_path / "bad2" / "config.json").exists()
    assert main(_tok_args(corpus_dir, tmp_path / "bad3", 1) + ["--mouth-hide-pixels-only"]) == 2
    assert "--mouth-hide" in capsys.readouterr().err and not (tmp_path / "bad3" / "config.json").exists()
    out = tmp_path / "mh"
    assert main(_tok_args(corpus_dir, out, 2) + ["--init", init, "--freeze-encoder", "--mouth-hide",
                                                 "--mouth-hide-axes", "0.2", "0.12", "--mouth-hide-pixels-only",
                                                 "--bf16", "off"]) == 0
    t = ModelConfig.load(out / "config.json").tokenizer
    assert t.mouth_hide and tuple(t.mouth_hide_axes) == (0.2, 0.12) and not t.mouth_hide_features
    tok = Tokenizer(t)
    tok.load_state_dict(load_file(str(out / "tokenizer.safetensors")))
    assert float(tok.portrait_mouth.sum()) > 0


def test_shut_mouth_share_draws_frames_labelled_shut():
    """--shut-mouth-share P: that share of the batch (plus the natural rate in the rest) is drawn from frames whose
    openness label is below --shut-mouth-below; unknown openness never counts as shut; without it shut frames come
    at their natural rate; a corpus with no shut frame is refused by name, as is a share outside [0, 1)."""
    import numpy as np

    from eartalking.cli import UserError
    from eartalking.config import CONTROL_NAMES
    from eartalking.train.common import MemClip
    from eartalking.train.tokenizer import FrameSampler

    rng = np.random.default_rng()
    T = 40
    frames = np.zeros((T, 8, 8, 3), np.uint8)
    frames[..., 0] = np.arange(T)[:, None, None]
    opening = rng.uniform(0.3, 1.0, T).astype(np.float32)
    shut = rng.choice(np.arange(1, T), size=3, replace=False)
    opening[shut] = rng.uniform(0.0, 0.1, 3)
    unknown = rng.choice(np.setdiff1d(np.arange(1, T), shut))
    opening[unknown] = np.nan
    c = MemClip("c", frames, np.zeros(0, np.float32), np.zeros((T, len(CONTROL_NAMES)), np.float32), opening,
                frames[0].copy(), "p")
    imgs, _, _, opens, _ = FrameSampler([c], 1, p_shut=0.5, shut_below=0.15).labeled_batch(600)
    share = float(np.isin(imgs[:, 0, 0, 0], shut).mean())  # 0.5 + 0.5 * 3/40 = 0.54
    assert 0.46 < share < 0.62, share
    assert (opens[np.isin(imgs[:, 0, 0, 0], shut)] < 0.15).all()
    imgs, _ = FrameSampler([c], 1).batch(600)
    assert float(np.isin(imgs[:, 0, 0, 0], shut).mean()) < 0.15
    with pytest.raises(UserError, match="shut-mouth-share"):
        FrameSampler([c], 1, p_shut=0.5, shut_below=0.0)


def test_shut_mouth_share_flag_is_checked(corpus_dir, tmp_path, capsys):
    """train-tokenizer --shut-mouth-share outside [0, 1) is refused by name before anything is written."""
    for bad in ("1.0", "-0.1"):
        assert main(_tok_args(corpus_dir, tmp_path / "bad", 1) + ["--shut-mouth-share", bad]) == 2
        assert "--shut-mouth-share" in capsys.readouterr().err and not (tmp_path / "bad" / "config.json").exists()

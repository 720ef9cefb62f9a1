"""``eartalking evaluate`` end to end on a random test_small checkpoint and a tiny real corpus (64 px, 3 clips).

Random weights make every quality number meaningless, so these tests check structure, ranges and that the
measurement really ran (frame counts, the ground-truth video measured, every key and plot written); the
wiring is checked separately with an "oracle" generator that returns the corpus's own frames (then the
generated-frame lip-sync must equal the ground-truth one and identity must pass), and the streaming helper
against whole-utterance audio encoding.
"""

from __future__ import annotations

import contextlib
import io
import json
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from eartalking.cli import main
from eartalking.config import CONTROL_NAMES
from eartalking.evaluate import generate_eval as ge
from eartalking.evaluate import report


class FakeAllison:
    """Stand-in for the human (``allison``) speech source: ``texts`` are its prompts; ``synth`` records every
    call in ``calls`` and raises an alignment error when ``fails(text, calls of that text so far)`` is true,
    else returns noise with two phones."""

    name = "allison"

    def __init__(self, texts: list[str], fails):
        self.texts, self.fails, self.calls = list(texts), fails, []
        self.rng = np.random.default_rng()

    def prompts(self):
        return [(f"id{i}", t) for i, t in enumerate(self.texts)]

    def voices(self):
        return ["allison"]

    def synth(self, text, voice):
        import types

        self.calls.append(text)
        if self.fails(text, self.calls.count(text)):
            raise ValueError("alignment failed")
        dur = 0.2 + 0.02 * len(text)
        return types.SimpleNamespace(pcm=self.rng.uniform(-0.5, 0.5, int(16000 * dur)).astype(np.float32),
                                     phones=[(0.0, dur / 2, "AA"), (dur / 2, dur, "M")], phone_set="cmu")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    from eartalking.model import checkpoint

    return checkpoint.save(tmp_path_factory.mktemp("ckpt"), checkpoint.random_model("test_small", seed=3))


@pytest.fixture(scope="module")
def report_json(corpus_dir, ckpt, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("evaluate")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(corpus_dir), "--json", str(out / "r.json"),
                   "--plots", str(out / "plots"), "--long-frames", "60", "--clips", "2", "--train-clips", "1",
                   "--control-frames", "30", "--threads", "1", "--device", "cpu"])
    assert rc == 0
    REPORT_STDOUT.append(printed.getvalue())
    return json.loads((out / "r.json").read_text()), out / "plots"


REPORT_STDOUT: list[str] = []  # what the report_json run printed (a module fixture cannot use capsys)


def test_report_has_every_key_and_target(report_json, corpus_dir):
    r, _ = report_json
    split = json.loads((corpus_dir / "split.json").read_text())
    assert {"heldout", "train", "targets", "passed", "not_measured", "plots", "split"} <= set(r)
    assert [t["name"] for t in r["targets"]] == [t[0] for t in report.TARGETS]
    for t in r["targets"]:
        assert t["pass"] in (True, False, None) and t["op"] in (">=", "<=")
        assert (t["pass"] is None) == (t["value"] is None)
    assert r["passed"] is False  # random weights cannot pass lip-sync or identity
    for g in ("heldout", "train"):
        h = r[g]
        assert {"tokenizer", "lipsync", "cases", "controls", "long_run", "identities"} <= set(h)
        assert {"all", "by_source", "heldout_voices", "seen_voices", "human"} <= set(h["lipsync"])
    assert set(split["heldout_identities"]) <= set(r["heldout"]["identities"])  # every held-out person spoke
    per = r["heldout"]["controls"]["blink"]["per_person"]  # the console names each person's blink hits
    assert "blinks per held-out person" in REPORT_STDOUT[-1]
    assert all(f"{p['portrait'][:24]} {p['hits']} ({p['gt_video']['found']}/{p['gt_video']['labelled']})"
               in REPORT_STDOUT[-1] for p in per)
    assert r["heldout"]["lipsync"]["heldout_voices"]["clips"] >= 1  # the eval clip uses a held-out voice


def test_measurement_ran_on_every_frame(report_json, corpus_dir):
    r, _ = report_json
    for g in ("heldout", "train"):
        for c in r[g]["cases"]:
            labels = json.loads((corpus_dir / f"{c['clip']}.json").read_text())
            assert c["frames"] == len(labels["frames"]) > 20
            assert 0 <= c["face_frames"] <= c["frames"]
            # the corpus's own video was measured: real faces, so lip-sync against the labels is clear
            assert c["gt_video_openness_r"] is not None and 0.5 < c["gt_video_openness_r"] <= 1.0
            assert c["tokenizer_psnr_db"] is not None and 3.0 < c["tokenizer_psnr_db"] < 60.0
        tok = r[g]["tokenizer"]
        assert tok["frames"] > 0 and 0 < tok["codebook_usage"] <= 1 and tok["codebook_size"] == 64
        lr = r[g]["long_run"]
        assert lr["frames"] == 60 and lr["early"]["frames"] == [0, 50] and lr["late"]["frames"] == [10, 60]
        assert lr["timing"]["ms_at_50"] > 0 and lr["timing"]["ratio_5000_vs_50"] > 0
        for w in ("early", "late"):
            assert lr[w]["frac_below"] is None or 0 <= lr[w]["frac_below"] <= 1
        ctl = r[g]["controls"]
        people = len(r[g]["identities"])  # every person of the group is asked to blink
        assert ctl["blink"]["people"] == people == len(ctl["blink"]["per_person"]) >= 1
        assert ctl["blink"]["requested"] == people * len(range(12, 30 - 6, 25)) >= 1
        assert 0 <= ctl["blink"]["hit_rate"] <= 1 and ctl["yaw"]["frames"] == 30
        gv = ctl["blink"]["gt_video"]  # the detector's ceiling on the clips' own video
        cases = [c["gt_video_blinks"] for c in r[g]["cases"] if c["gt_video_blinks"]]
        assert gv["labelled"] == sum(c["labelled"] for c in cases) and 0 <= gv["found"] <= gv["labelled"]
        per = ctl["blink"]["per_person"]  # the same ceiling per person: every case's person is one of them
        assert sorted(p["identity"] for p in per) == r[g]["identities"]
        for p in per:
            mine = [c["gt_video_blinks"] for c in r[g]["cases"]
                    if c["identity"] == p["identity"] and c["gt_video_blinks"]]
            assert p["gt_video"] == {"labelled": sum(c["labelled"] for c in mine),
                                     "found": sum(c["found"] for c in mine)}
        assert sum(p["gt_video"]["labelled"] for p in per) == gv["labelled"]
        assert sum(p["gt_video"]["found"] for p in per) == gv["found"]


def test_gt_blinks_by_identity_sums_each_persons_clips():
    from eartalking.evaluate.report import gt_blinks_by_identity

    rng = np.random.default_rng()
    rows, want = [], {"a": [0, 0], "b": [0, 0], "c": [0, 0]}
    for _ in range(12):
        ident = str(rng.choice(["a", "b"]))  # "c" has no clip with labelled blinks
        lab = int(rng.integers(0, 5))
        found = int(rng.integers(0, lab + 1))
        rows.append({"identity": ident, "gt_video_blinks": {"labelled": lab, "found": found}})
        want[ident][0] += lab
        want[ident][1] += found
    rows.append({"identity": "a", "gt_video_blinks": None})  # a human case: no video, nothing to add
    got = gt_blinks_by_identity(rows, ["c", "b", "a"])
    assert [i for i, _ in got] == ["c", "b", "a"]
    assert {i: [g["labelled"], g["found"]] for i, g in got} == want


def test_blink_peaks_and_hit_rule():
    """Labelled peaks are local maxima >= 0.5; a hit is a measured blink within -3..+5 frames of one."""
    from eartalking.evaluate.report import blink_hits, blink_peaks, blink_unmatched

    b = np.zeros(40)
    b[5:8] = (0.6, 1.0, 0.5)
    b[20] = 0.4  # too shallow to be a labelled blink
    b[30:32] = (0.9, 0.7)
    b[12] = np.nan
    assert blink_peaks(b) == [6, 30]
    assert blink_hits([6, 30], [4, 36]) == [6] and blink_hits([6, 30], [35]) == [30] and blink_hits([6], [2]) == []
    assert blink_unmatched([6, 30], [2, 4, 36]) == [2, 36] and blink_unmatched([6], [3, 11]) == []


def test_plots_written(report_json):
    from PIL import Image

    r, plots = report_json
    for name in ("openness", "identity", "controls", "contact_sheet"):
        p = plots / f"{name}.png"
        assert p.is_file() and Path(r["plots"][name]) == p
        with Image.open(p) as im:
            assert im.size[0] >= 200 and im.size[1] >= 60


def test_oracle_generator_gives_ground_truth_numbers(corpus_dir, monkeypatch):
    """With a generator that returns the corpus video itself, generated lip-sync == the ground-truth one."""
    from eartalking.evaluate.cases import Corpus
    from eartalking.evaluate.measure import portrait_embedding

    corpus = Corpus(corpus_dir, 64)
    case = corpus.heldout_cases(1)[0]
    video = case.video.copy()
    monkeypatch.setattr(ge, "generate", lambda *a, **k: ge.Generated(dict(enumerate(video)),
                                                                     np.ones(len(video)), len(video)))

    class Args:
        seed, temperature = 0, 0.0

    row, extra = report.run_case(None, case, portrait_embedding(case.portrait), Args)
    assert row["openness_r"] == pytest.approx(row["gt_video_openness_r"], abs=1e-9) and row["openness_r"] > 0.5
    assert row["identity_frac_below"] > 0.8 and row["face_frames"] == len(video)
    assert len(extra["frames"]) == 3


def test_streaming_helper_matches_whole_utterance():
    from eartalking.model.checkpoint import random_model
    from eartalking.model.generate import StreamingGenerator

    model = random_model("test_small", seed=11)
    rng = np.random.default_rng()
    portrait = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    pcm = (rng.standard_normal(640 * 9 + 123) * 0.2).astype(np.float32)
    T = 10
    got = ge.generate(model, portrait, pcm, T)
    with torch.no_grad():
        audio = model.audio.encode_utterance(torch.from_numpy(pcm)[None], T)
        gen = StreamingGenerator(model, ge.portrait_tensor(portrait, "cpu"))
        want = [(gen.render(gen.step(audio[:, t]))[0].clamp(0, 1) * 255 + 0.5).to(torch.uint8).permute(1, 2, 0)
                for t in range(T)]
    diff = np.abs(got.stack().astype(int) - torch.stack(want).numpy().astype(int))
    assert diff.max() <= 1  # chunked vs whole conv: float rounding only
    assert got.ms.shape == (T,) and (got.ms > 0).all()


def test_stream_audio_loops_and_control_track():
    pcm = np.random.default_rng().standard_normal(1000).astype(np.float32)
    a = ge.StreamAudio(pcm, left_context=300, samples_per_frame=640, lookahead=2, loop=True)
    c = a.chunk(5)
    s0 = (5 + 2) * 640 - 300
    np.testing.assert_array_equal(c, pcm[np.arange(s0, s0 + 940) % 1000])
    first = ge.StreamAudio(pcm, 2000, 640, 0).chunk(0)
    assert first.shape == (2640,) and (first[:2000] == 0).all() and np.array_equal(first[2000:], pcm[:640])
    ctrl, mask = ge.control_track(60, blinks=[10, 40], yaw=np.linspace(-20, 20, 60))
    b, y = CONTROL_NAMES.index("blink"), CONTROL_NAMES.index("yaw")
    assert ctrl[10, b] == 1.0 and ctrl[40, b] == 1.0 and ctrl[25, b] == 0 and mask[:, b].all()
    assert np.argmax(ctrl[:30, b]) == 10 and mask[:, y].all() and ctrl[-1, y] == pytest.approx(20)
    others = [i for i, n in enumerate(CONTROL_NAMES) if n not in ("blink", "yaw")]
    assert not mask[:, others].any()


def test_bad_corpus_is_a_clear_error(tmp_path, ckpt, capsys):
    rc = main(["evaluate", "--checkpoint", str(ckpt), "--data", str(tmp_path), "--json", str(tmp_path / "x.json"),
               "--plots", str(tmp_path)])
    assert rc == 2 and "split.json not found" in capsys.readouterr().err


def _rig_generator(corpus_dir: Path, obey: bool):
    """A stand-in for ``generate_eval.generate`` that renders the astronaut with the corpus's own face warp,
    following the requested blink/yaw controls (``obey``) or ignoring them."""
    from PIL import Image

    from eartalking.data import faces, warp

    meta = json.loads((corpus_dir / "portraits" / "fixture_astronaut.json").read_text())
    img = np.asarray(Image.open(corpus_dir / "portraits" / "fixture_astronaut.png").convert("RGB"))
    ident = faces.Identity("fixture_astronaut", img, np.asarray(meta["landmarks"], np.float32),
                           np.zeros(128, np.float32), "test", "")
    rig = warp.FaceRig(ident)

    def generate(model, portrait, pcm, n, controls=None, mask=None, **kw):
        frames = {}
        for t in range(n):
            use = {name: float(controls[t, i]) for i, name in enumerate(CONTROL_NAMES)
                   if obey and mask is not None and mask[t, i] > 0}
            frames[t] = rig.render(size=64, **use)[0]
        return ge.Generated(frames, np.ones(n), n)

    return generate, rig.render(size=64)[0]


@pytest.mark.parametrize("obey", [True, False])
def test_control_following_counts_blinks_and_yaw(corpus_dir, monkeypatch, obey):
    """A renderer that obeys the requested blinks and yaw scores ~perfectly; one that ignores them fails."""
    from eartalking.evaluate.measure import portrait_embedding

    fake, portrait = _rig_generator(corpus_dir, obey)
    monkeypatch.setattr(ge, "generate", fake)
    people = [("astronaut", portrait, portrait_embedding(portrait), np.zeros(6400, np.float32))]
    out, curves = report.run_controls(None, people, 60, 0)
    b, y = out["blink"], out["yaw"]
    assert b["requested"] == 2 and b["face_frames"] == 60 and y["face_frames"] >= 40  # (a 64 px rig loses some turns)
    assert b["people"] == 1 and b["per_person"][0]["portrait"] == "astronaut" and curves["blinks"] == [12, 37]
    dips = b["per_person"][0]["dips"]
    assert len(dips) == 2 and all(d is not None and 0 < d for d in dips)
    if obey:
        assert b["hit_rate"] == 1.0 and b["unrequested"] == 0
        assert max(dips) < 0.86  # the detector's threshold (signals.BLINK_DROP): shut eyes dip below it
        assert y["r"] > 0.9 and y["slope_measured_per_requested"] > 0.3
    else:
        assert b["hit_rate"] == 0.0 and (y["r"] is None or y["r"] < 0.5)


def test_blink_dips_are_the_local_minimum_over_the_running_median():
    """blink_dips: min over t-1..t+2 / median over t-25..t+25 of the eye signal, None where no face was seen."""
    rng = np.random.default_rng()
    base = float(rng.uniform(1.0, 2.0))
    eye = [base] * 80
    eye[30], eye[31] = 0.7 * base, 0.8 * base  # a blink at 30
    eye[60:65] = [None] * 5  # no face around 62
    d = report.blink_dips(eye, [30, 5, 62])
    assert d[0] == pytest.approx(0.7) and d[1] == pytest.approx(1.0) and d[2] is None


def test_blink_rate_pools_every_person(corpus_dir, monkeypatch):
    """The blink target counts every person's requests: a face that shows them and one that does not give
    their pooled rate (not the lead's), with each person listed; the plot's curves are the lead's."""
    obeying, obeying_portrait = _rig_generator(corpus_dir, True)
    ignoring, _ = _rig_generator(corpus_dir, False)
    other = obeying_portrait.copy()  # the second person: same pixels, a different photo object
    asked = []

    def fake(model, portrait, pcm, n, controls=None, mask=None, **kw):
        asked.append(n)
        return (obeying if portrait is obeying_portrait else ignoring)(model, portrait, pcm, n, controls, mask, **kw)

    monkeypatch.setattr(ge, "generate", fake)
    T = int(np.random.default_rng().integers(60, 90))
    pcm = np.random.default_rng().standard_normal(6400).astype(np.float32)
    people = [("a", obeying_portrait, None, pcm), ("b", other, None, pcm)]
    out, curves = report.run_controls(None, people, T, 0)
    b = out["blink"]
    n = len(range(12, T - 6, 25))
    assert [p["portrait"] for p in b["per_person"]] == ["a", "b"] and b["people"] == 2
    assert [p["hits"] for p in b["per_person"]] == [n, 0] and b["requested"] == 2 * n
    assert b["hit_rate"] == pytest.approx(0.5) and b["people_all_hit"] == 1 and b["people_none_hit"] == 1
    assert curves["lead"] == "a" and len(curves["found"]) == n and out["yaw"]["portrait"] == "a"
    assert curves["all_people"] == f"{n}/{2 * n} over 2 people"  # the plot title's pooled count
    assert asked == [T, T, T]  # two blink tracks and one yaw sweep
    with pytest.raises(ValueError, match="at least one person"):
        report.run_controls(None, [], T, 0)


def test_human_cases_are_topped_up_with_other_heldout_prompts(corpus_dir, monkeypatch):
    """--human N: the human eval clips chosen are topped up with held-out human prompts of other sentences until
    N cases are human; without N, prompts come only when no chosen clip is human (the old rule)."""
    from eartalking.evaluate import cases as casesmod

    corpus = casesmod.Corpus(corpus_dir, 64)
    clip_case = corpus.heldout_cases(1)[0]
    clip_case.human = True  # pretend the chosen eval clip is a human recording
    monkeypatch.setattr(casesmod.Corpus, "_clip_case", lambda self, name, *a, **k: clip_case)
    rng = np.random.default_rng()
    asked: list[tuple[list[str], int]] = []

    def fake_utterances(assets, heldout, n, fps=25, skip=0):
        assert skip == 0  # evaluate draws from the head of the order
        asked.append((list(heldout), n))
        T = int(rng.integers(20, 40))
        return [{"pcm": rng.standard_normal(T * 640).astype(np.float32),
                 "labels": {"openness": rng.random(T).astype(np.float32)}, "text": t, "voice_key": "allison:a"}
                for t in heldout[:n]]

    monkeypatch.setattr(ge, "human_utterances", fake_utterances)
    corpus.split["heldout_sentences"] = [clip_case.text, "one more prompt", "a second prompt", "a third"]
    got = corpus.heldout_cases(1, human=3)
    humans = [c for c in got if c.human]
    assert len(humans) == 3 and humans[0] is clip_case
    assert asked[-1] == (["one more prompt", "a second prompt", "a third"], 2)  # the clip's sentence left out
    assert [c.text for c in humans[1:]] == ["one more prompt", "a second prompt"]
    assert all(c.source == "allison" and c.labels["openness"].shape == (c.n_frames,) for c in humans[1:])
    n_asked = len(asked)
    assert sum(c.human for c in corpus.heldout_cases(1)) == 1 and len(asked) == n_asked  # old rule: none added
    assert sum(c.human for c in corpus.heldout_cases(1, human=1)) == 1 and len(asked) == n_asked


def test_validation_human_prompts_never_overlap_the_ones_evaluate_reports(corpus_dir, monkeypatch, tmp_path, capsys):
    """Corpus.validation_human_cases (code_mean_sweep's --human-prompts) draws held-out human prompts after
    those evaluate --human may report, even at evaluate's largest --human with prompts that fail to align;
    evaluate refuses a larger --human with the limit named."""
    from eartalking.data import speech
    from eartalking.evaluate import cases as casesmod

    rng = np.random.default_rng()
    prompts = [f"held-out prompt {i:02d} " + "x" * (80 - i) for i in range(60)]  # longest first = index order
    failing = set(rng.choice(prompts[:20], size=3, replace=False))

    src = FakeAllison(prompts, lambda text, n: text in failing)
    monkeypatch.setattr(speech, "available_sources", lambda assets: [src])
    corpus = casesmod.Corpus(corpus_dir, 64, str(tmp_path))
    corpus.split["heldout_sentences"] = list(prompts)
    reported = {c.text for c in corpus.heldout_cases(1, human=casesmod.MAX_EVALUATE_HUMAN) if c.human}
    val = corpus.validation_human_cases(10)
    assert len(val) == 10 and all(c.human and c.name.startswith("allison_val") for c in val)
    assert [c.text for c in val] == prompts[casesmod.EVALUATE_HUMAN_RESERVE:casesmod.EVALUATE_HUMAN_RESERVE + 10]
    assert len(reported) >= casesmod.MAX_EVALUATE_HUMAN - 1 and not reported & {c.text for c in val}
    R = casesmod.EVALUATE_HUMAN_RESERVE
    skip_two = {prompts[R + 1], prompts[R + 4]}  # sentences the validation corpus's own human clips already read
    val2 = [c.text for c in corpus.validation_human_cases(4, exclude=skip_two)]
    assert val2 == [prompts[i] for i in (R, R + 2, R + 3, R + 5)]
    rc = main(["evaluate", "--checkpoint", str(tmp_path / "none"), "--data", str(corpus_dir), "--json",
               str(tmp_path / "o.json"), "--plots", str(tmp_path), "--human", "17"])
    assert rc == 2 and "--human 17: must be 0..16" in capsys.readouterr().err


def test_human_utterances_skip_unalignable_prompts_and_still_return_n(monkeypatch, tmp_path):
    """A held-out prompt that fails to align is tried once more; one that fails twice is skipped and the
    next-longest taken, so --human N gets N."""
    from eartalking.data import speech

    prompts = ["a long held-out prompt number one", "held-out prompt two", "prompt three", "four", "seen"]

    src = FakeAllison(prompts, lambda text, n: text == prompts[1] or (text == prompts[2] and n == 1))  # 2: once
    monkeypatch.setattr(speech, "available_sources", lambda assets: [src])
    got = ge.human_utterances(str(tmp_path), prompts[:4], 3)
    assert [u["text"] for u in got] == [prompts[0], prompts[2], prompts[3]]  # longest first, the failure skipped
    assert src.calls[:5] == [prompts[0], prompts[1], prompts[1], prompts[2], prompts[2]]  # each retried once
    for u in got:
        assert u["pcm"].shape == (len(u["labels"]["openness"]) * 640,) and u["voice_key"].startswith("allison")
    assert len(ge.human_utterances(str(tmp_path), prompts[:4], 5)) == 3  # only 3 alignable held-out prompts


def test_code_mean_sweep_chooses_the_temperature_with_the_best_validation_r(corpus_dir, ckpt, monkeypatch, capsys,
                                                                         tmp_path):
    """scripts/code_mean_sweep.py: each temperature reaches the generator through model.decoder, r is measured
    as evaluate measures it, and the choice is the temperature whose validation clips score best. A stand-in
    generator returns each clip's own video at T = 1.3 (r = the ground-truth r) and the video reversed in time
    otherwise, so 1.3 must win; a missing validation corpus is a clear error."""
    import importlib.util

    from eartalking.evaluate.cases import Corpus

    spec = importlib.util.spec_from_file_location(
        "code_mean_sweep", Path(__file__).resolve().parents[2] / "scripts" / "code_mean_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    corpus = Corpus(corpus_dir, 64)
    videos = {c.pcm.tobytes(): c.video for c in corpus.heldout_cases(2, human=0) + corpus.train_cases(1)}
    seen = []

    def fake_generate(model, portrait, pcm, n_frames, **_):
        t = model.decoder.code_mean_temperature
        seen.append(t)
        v = videos[pcm.tobytes()][:n_frames]
        v = v if t == 1.3 else v[::-1].copy()
        return ge.Generated(dict(enumerate(v)), np.ones(len(v)), len(v))

    monkeypatch.setattr(ge, "generate", fake_generate)
    assert sweep.main(["--checkpoint", str(ckpt), "--data", str(corpus_dir), "--temperatures", "1,1.3,2",
                       "--clips", "2", "--train-clips", "1"]) == 0
    out = capsys.readouterr().out
    assert "--code-mean-temperature 1.3" in out and "| 1.3 (chosen) | 1 |" in out
    assert sorted(set(seen)) == [1.0, 1.3, 2.0]
    # with --mouth-gains the gain reaches the generator too: only T 1.3 at gain 1.5 gives the clips' own video
    seen.clear()

    def fake_gain_generate(model, portrait, pcm, n_frames, **_):
        t, g = model.decoder.code_mean_temperature, model.decoder.code_mean_gain
        assert bool(model.decoder.code_mean_gain_cells.any())
        seen.append((t, g))
        v = videos[pcm.tobytes()][:n_frames]
        v = v if (t, g) == (1.3, 1.5) else v[::-1].copy()
        return ge.Generated(dict(enumerate(v)), np.ones(len(v)), len(v))

    monkeypatch.setattr(ge, "generate", fake_gain_generate)
    assert sweep.main(["--checkpoint", str(ckpt), "--data", str(corpus_dir), "--temperatures", "1,1.3",
                       "--mouth-gains", "1,1.5", "--clips", "2", "--train-clips", "1",
                       "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert "--code-mean-temperature 1.3 --mouth-gain 1.5" in out and "| 1.3 (chosen) | 1.5 |" in out
    assert "paired against T=1 gain 1" in out and "T=1.3 gain 1.5: validation +" in out  # reversed -> own video
    saved = json.loads((tmp_path / "a.json").read_text())
    assert [(r["temperature"], r["gain"]) for r in saved["settings"]] == [(1.0, 1.0), (1.3, 1.0), (1.0, 1.5),
                                                                           (1.3, 1.5)]
    names = sorted({n for g in saved["groups"].values() for n in g})
    assert len(names) >= 2 and all(sorted(r["cases"]) == names for r in saved["settings"])
    own, rev = saved["settings"][3]["cases"], saved["settings"][0]["cases"]
    assert all(own[n] > rev[n] for n in names)  # each clip's own video follows its labels better than reversed
    # --paired-with: another run (here the own-video setting alone) against the saved run's first setting
    assert sweep.main(["--checkpoint", str(ckpt), "--data", str(corpus_dir), "--temperatures", "1.3",
                       "--mouth-gains", "1.5", "--clips", "2", "--train-clips", "1",
                       "--paired-with", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    d = statistics.fmean(own[n] - rev[n] for n in saved["groups"]["validation"])
    assert f"paired against {tmp_path / 'a.json'}" in out and f"validation {d:+.3f}" in out
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SystemExit):
        sweep.main(["--checkpoint", str(ckpt), "--data", str(corpus_dir), "--paired-with", str(tmp_path / "bad.json")])
    assert "--paired-with" in capsys.readouterr().err
    assert sweep.paired_by_name({"a": 0.1, "b": None}, {"a": 0.4, "b": 0.2}, ["a", "b"]) == "+0.300 (1)"
    cases = [object(), object(), object()]
    a = dict(zip(map(id, cases), (0.1, 0.3, None), strict=True))
    b = dict(zip(map(id, cases), (0.4, 0.4, 0.9), strict=True))
    assert sweep.paired(a, b, cases) == "+0.200 +- 0.100, median +0.200 (2)"  # the unmeasured case is left out
    assert sweep.paired(a, b, cases[2:]) == "-"
    many = [object() for _ in range(5)]  # one outlier moves the mean, not the median
    a5 = dict(zip(map(id, many), (0.5, 0.5, 0.5, 0.5, 1.0), strict=True))
    b5 = dict(zip(map(id, many), (0.6, 0.4, 0.6, 0.6, -1.0), strict=True))
    line = sweep.paired(a5, b5, many)
    assert line.startswith("-0.360 +- ") and line.endswith("median +0.100 (5)")
    even = many[:4]
    assert sweep.paired(a5, b5, even).endswith("median +0.100 (4)")
    assert sorted(set(seen)) == [(1.0, 1.0), (1.0, 1.5), (1.3, 1.0), (1.3, 1.5)]
    with pytest.raises(SystemExit, match="--mouth-gains"):
        sweep.parse_positive_list("1,0", "--mouth-gains")
    with pytest.raises(SystemExit):
        sweep.main(["--checkpoint", str(ckpt), "--data", str(corpus_dir / "nope")])
    with pytest.raises(SystemExit):
        sweep.parse_positive_list("1,-2")


def test_audio_openness_scores_a_prediction_per_source_at_its_lag(corpus_dir, capsys):
    """scripts/audio_openness.py: a stand-in predictor that returns each clip's own openness labels two frames
    late scores r = 1 for every source at --lag 2 and less at lag 0; the CLI runs on a train-audio run."""
    import importlib.util

    from eartalking.cli import main as cli
    from eartalking.train import common

    spec = importlib.util.spec_from_file_location(
        "audio_openness", Path(__file__).resolve().parents[2] / "scripts" / "audio_openness.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    labels = {c.pcm.tobytes(): np.nan_to_num(c.openness) for c in common.load_corpus(corpus_dir, "eval", 0, size=64)}

    def late(pcm):
        o = labels[pcm.tobytes()]
        return np.concatenate([np.random.default_rng().random(2), o])[:len(o)]  # frame t predicts t - 2

    got = mod.source_r(str(corpus_dir), late, 2, 64)
    assert got and all(r == pytest.approx(1.0) for rs in got.values() for r in rs)
    assert max(r for rs in mod.source_r(str(corpus_dir), late, 0, 64).values() for r in rs) < 0.99
    out = corpus_dir.parent / "audio_openness_run"
    assert cli(["train-audio", "--data", str(corpus_dir), "--out", str(out), "--preset", "test_small", "--steps",
                "2", "--batch", "2", "--frames", "8", "--threads", "1", "--device", "cpu", "--minutes", "0"]) == 0
    capsys.readouterr()
    assert mod.main(["--data", str(corpus_dir), "--audio", str(out), "--preset", "test_small"]) == 0
    table = capsys.readouterr().out
    assert "| speech source | clips | openness r from audio alone (lag 0) |" in table


def test_token_lipsync_readout_scores_tokens_that_follow_the_labels_and_not_random_ones(corpus_dir, ckpt, capsys,
                                                                                       monkeypatch):
    """scripts/token_lipsync.py: a readout fitted on even clips scores r ~ 1 on odd clips whose digits are a
    noisy linear map of their labels, and ~0 for digits unrelated to them; per group; fewer than 2 clips is
    a clear error. On a random-weight checkpoint the CLI records the mouth cells' digits of every frame."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "token_lipsync", Path(__file__).resolve().parents[2] / "scripts" / "token_lipsync.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    rng = np.random.default_rng()
    W = rng.standard_normal(6)
    labels = [rng.random(int(rng.integers(40, 80))) for _ in range(12)]
    groups = ["tts", "tts", "human", "human"] * 3  # odd (scored) clips: tts, human, tts, ...
    follow = [np.outer(y, W) + 0.05 * rng.standard_normal((len(y), 6)) for y in labels]
    res = mod.readout_r(follow, labels, groups)
    assert set(res) == {"tts", "human"} and all(n == 3 for _, n in res.values())
    assert all(r > 0.95 for r, _ in res.values())
    unrelated = [rng.standard_normal((len(y), 6)) for y in labels]
    assert all(abs(r) < 0.5 for r, _ in mod.readout_r(unrelated, labels, groups).values())
    with pytest.raises(SystemExit):
        mod.readout_r(follow[:1], labels[:1], groups[:1])

    from eartalking.evaluate.cases import Corpus
    from eartalking.model import checkpoint
    from eartalking.train.decoder import eye_cells, region_cells

    model, cfg = checkpoint.load(str(ckpt))
    case = Corpus(corpus_dir, cfg.tokenizer.image_size).heldout_cases(1, human=0)[0]
    cells = [c for c in region_cells(cfg) if c not in set(eye_cells(cfg))]
    d = mod.mouth_digits(model, case, cells, "picked")
    assert d.shape == (case.n_frames, len(cells) * int(model.tokenizer.radix.numel()))
    assert d.min() >= 0 and d.max() <= int(model.tokenizer.levels) - 1 and np.all(d == np.round(d))
    assert getattr(model.decoder.pick, "__func__", None) is type(model.decoder).pick  # the hook is removed
    args = ["--checkpoint", str(ckpt), "--data", str(corpus_dir), "--clips", "2"]
    with pytest.raises(SystemExit, match="needs at least 2 clips"):
        mod.main(args)  # the fixture corpus holds 1 held-out clip
    monkeypatch.setattr(Corpus, "heldout_cases", lambda self, n, human=None: [case, case])
    assert mod.main(args) == 0
    assert "| voices | clips scored | token lip-sync r |" in capsys.readouterr().out


def test_code_mean_sweep_joins_each_persons_prompts_into_long_recordings():
    """code_mean_sweep --human-long K (join_cases): each person's prompt cases, in order, joined K at a time into
    one case whose pcm and openness labels are the parts' end to end (frame counts add up, labels stay aligned
    with their audio); a last group of one is left out; people are never mixed."""
    import importlib.util

    from eartalking.evaluate.cases import Case

    spec = importlib.util.spec_from_file_location(
        "code_mean_sweep", Path(__file__).resolve().parents[2] / "scripts" / "code_mean_sweep.py")
    sweep = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    rng = np.random.default_rng()
    cases = []
    for i in range(7):  # people a, b, a, b, ...: a has 4 prompts, b has 3
        T = int(rng.integers(5, 30))
        cases.append(Case(name=f"allison_val_{i}", clip=None, portrait_key="ab"[i % 2], portrait=np.zeros((4, 4, 3)),
                          identity="ab"[i % 2], source="allison", voice_key="v", heldout_voice=False, human=True,
                          text=f"t{i}", pcm=rng.standard_normal(T * 640).astype(np.float32),
                          labels={"openness": rng.uniform(0, 1, T).astype(np.float32)}, video=None))
    longs = sweep.join_cases(cases, 2)
    a, b = [c for c in cases if c.portrait_key == "a"], [c for c in cases if c.portrait_key == "b"]
    groups = [a[0:2], a[2:4], b[0:2]]  # b's third prompt alone is left out
    assert [c.portrait_key for c in longs] == ["a", "a", "b"] and len({c.name for c in longs}) == 3
    for got, parts in zip(longs, groups, strict=True):
        assert np.array_equal(got.pcm, np.concatenate([p.pcm for p in parts]))
        assert np.array_equal(got.labels["openness"], np.concatenate([p.labels["openness"] for p in parts]))
        assert got.n_frames == sum(p.n_frames for p in parts) == len(got.labels["openness"])
    with pytest.raises(SystemExit):  # K 1 would join nothing: refused by name before anything loads
        sweep.main(["--human-long", "1", "--human-prompts", "8"])

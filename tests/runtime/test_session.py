"""Streaming session over a real (random-weight) test_small ONNX export: chunking, timing, controls, batching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from runtime_helpers import speechlike

from eartalking.cli import UserError
from eartalking.runtime.session import Session, step_many


def run_chunks(engine, face, pcm, chunk, **kw):
    s = Session(engine, face.photo, face=face, **kw)
    frames = []
    for a in range(0, len(pcm), chunk):
        frames += s.push_audio(pcm[a : a + chunk])
    frames += s.end()
    return frames


def tokens(frames):
    return np.stack([f.tokens for f in frames])


def test_chunk_sizes_give_identical_frames(engine, face):
    pcm = speechlike(1.3, seed=11)
    whole = run_chunks(engine, face, pcm, len(pcm))
    assert len(whole) == math.ceil(len(pcm) / 640)
    for chunk in (1, 160, 640, 16000):
        got = run_chunks(engine, face, pcm, chunk)
        assert len(got) == len(whole)
        np.testing.assert_array_equal(tokens(got), tokens(whole))
        for a, b in zip(got, whole, strict=True):
            assert a.index == b.index
            np.testing.assert_array_equal(a.image, b.image)


def test_int16_equals_float(engine, face):
    pcm = speechlike(0.5, seed=12)
    i16 = np.round(pcm * 32767).astype(np.int16)
    a = run_chunks(engine, face, i16, 999, crop_only=True)
    b = run_chunks(engine, face, i16.astype(np.float32) / 32768.0, 999, crop_only=True)
    np.testing.assert_array_equal(tokens(a), tokens(b))


@pytest.mark.parametrize("samples", [0, 1, 639, 640, 641, 1920, 16001])
def test_frame_count_and_end_flush(engine, face, samples):
    pcm = speechlike(samples / 16000, seed=samples)[:samples]
    s = Session(engine, face.photo, face=face, crop_only=True)
    before = s.push_audio(pcm)
    la = engine.lookahead
    assert len(before) == max(0, samples // 640 - la)  # frames whose audio + lookahead arrived
    after = s.end()
    assert len(before) + len(after) == math.ceil(samples / 640)
    assert [f.index for f in before + after] == list(range(math.ceil(samples / 640)))
    assert s.end() == []  # a second end flushes nothing
    assert s.state is None and s.refs == []  # freed once the last frame is out
    with pytest.raises(UserError, match="ended"):
        s.push_audio(pcm[:10])


def test_frames_come_as_soon_as_audio_plus_lookahead_arrives(engine, face):
    s = Session(engine, face.photo, face=face, crop_only=True)
    pcm = speechlike(0.4, seed=3)
    need = (engine.lookahead + 1) * 640  # frame 0 needs its own 640 samples + lookahead
    assert s.push_audio(pcm[: need - 1]) == []
    got = s.push_audio(pcm[need - 1 : need])
    assert [f.index for f in got] == [0]
    assert s.header["first_frame_latency_s"] == pytest.approx((engine.lookahead + 1) / 25)


def test_controls_land_on_requested_frame(engine, face):
    pcm = speechlike(1.2, seed=21)
    base = run_chunks(engine, face, pcm, 3200, crop_only=True)
    k = 12
    s = Session(engine, face.photo, face=face, crop_only=True)
    out = s.push_audio(pcm[: 640 * 8])  # some frames out already; k is still ahead
    assert s.set_controls(frame=k, yaw=25.0, blink=1.0) == k
    out += s.push_audio(pcm[640 * 8 :]) + s.end()
    np.testing.assert_array_equal(tokens(out[:k]), tokens(base[:k]))  # frames before k unchanged
    assert all(f.controls == {} for f in out[:k])
    assert out[k].controls == {"yaw": 25.0, "blink": 1.0}
    assert out[-1].controls == {"yaw": 25.0, "blink": 1.0}  # a value holds until changed
    assert not np.array_equal(tokens(out[k:]), tokens(base[k:]))  # the request reached the model


def test_controls_next_and_release(engine, face):
    pcm = speechlike(0.8, seed=22)
    s = Session(engine, face.photo, face=face, crop_only=True)
    out = s.push_audio(pcm[: 640 * 6])
    k = s.set_controls(frame="next", expression=0.7)
    assert k == len(out)
    s.set_controls(frame=k + 3, expression=None)
    out += s.push_audio(pcm[640 * 6 :]) + s.end()
    assert [f.controls for f in out[k : k + 4]] == [{"expression": 0.7}] * 3 + [{}]


def test_control_errors(engine, face):
    s = Session(engine, face.photo, face=face, crop_only=True)
    s.push_audio(speechlike(0.5, seed=5))
    with pytest.raises(UserError, match="unknown control signal 'smile'"):
        s.set_controls(smile=1.0)
    with pytest.raises(UserError, match=r"yaw=45.0 is out of range \[-30.0, 30.0\]"):
        s.set_controls(yaw=45)
    with pytest.raises(UserError, match="too late"):
        s.set_controls(frame=0, blink=1.0)
    with pytest.raises(UserError, match="integer frame"):
        s.set_controls(frame="soon", blink=1.0)
    s.end()
    with pytest.raises(UserError, match="past the end"):
        s.set_controls(frame=10_000, blink=1.0)


def test_interleaved_sessions_equal_separate(engine, face):
    a_pcm, b_pcm = speechlike(0.9, seed=31), speechlike(1.1, seed=32)
    a_ref = run_chunks(engine, face, a_pcm, len(a_pcm), crop_only=True)
    b_ref = run_chunks(engine, face, b_pcm, len(b_pcm), crop_only=True, temperature=0.8, seed=7)
    a = Session(engine, face.photo, face=face, crop_only=True)
    b = Session(engine, face.photo, face=face, crop_only=True, temperature=0.8, seed=7)
    fa, fb = [], []
    for i in range(0, max(len(a_pcm), len(b_pcm)), 1000):
        fa += a.push_audio(a_pcm[i : i + 1000]) if i < len(a_pcm) else []
        fb += b.push_audio(b_pcm[i : i + 1000]) if i < len(b_pcm) else []
    fa, fb = fa + a.end(), fb + b.end()
    np.testing.assert_array_equal(tokens(fa), tokens(a_ref))
    np.testing.assert_array_equal(tokens(fb), tokens(b_ref))


def test_step_many_equals_one_by_one(engine, face):
    pcms = [speechlike(s, seed=40 + i) for i, s in enumerate((0.6, 1.0, 0.84))]
    temps = (0.0, 0.9, 0.0)

    def make(i):
        s = Session(engine, face.photo, face=face, temperature=temps[i], seed=i)
        if i == 1:
            s.set_controls(frame=5, yaw=-20.0)
        return s

    refs = []
    for i, p in enumerate(pcms):  # one by one
        s = make(i)
        refs.append(s.push_audio(p) + s.end())
    sessions = [make(i) for i in range(3)]
    calls = []
    orig = engine.backend.run

    def spy(graph, feeds):
        calls.append((graph, len(next(iter(feeds.values())))))
        return orig(graph, feeds)

    engine.backend.run = spy
    try:
        for s, p in zip(sessions, pcms, strict=True):
            s.feed(p)
            s.finish()
        got = step_many(sessions)
    finally:
        engine.backend.run = orig
    for g, r in zip(got, refs, strict=True):
        np.testing.assert_array_equal(tokens(g), tokens(r))
        for x, y in zip(g, r, strict=True):
            np.testing.assert_array_equal(x.image, y.image)
    steps = [b for g, b in calls if g == "step_decoder"]
    assert max(steps) == 3 and len(steps) == max(len(r) for r in refs)  # one call per round, batched
    assert sum(steps) == sum(len(r) for r in refs)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_onnx_session_tokens_equal_pytorch_streaming_generator(engine, face, small_model, temperature):
    from eartalking.model.generate import StreamingGenerator

    pcm = speechlike(1.6, seed=51)  # 40 frames: far past the window wrap (W = 3)
    s = Session(engine, face.photo, face=face, crop_only=True, temperature=temperature, seed=9)
    s.set_controls(frame=15, yaw=12.0, blink=1.0)
    s.set_controls(frame=20, blink=0.0)
    frames = s.push_audio(pcm) + s.end()
    portrait = torch.from_numpy(face.crop.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
    gen = StreamingGenerator(small_model, portrait, temperature=temperature, seed=9)
    audio = small_model.audio.encode_utterance(torch.from_numpy(pcm)[None])
    names = ("yaw", "pitch", "roll", "blink", "expression")
    ref = []
    for t in range(audio.shape[1]):
        c = {"yaw": 12.0, "blink": 1.0} if 15 <= t < 20 else {"yaw": 12.0, "blink": 0.0} if t >= 20 else {}
        ctl = torch.tensor([[c.get(n, 0.0) for n in names]])
        mask = torch.tensor([[1.0 if n in c else 0.0 for n in names]])
        ref.append(gen.step(audio[:, t], ctl, mask)[0].numpy())
    assert len(frames) == len(ref) == 40
    np.testing.assert_array_equal(tokens(frames), np.stack(ref))
    img = gen.render(torch.from_numpy(tokens(frames)[-1:]).long())[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(frames[-1].image.astype(np.float32) / 255.0, img, atol=2.5 / 255)


def test_whole_long_file_keeps_pending_tokens_bounded(engine, face):
    pcm = speechlike(6.0, seed=62)  # 150 frames, more than MAX_AUDIO_FRAMES per encoder call
    s = Session(engine, face.photo, face=face, crop_only=True)
    seen = []
    orig = s._take_audio

    def spy():
        seen.append(len(s._tokens))
        return orig()

    s._take_audio = spy
    frames = s.push_audio(pcm) + s.end()
    assert len(frames) == 150 and max(seen) <= 64 + engine.lookahead + 1
    ref = run_chunks(engine, face, pcm, 640, crop_only=True)
    np.testing.assert_array_equal(tokens(frames), tokens(ref))


def test_state_is_bounded_and_freed(engine, face):
    s = Session(engine, face.photo, face=face, crop_only=True)
    pcm = speechlike(3.0, seed=61)
    sizes = []
    for a in range(0, len(pcm), 777):
        s.push_audio(pcm[a : a + 777])
        sizes.append((s._pcm.size, len(s._tokens)))
    assert max(p for p, _ in sizes) <= engine.left + 640 + 777
    assert max(t for _, t in sizes) <= engine.lookahead + 1 + 777 // 640 + 1
    s.end()
    s.close()
    assert s.state is None and s.refs == [] and s.ready() == 0
    with pytest.raises(UserError, match="closed"):
        s.push_audio(pcm[:100])


def test_bad_inputs(engine, face):
    s = Session(engine, face.photo, face=face, crop_only=True)
    with pytest.raises(UserError, match="1-D"):
        s.push_audio(np.zeros((2, 100), np.float32))
    with pytest.raises(UserError, match="int16 or float32"):
        s.push_audio(np.zeros(100, np.int64))
    with pytest.raises(UserError, match="NaN"):
        s.push_audio(np.full(100, np.nan, np.float32))
    with pytest.raises(UserError, match="temperature"):
        Session(engine, face.photo, face=face, temperature=-1.0)
    with pytest.raises(UserError, match="no face"):
        Session(engine, np.full((300, 300, 3), 127, np.uint8))


def test_paste_back_keeps_photo_outside_face(engine, face):
    frames = run_chunks(engine, face, speechlike(0.2, seed=71), 3200)
    img = frames[0].image
    assert img.shape == face.photo.shape
    x0, y0, x1, y1 = face.box
    outside = np.ones(img.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(img[outside], face.photo[outside])
    assert np.abs(img[y0:y1, x0:x1].astype(int) - face.photo[y0:y1, x0:x1]).mean() > 1.0  # the face was replaced


def test_overlapped_rendering_gives_the_same_frames(onnx_dir, engine, face):
    from eartalking.runtime.session import Engine

    ov = Engine(onnx_dir, threads=1, overlap=True)
    assert ov.overlap and not engine.overlap
    pcms = [speechlike(0.9, seed=95), speechlike(0.7, seed=96)]
    for e_pcm in pcms:
        a = run_chunks(engine, face, e_pcm, 3200)
        b = run_chunks(ov, face, e_pcm, 3200)
        assert [f.index for f in b] == list(range(len(a)))
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x.image, y.image)
    sessions = [Session(ov, face.photo, face=face, crop_only=True, temperature=0.5, seed=i) for i in range(2)]
    for s, p in zip(sessions, pcms, strict=True):
        s.feed(p)
        s.finish()
    got = step_many(sessions)
    for i, p in enumerate(pcms):
        ref = run_chunks(engine, face, p, len(p), crop_only=True, temperature=0.5, seed=i)
        np.testing.assert_array_equal(tokens(got[i]), tokens(ref))
        np.testing.assert_array_equal(np.stack([f.image for f in got[i]]), np.stack([f.image for f in ref]))

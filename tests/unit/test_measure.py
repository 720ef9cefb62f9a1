"""Tests of ``eartalking measure`` on synthetic clips made from skimage's astronaut (no assets needed).

The clip's mouth is opened by a piecewise-affine warp of the lower lip and jaw landmarks by a requested
openness, its eyelids are closed on a few frames, and its audio is a tone whose loudness follows the
openness; the measured curves must follow what was requested.
"""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from skimage import data
from skimage.transform import PiecewiseAffineTransform, ProjectiveTransform, warp

from eartalking import cli
from eartalking.evaluate import dlibface, measure, signals

FPS, SR = 25, 16000
CROP = (slice(0, 256), slice(96, 352))  # 256x256 around the astronaut's face
BLINK_FRAMES = (14, 15, 16)


def _astronaut() -> np.ndarray:
    return np.ascontiguousarray(data.astronaut()[CROP])


def _landmarks(img: np.ndarray) -> np.ndarray:
    rect = dlibface.FaceFinder().find(img)
    assert rect is not None
    return dlibface.landmarks(img, rect).points


def _fit(cls, src: np.ndarray, dst: np.ndarray):
    """``cls.from_estimate`` (scikit-image >= 0.26) or the older ``estimate``."""
    if hasattr(cls, "from_estimate"):
        t = cls.from_estimate(src, dst)
    else:
        t = cls()
        t = t if t.estimate(src, dst) else None
    assert t, f"{cls.__name__} estimation failed"
    return t


def _warp_face(img: np.ndarray, pts: np.ndarray, openness: float, close: float) -> np.ndarray:
    """Open the mouth by ``openness`` x mouth width and close the eyelids by ``close`` (0..1).

    Piecewise-affine warp of a patch around the face: the 68 landmarks and the patch border are the
    control points; lower lip and jaw move down, upper eyelids move towards the lower ones.
    """
    w = np.linalg.norm(pts[60] - pts[64])
    dst = pts.copy()
    for idx, k in (((66, 57, 7, 8, 9), 1.0), ((65, 67, 56, 58, 6, 10), 0.85), ((55, 59, 5, 11), 0.5)):
        dst[list(idx), 1] += k * openness * w
    for up, low in ((37, 41), (38, 40), (43, 47), (44, 46)):
        dst[up, 1] += close * (pts[low, 1] - pts[up, 1])
    y0, y1 = int(pts[:, 1].min()) - 25, int(pts[:, 1].max()) + 40
    x0, x1 = int(pts[:, 0].min()) - 25, int(pts[:, 0].max()) + 25
    patch = img[y0:y1, x0:x1]
    h, wd = patch.shape[:2]
    border = np.array(
        [
            [x, y]
            for x in np.linspace(0, wd - 1, 6)
            for y in np.linspace(0, h - 1, 6)
            if x in (0, wd - 1) or y in (0, h - 1)
        ]
    )
    off = np.array([x0, y0])
    src_all, dst_all = np.vstack([pts - off, border]), np.vstack([dst - off, border])
    tform = _fit(PiecewiseAffineTransform, dst_all, src_all)  # output -> input coordinates, as warp() wants
    out = img.copy()
    out[y0:y1, x0:x1] = np.clip(warp(patch, tform, preserve_range=True, order=1), 0, 255).astype(np.uint8)
    return out


def _turn_warp(img: np.ndarray, edge: str, d: float) -> np.ndarray:
    """Perspective warp as if the picture plane turned so that ``edge`` (right/left/top/bottom) moved away.

    Right edge away = the face turns to its own left (+yaw); top edge away = chin up (+pitch).
    """
    h, w = img.shape[:2]
    x0, x1, y0, y1 = 0.0, w - 1.0, 0.0, h - 1.0
    far, near = d * max(h, w), -d * max(h, w) / 2  # the far edge shrinks, the near one grows
    sh = {"left": (far, near), "right": (near, far), "top": (far, near), "bottom": (near, far)}[edge]
    if edge in ("left", "right"):
        dst = [[x0, y0 + sh[0]], [x1, y0 + sh[1]], [x1, y1 - sh[1]], [x0, y1 - sh[0]]]
    else:
        dst = [[x0 + sh[0], y0], [x1 - sh[0], y0], [x1 - sh[1], y1], [x0 + sh[1], y1]]
    src = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    t = _fit(ProjectiveTransform, np.array(dst), src)
    return warp(img, t, preserve_range=True, mode="edge").astype(np.uint8)


def _write_mp4(path, frames: np.ndarray, pcm: np.ndarray | None) -> None:
    """H.264 (+ AAC 16 kHz mono when ``pcm`` is given) with PyAV."""
    with av.open(str(path), "w") as box:
        vs = box.add_stream("libx264", rate=FPS)
        vs.height, vs.width = frames.shape[1:3]
        vs.pix_fmt = "yuv420p"
        vs.options = {"crf": "12"}
        ast = None
        if pcm is not None:
            ast = box.add_stream("aac", rate=SR)
            ast.layout = "mono"
        for f in frames:
            for p in vs.encode(av.VideoFrame.from_ndarray(f, format="rgb24")):
                box.mux(p)
        for p in vs.encode(None):
            box.mux(p)
        if ast is not None:
            for i in range(0, len(pcm), 1024):
                fr = av.AudioFrame.from_ndarray(pcm[None, i : i + 1024].astype(np.float32), format="flt", layout="mono")
                fr.sample_rate, fr.pts = SR, i
                for p in ast.encode(fr):
                    box.mux(p)
            for p in ast.encode(None):
                box.mux(p)


@pytest.fixture(scope="module")
def talking(tmp_path_factory):
    """A 40-frame talking astronaut clip measured once through the CLI (JSON, plot, labels)."""
    rng = np.random.default_rng()
    T = 40
    phase = rng.uniform(0, 2 * np.pi)
    requested = 0.3 * (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(T) / rng.uniform(9, 14) + phase))
    img = _astronaut()
    pts = _landmarks(img)
    frames = np.stack([_warp_face(img, pts, o, 0.9 if t in BLINK_FRAMES else 0.0) for t, o in enumerate(requested)])
    ts = np.arange(T * SR // FPS) / SR
    env = np.interp(ts * FPS - 0.5, np.arange(T), requested)  # loudness follows the openness frame by frame
    pcm = (0.6 * env / requested.max() + 0.02) * np.sin(2 * np.pi * rng.uniform(180, 260) * ts)
    d = tmp_path_factory.mktemp("talk")
    _write_mp4(d / "talk.mp4", frames, pcm)
    blink = [1.0 if t in BLINK_FRAMES else 0.0 for t in range(T)]
    labels = {
        "fps": FPS,
        "frames": [
            {"openness": float(o), "blink": b, "yaw": 0.0, "pitch": 0.0, "roll": 0.0, "expression": 0.0}
            for o, b in zip(requested, blink, strict=True)
        ],
    }
    (d / "talk.json").write_text(json.dumps(labels))
    portrait = d / "portrait.png"
    from PIL import Image

    Image.fromarray(data.astronaut()).save(portrait)
    rc = cli.main(
        [
            "measure",
            str(d / "talk.mp4"),
            "--portrait",
            str(portrait),
            "--json",
            str(d / "m.json"),
            "--plot",
            str(d / "m.png"),
            "--labels",
            str(d / "talk.json"),
            "--every",
            "4",
        ]
    )
    assert rc == 0
    return {"res": json.loads((d / "m.json").read_text()), "requested": requested, "dir": d}


def test_openness_follows_the_warp(talking):
    res = talking["res"]
    assert res["frames"] == 40 and res["no_face_frames"] == 0 and res["fps"] == pytest.approx(25)
    r = signals.pearson(np.array(res["curves"]["mouth_openness"], float), talking["requested"])
    assert r >= 0.9, r
    assert res["labels"]["openness_r"] == pytest.approx(r, abs=1e-3)  # JSON curves keep 5 decimals


def test_lipsync_against_the_envelope(talking):
    s = talking["res"]["summary"]
    assert s["lipsync_r"] >= 0.8 and abs(s["lipsync_lag_frames"]) <= 1, (s["lipsync_r"], s["lipsync_lag_frames"])
    assert talking["res"]["audio"]["present"]


def test_blink_detected(talking):
    res = talking["res"]
    s = res["summary"]
    assert s["blink_count"] == 1 and s["blink_frames"][0] in BLINK_FRAMES, s["blink_frames"]
    assert res["labels"]["blink_r"] >= 0.7, res["labels"]["blink_r"]
    assert res["labels"]["yaw_r"] is None  # constant labels: r is undefined, reported as null


def test_identity_matches_the_portrait(talking):
    res = talking["res"]
    ident = res["identity"]
    assert ident["reference"] == "portrait" and ident["every"] == 4 and ident["sampled_frames"] == list(range(0, 40, 4))
    assert res["summary"]["identity_distance_max"] < 0.6
    assert (talking["dir"] / "m.png").stat().st_size > 10_000


def test_pose_signs():
    """Yaw, pitch and roll move the documented way under turn-like warps and an on-screen rotation."""
    from skimage.transform import rotate

    rng = np.random.default_rng()
    img = _astronaut()
    dy, dp, angle = rng.uniform(0.09, 0.14), rng.uniform(0.15, 0.2), rng.uniform(6, 12)
    frames = (
        [img]
        + [_turn_warp(img, e, dy) for e in ("right", "left")]
        + [_turn_warp(img, e, dp) for e in ("top", "bottom")]
    )
    frames.append(
        rotate(img, -angle, preserve_range=True, mode="edge").astype(np.uint8)
    )  # skimage: + = counter-clockwise
    c = measure.measure_frames(np.stack(frames), every=100)["curves"]
    yaw, pitch, roll = c["yaw"], c["pitch"], c["roll"]
    assert None not in yaw
    assert yaw[1] > yaw[0] + 1.5 and yaw[2] < yaw[0] - 1.5, yaw  # + = the face's own left turn
    assert pitch[3] > pitch[0] + 1 and pitch[4] < pitch[0] - 1, pitch  # + = chin up
    assert roll[5] == pytest.approx(roll[0] + angle, abs=2.5), (roll, angle)  # + = clockwise on screen


def test_video_without_a_face(tmp_path):
    rng = np.random.default_rng()
    yy, xx = np.mgrid[0:96, 0:128]
    frames = np.stack(
        [np.stack([(xx * a + yy * b + c) % 256 for a, b, c in rng.uniform(0, 3, (3, 3))], -1) for _ in range(10)]
    ).astype(np.uint8)
    _write_mp4(tmp_path / "none.mp4", frames, None)
    res = measure.measure_video(tmp_path / "none.mp4")
    assert res["frames"] == 10 and res["no_face_frames"] == 10 and res["no_face_indices"] == list(range(10))
    assert set(res["curves"]["mouth_openness"]) == {None} and res["summary"]["lipsync_r"] is None
    assert not res["audio"]["present"] and res["identity"]["reference"] is None


def test_corrupt_file_is_a_user_error(tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(np.random.default_rng().integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(cli.UserError, match="cannot read"):
        measure.measure_video(bad)
    assert cli.main(["measure", str(bad), "--json", str(tmp_path / "o.json")]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(cli.UserError, match="not found"):
        measure.measure_video(tmp_path / "missing.mp4")


def test_lagged_pearson_and_blinks_on_random_signals():
    rng = np.random.default_rng()
    x = rng.normal(size=200)
    lag = int(rng.integers(-3, 4))
    y = np.roll(x, lag) + 0.1 * rng.normal(size=200)  # y[t + lag] = x[t]
    r, best, _ = signals.lagged_pearson(x, y, 3)
    assert best == lag and r > 0.95
    eye = 0.3 + 0.01 * rng.normal(size=100)
    eye[[20, 21, 60]] = 0.05
    eye[40] = np.nan
    assert signals.detect_blinks(eye, 25) == [20 + int(eye[21] < eye[20]), 60]


def test_tracking_follows_a_moving_face():
    """The face jumps around between frames (and vanishes once): every face frame is found, in the right place."""
    img = data.astronaut()
    rng = np.random.default_rng()
    shifts = [(0, 0)] + [tuple(int(v) for v in rng.integers(-60, 61, 2)) for _ in range(5)]
    frames = [np.roll(img, s, axis=(0, 1)) for s in shifts]
    frames.insert(3, np.full_like(img, 127))
    res = measure.measure_frames(frames, every=100)
    assert res["no_face_indices"] == [3]
    boxes = [b for b in res["curves"]["face_box"] if b is not None]
    for (dy, dx), b in zip(shifts, boxes, strict=True):
        assert abs(b[0] - boxes[0][0] - dx) <= 10 and abs(b[1] - boxes[0][1] - dy) <= 10, (dy, dx, b, boxes[0])


def test_tracking_keeps_a_face_that_scores_under_zero():
    """A face just seen still counts when it scores a little under dlib's 0 (``TRACK_SCORE``), only near the
    last face: a blurred astronaut that a fresh search misses is found after a sharp frame, in the same place;
    a frame with no face stays empty even while tracking."""
    from scipy.ndimage import gaussian_filter

    sharp = _astronaut()
    rng = np.random.default_rng()
    sigma = rng.uniform(4.8, 5.2)  # HOG score about -0.4 here (0.05 at sigma 4, -0.75 at 6)
    soft = np.clip(gaussian_filter(sharp.astype(float), (sigma, sigma, 0)), 0, 255).astype(np.uint8)
    assert dlibface.FaceFinder().find(soft) is None  # the full-frame search keeps dlib's threshold
    yy, xx = np.mgrid[0:256, 0:256]
    empty = np.stack([(xx * a + yy * b) % 256 for a, b in rng.uniform(0.5, 3, (3, 2))], -1).astype(np.uint8)
    res = measure.measure_frames([sharp, soft, soft, empty, soft], every=100)
    assert res["no_face_indices"] == [3, 4]  # after the empty frame there is no last face to track
    b0, b1, b2 = res["curves"]["face_box"][:3]
    assert max(abs(u - v) for u, v in zip(b0, b1, strict=True)) <= 12 and b1 == b2, (b0, b1, b2)


def test_eye_signal_dips_when_the_eye_is_skin():
    """eye_appearance reads the boxes around both eyes: an open eye (white sclera and a dark iris on random
    skin) has more dark contrast and luminance spread than the same eye shut (skin with a faint lid line), so
    eye_signal dips even with the landmarks left unchanged; a box off the image is NaN, not an error."""
    rng = np.random.default_rng()
    p = np.zeros((68, 2))
    for s, cx in ((36, 40.0), (42, 88.0)):  # two eyes, 20 px corner to corner, on a 128 px face
        p[s:s + 6] = [[cx - 10, 50], [cx - 4, 47], [cx + 4, 47], [cx + 10, 50], [cx + 4, 53], [cx - 4, 53]]
    skin = rng.uniform(120, 200)
    shut = np.full((128, 128, 3), skin, np.float32) + rng.normal(0, 2, (128, 128, 3))
    open_ = shut.copy()
    yy, xx = np.mgrid[0:128, 0:128]
    for cx in (40.0, 88.0):
        open_[(np.abs(xx - cx) < 9) & (np.abs(yy - 50) < 3)] = 235  # sclera
        open_[(xx - cx) ** 2 + (yy - 50) ** 2 < 16] = rng.uniform(10, 50)  # iris + pupil
        shut[(np.abs(xx - cx) < 9) & (yy == 51)] = skin * 0.8  # the lid line
    ear = signals.eye_openness(p)
    c_open, s_open = signals.eye_appearance(open_, p)
    c_shut, s_shut = signals.eye_appearance(shut, p)
    assert c_open > 2 * c_shut and s_open > 2 * s_shut
    assert signals.eye_signal(ear, c_shut, s_shut) < signals.BLINK_DROP * signals.eye_signal(ear, c_open, s_open)
    assert np.isnan(signals.eye_signal(ear, *signals.eye_appearance(open_, p + 500)))

"""FaceRig warps (eartalking.data.warp) measured with dlib on the rendered frames; astronaut fixture only."""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("dlib")
pytest.importorskip("face_recognition_models")

from eartalking.data import faces as F  # noqa: E402
from eartalking.data import warp as W  # noqa: E402


@pytest.fixture(scope="module")
def rig():
    return W.FaceRig(F.fixture_identities(128)[0])


def test_render_shapes_and_neutral_matches_photo(rig):
    for size in (128, 64):
        img, lm = rig.render(size=size)
        assert img.shape == (size, size, 3) and img.dtype == np.uint8
        assert lm.shape == (68, 2) and lm.dtype == np.float32
    # with the photo's own mouth opening, the render reproduces the aligned crop
    ident = rig.identity
    o0 = F.mouth_openness(ident.landmarks) / W.MAX_GAP
    img, lm = rig.render(openness=o0, size=128)
    diff = np.abs(img.astype(np.float32) - ident.image.astype(np.float32))
    assert diff.mean() < 3.0
    assert np.abs(lm - ident.landmarks).max() < 1.0
    with pytest.raises(ValueError):
        rig.render(size=4)


def test_piecewise_affine_map_matches_skimage():
    from scipy.spatial import Delaunay
    from skimage.transform import PiecewiseAffineTransform

    rng = np.random.default_rng()
    grid = np.stack(np.meshgrid(np.linspace(-1, 256, 6), np.linspace(-1, 256, 6)), -1).reshape(-1, 2)
    src = grid + np.r_[np.zeros((1, 2)), rng.uniform(-12, 12, (len(grid) - 1, 2))] * (
        (grid > 0) & (grid < 255)).all(1, keepdims=True)
    dst = src + rng.uniform(-8, 8, src.shape) * ((grid > 0) & (grid < 255)).all(1, keepdims=True)
    size = 64
    dst_out = (dst + 0.5) * size / 256 - 0.5
    tri = Delaunay(dst_out).simplices
    mx, my = W._piecewise_affine_map(dst_out, src, tri, size)
    if hasattr(PiecewiseAffineTransform, "from_estimate"):  # scikit-image >= 0.26
        t = PiecewiseAffineTransform.from_estimate(dst_out, src)
        assert t
    else:
        t = PiecewiseAffineTransform()
        assert t.estimate(dst_out, src)
    ys, xs = np.mgrid[0:size, 0:size]
    ref = t(np.c_[xs.ravel(), ys.ravel()]).reshape(size, size, 2)
    ok = np.isfinite(ref).all(-1) & (ref != -1).all(-1)
    assert ok.mean() > 0.9
    np.testing.assert_allclose(mx[ok], ref[..., 0][ok], atol=1e-3)
    np.testing.assert_allclose(my[ok], ref[..., 1][ok], atol=1e-3)


def test_face_stays_detectable_under_random_controls(rig):
    rng = np.random.default_rng()
    t0, n = time.perf_counter(), 30
    for _ in range(n):
        rig.render(openness=rng.uniform(0, 1), blink=rng.uniform(0, 1), yaw=rng.uniform(-30, 30),
                   expression=rng.uniform(0, 1))
    print(f"FaceRig.render at 128 px: {(time.perf_counter() - t0) / n * 1000:.1f} ms/frame (not asserted)")
    # dlib's HOG detector itself misses the astronaut in ~3% of random combined extreme poses (measured 5 of
    # 150 draws; 0 of 150 for Grace Hopper), so one failing draw would make this test flaky: over 60 draws at
    # most 8 misses are allowed (P(fail) ~ 2e-4 at the measured rate), and every face found must sit where
    # the rig says its landmarks are.
    missed = []
    for _ in range(60):
        kw = dict(openness=rng.uniform(0, 1), width=rng.uniform(0, 1), blink=rng.uniform(0, 1),
                  yaw=rng.uniform(-25, 25), pitch=rng.uniform(-15, 15), roll=rng.uniform(-15, 15),
                  expression=rng.uniform(0, 1))
        img, lm = rig.render(**kw)
        det = F.landmarks68(img)
        if det is None:
            missed.append(kw)
            continue
        # the returned landmarks are where dlib finds them (mean error in 128 px frame pixels)
        assert np.abs(det - lm).mean() < 4.0, kw
    assert len(missed) <= 8, missed


def test_mouth_openness_follows_request(rig):
    rng = np.random.default_rng()
    req = rng.permutation(np.linspace(0, 1, 12))
    meas = []
    for o in req:
        img, _ = rig.render(openness=o, width=rng.uniform(0.3, 0.7), expression=rng.uniform(0, 0.4),
                            yaw=rng.uniform(-8, 8))
        lm = F.landmarks68(img)
        assert lm is not None
        meas.append(F.mouth_openness(lm))
    r = np.corrcoef(req, meas)[0, 1]
    print(f"dlib mouth openness vs requested: r = {r:.3f}")
    assert r >= 0.9


def test_blink_closes_the_eyes(rig):
    ears = []
    for b in (0.0, 1.0):
        img, _ = rig.render(blink=b, yaw=np.random.default_rng().uniform(-5, 5))
        ears.append(F.eye_aspect_ratio(F.landmarks68(img)))
    print(f"eye aspect ratio open {ears[0]:.3f} closed {ears[1]:.3f}")
    assert ears[1] < 0.75 * ears[0]


def test_yaw_sign_and_roll_angle(rig):
    prox = {}
    for y in (-25.0, 0.0, 25.0):
        prox[y] = F.yaw_proxy(F.landmarks68(rig.render(yaw=y)[0]))
    assert prox[-25.0] < prox[0.0] - 0.1 and prox[25.0] > prox[0.0] + 0.1
    for r in (-15.0, 15.0):
        le, re_ = F.eye_centres(F.landmarks68(rig.render(roll=r)[0]))
        assert abs(np.degrees(np.arctan2(re_[1] - le[1], re_[0] - le[0])) - r) < 3.0

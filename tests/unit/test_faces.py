"""Face detection, alignment, grouping and caching (eartalking.data.faces), on bundled fixtures only."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("dlib")
pytest.importorskip("face_recognition_models")

from eartalking.data import faces as F  # noqa: E402


@pytest.fixture(scope="module")
def fixtures():
    return F.fixture_identities(128)


def test_fixture_detection_and_alignment(fixtures):
    assert fixtures[0].id == "fixture_astronaut"
    for ident in fixtures:
        assert ident.image.shape == (128, 128, 3) and ident.image.dtype == np.uint8
        assert ident.hires.shape == (F.WORK_SIZE, F.WORK_SIZE, 3)
        assert ident.landmarks.shape == (68, 2) and ident.embedding.shape == (128,)
        # eyes and mouth land near the template (least-squares fit of 3 points: a few px of slack)
        le, re_ = F.eye_centres(ident.landmarks)
        want = F.TEMPLATE * 128 - 0.5
        assert np.abs(le - want[0]).max() < 4 and np.abs(re_ - want[1]).max() < 4
        assert abs(ident.landmarks[48:68].mean(0)[1] - want[2, 1]) < 4
        # dlib re-detects the aligned crop, and its landmarks agree with the transformed ones
        lm = F.landmarks68(ident.image)
        assert lm is not None
        assert np.abs(lm - ident.landmarks).mean() < 2.5


def test_alignment_size_is_configurable():
    small = F.fixture_identities(96)
    assert small[0].image.shape == (96, 96, 3)
    assert small[0].hires.shape == (F.WORK_SIZE, F.WORK_SIZE, 3)


def test_embeddings_separate_people_and_match_same_person(fixtures):
    if len(fixtures) < 2:
        pytest.skip("matplotlib's grace_hopper.jpg unavailable")
    a, g = fixtures[0], fixtures[1]
    assert np.linalg.norm(a.embedding - g.embedding) > 0.6
    # the same person, mirrored and rescaled, stays within the same-person distance
    from skimage import data

    img = data.astronaut()[:, ::-1]
    img = F._resize(np.ascontiguousarray(img), 0.7)
    lm = F.landmarks68(img)
    assert lm is not None
    assert np.linalg.norm(F.face_embedding(img, lm) - a.embedding) < F.GROUP_DISTANCE


def test_warp_affine_matches_skimage_reference():
    from skimage.transform import AffineTransform, warp

    rng = np.random.default_rng()
    img = (rng.random((90, 110, 3)) * 255).astype(np.uint8)
    ang, scale = rng.uniform(-0.3, 0.3), rng.uniform(1.0, 1.3)  # magnifying: no prefilter involved
    m = np.array([[scale * np.cos(ang), -scale * np.sin(ang), rng.uniform(-10, 10)],
                  [scale * np.sin(ang), scale * np.cos(ang), rng.uniform(-10, 10)]])
    out = F.warp_affine(img, m, 64).astype(np.float64)
    ref = warp(img.astype(np.float64), AffineTransform(matrix=np.vstack([m, [0, 0, 1]])).inverse, output_shape=(64, 64),
               order=1, mode="edge", preserve_range=True)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))
    ys, xs = np.mgrid[0:64, 0:64]
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    inside = (sx > 1) & (sx < 108) & (sy > 1) & (sy < 88)
    assert inside.sum() > 500
    assert np.abs(out - ref)[inside].max() <= 1.0  # rounding only


def test_group_ids_recovers_clusters():
    rng = np.random.default_rng()
    centres = rng.normal(size=(5, 128))
    centres *= 1.0 / np.linalg.norm(centres, axis=1, keepdims=True)  # pairwise distance ~1.4
    truth = rng.integers(0, 5, size=40)
    noise = rng.normal(size=(40, 128))
    noise *= rng.uniform(0.05, 0.15, size=(40, 1)) / np.linalg.norm(noise, axis=1, keepdims=True)
    labels = F.group_ids(centres[truth] + noise)
    # same partition up to renaming
    for i in range(40):
        for j in range(40):
            assert (labels[i] == labels[j]) == (truth[i] == truth[j])


def test_measurements_on_synthetic_landmarks():
    lm = np.zeros((68, 2), np.float32)
    lm[36:42] = [[0, 0], [1, -0.3], [2, -0.3], [3, 0], [2, 0.3], [1, 0.3]]
    lm[42:48] = lm[36:42] + [10, 0]
    lm[[61, 62, 63]] = [[4, 8], [5, 8], [6, 8]]
    lm[[67, 66, 65]] = [[4, 10], [5, 10], [6, 10]]
    assert F.inter_ocular(lm) == pytest.approx(10.0)
    assert F.mouth_openness(lm) == pytest.approx(0.2)
    assert F.eye_aspect_ratio(lm) == pytest.approx(0.6 / 3, rel=1e-5)
    lm[0], lm[16], lm[30] = [-5, 5], [15, 5], [8, 6]
    assert F.yaw_proxy(lm) == pytest.approx(0.3)


def test_load_identities_finds_faces_and_caches(tmp_path):
    from PIL import Image
    from skimage import data

    d = tmp_path / "faces" / "testsrc"
    d.mkdir(parents=True)
    Image.fromarray(data.astronaut()).save(d / "a.png")
    Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(d / "blank.png")  # no face: skipped
    ids = F.load_identities(tmp_path, size=64, progress=False)
    photo = [i for i in ids if i.source == "testsrc"]
    assert len(photo) == 1 and photo[0].image.shape == (64, 64, 3)
    assert photo[0].id == "fixture_astronaut"  # the fixture's person found in a photo keeps the fixture id
    assert (tmp_path / "faces_cache_64.npz").exists()
    again = F.load_identities(tmp_path, size=64, progress=False)
    again_photo = [i for i in again if i.source == "testsrc"]
    np.testing.assert_array_equal(again_photo[0].embedding, photo[0].embedding)
    assert F.load_identities(None, size=64)[0].id == "fixture_astronaut"

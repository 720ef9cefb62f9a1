"""Face finding, alignment and paste-back on real photos (scikit-image's astronaut, matplotlib's Grace Hopper)."""

from __future__ import annotations

import numpy as np
import pytest

from eartalking.cli import UserError
from eartalking.runtime import faces


def hopper() -> np.ndarray:
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


@pytest.mark.parametrize("photo_fn", [lambda: __import__("skimage.data").data.astronaut(), hopper])
def test_crop_is_aligned_and_paste_inverts_it(photo_fn):
    photo = photo_fn()
    face = faces.prepare(photo, 128)
    assert face.crop.shape == (128, 128, 3)
    lm = faces.landmarks68(face.crop, (0, 0, 127, 127))  # the aligned crop: eyes level, mouth below
    eyes_l, eyes_r, mouth = lm[36:42].mean(0), lm[42:48].mean(0), lm[48:68].mean(0)
    assert abs(eyes_l[1] - eyes_r[1]) < 6 and eyes_l[0] < eyes_r[0]
    assert mouth[1] > eyes_l[1] + 15 and 40 < mouth[0] < 88
    back = face.paste(face.crop)  # pasting the unchanged crop gives the photo back (resampling error only)
    x0, y0, x1, y1 = face.box
    inner = (slice(y0 + (y1 - y0) // 4, y1 - (y1 - y0) // 4), slice(x0 + (x1 - x0) // 4, x1 - (x1 - x0) // 4))
    err = np.abs(back[inner].astype(float) - photo[inner]).mean()
    wrong = np.abs(face.paste(face.crop[::-1])[inner].astype(float) - photo[inner]).mean()  # a misplaced crop
    assert err < 15.0 and wrong > 2 * err  # the crop is a downscaled copy: the error is resampling blur


def test_largest_face_on_big_photo_is_found_on_a_downscaled_copy():
    from skimage import data

    photo = np.asarray(__import__("PIL.Image").Image.fromarray(data.astronaut()).resize((1600, 1600)))
    box = faces.detect_largest(photo)
    assert 400 < box[0] < 700 and 250 < box[2] - box[0] < 800  # scaled back to full resolution


def test_no_face_is_a_clear_error():
    rng = np.random.default_rng(0)
    with pytest.raises(UserError, match="no face found"):
        faces.prepare(rng.integers(0, 255, (240, 320, 3), dtype=np.uint8), 64)
    with pytest.raises(UserError, match="RGB uint8"):
        faces.prepare(np.zeros((64, 64), np.uint8), 64)

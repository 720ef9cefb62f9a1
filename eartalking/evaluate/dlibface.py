"""dlib face analysis for ``eartalking measure``: largest-face HOG detection, 68 landmarks, 128-D embedding.

The models ship in pip ``dlib-bin`` + ``face-recognition-models`` (offline) and were trained by nobody here,
so they can judge our generated frames independently. Loaded once per process.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eartalking.cli import UserError

DETECT_MAX_SIDE = 640  # first detection runs on a copy at most this big (HOG cost grows with pixels)
TARGET_FACE_PX = 120  # later frames: the region around the last face is scaled so it is about this wide
LANDMARK_FACE_PX = 200  # landmarks of smaller faces are found on an enlarged crop
MAX_ROI_SCALE = 2.0  # small faces are enlarged up to this factor (cheaper than dlib's 2x upsampling)
#: when some detection scores at least this, weaker ones are not faces to pick (measured on the astronaut:
#: her face 1.2-1.7, a false box on her suit 0.06-0.12 that is sometimes the larger of the two)
CONFIDENT_SCORE = 0.5
#: while tracking, when no try finds a face in the region around the last one at dlib's own threshold 0, a
#: detection there counts from this HOG score (the full-frame search keeps 0): a face just seen is still there
#: when it scores a little under 0. Measured on Einstein's corpus photo, whose face fills the crop: its corpus
#: video was found in 22 of 65 frames at 0 and in all 65 at -0.5 (openness r against the labels 0.87 on the 22,
#: 0.85 on all 65), a generated clip of it in 16 of 119 and 113 of 119; -0.3 found 34 of 119, -1.0 no more
#: than -0.5. Frames found at 0 keep their boxes.
TRACK_SCORE = -0.5


@functools.lru_cache(maxsize=1)
def models() -> tuple[Any, Any, Any]:
    """(HOG detector, 68-point predictor, ResNet embedder), loaded once per process."""
    import dlib

    with warnings.catch_warnings():  # face_recognition_models imports the deprecated pkg_resources
        warnings.simplefilter("ignore")
        import face_recognition_models as frm
    return (
        dlib.get_frontal_face_detector(),
        dlib.shape_predictor(frm.pose_predictor_model_location()),
        dlib.face_recognition_model_v1(frm.face_recognition_model_location()),
    )


class FaceFinder:
    """Largest-face HOG detection that tracks the face found in the previous frame.

    With a previous face: search a region 3x its size around it (moved only when the face has moved, so a
    still face gets the same box), scaled so the face is ~TARGET_FACE_PX wide (HOG finds faces from ~80
    px; small faces are enlarged up to MAX_ROI_SCALE), then, if none, detections from TRACK_SCORE up. Otherwise,
    or when that misses: the whole frame scaled to at most DETECT_MAX_SIDE px, then with upsampling, then at
    full resolution (with upsampling only up to 1.5 Mpx). Boxes are returned in full-frame pixels.
    """

    def __init__(self) -> None:
        self.prev: tuple[int, int, int, int] | None = None  # last face box (left, top, right, bottom)
        self.anchor: tuple[float, float, float] | None = None  # (centre x, centre y, size) of the search region
        self.scale = 1.0

    def find(self, img: np.ndarray) -> Any | None:
        h, w = img.shape[:2]
        if self.prev is not None:
            hit = self._track(img)
            if hit is not None:
                return hit
        s0 = min(1.0, DETECT_MAX_SIDE / max(h, w))
        tries = [(s0, 0), (s0, 1), (1.0, 0)] + ([(1.0, 1)] if h * w <= 1_500_000 else [])
        hit = self._detect(img, tries, (0, 0))
        if hit is None:
            self.prev, self.anchor, self.scale = None, None, 1.0
            return None
        self.anchor = None  # found anew: box it the way the next frames will be boxed
        return self._track(img) or hit

    def _track(self, img: np.ndarray) -> Any | None:
        """Search the region around the previous face."""
        h, w = img.shape[:2]
        left, top, right, bottom = self.prev
        m, cx, cy = max(right - left, bottom - top), (left + right) / 2, (top + bottom) / 2
        a = self.anchor
        if a is None or abs(cx - a[0]) > a[2] / 6 or abs(cy - a[1]) > a[2] / 6 or abs(m / a[2] - 1) > 0.2:
            self.anchor, self.scale = (cx, cy, m), min(MAX_ROI_SCALE, TARGET_FACE_PX / max(m, 1))
        cx, cy, m = self.anchor  # the search region moves only when the face has moved: steady boxes
        g = max(1, round(8 / self.scale))  # and sits on the HOG cell grid
        x0, y0 = max(0, int(cx - 1.5 * m) // g * g), max(0, int(cy - 1.5 * m) // g * g)
        x1, y1 = min(w, int(cx + 1.5 * m)), min(h, int(cy + 1.5 * m))
        prev = self.prev
        assert prev is not None
        roi, tries = img[y0:y1, x0:x1], [(self.scale, 0), (self.scale, 1)]
        # weak detections only when no try finds a face at dlib's own threshold: a weak box at one scale must
        # not stand in for the confident one the upsampled try would find
        hit = self._detect(roi, tries, (x0, y0))
        if hit is None:
            hit = self._detect(roi, tries, (x0, y0), TRACK_SCORE)
        if (
            hit is not None
            and abs(hit.center().x - (prev[0] + prev[2]) / 2) + abs(hit.center().y - (prev[1] + prev[3]) / 2) > m / 2
        ):
            self.prev = prev
            return None  # another face near the old one: let the full-frame search pick the largest
        return hit

    def _detect(self, img: np.ndarray, tries: list[tuple[float, int]], offset: tuple[int, int],
                threshold: float = 0.0) -> Any | None:
        """Largest face in ``img`` trying (scale, upsample) pairs in order, counting detections that score at
        least ``threshold``; box shifted by ``offset``."""
        import dlib

        det = models()[0]
        seen = set()
        for s, up in tries:
            if (s, up) in seen or min(img.shape[:2]) < 8:
                continue
            seen.add((s, up))
            boxes, scores, _ = det.run(_resize(img, s), up, threshold)
            if len(boxes):
                # the largest face; among faces of about that size, the most face-like (HOG score); weak
                # detections compete only when no confident one exists
                floor = min(CONFIDENT_SCORE, max(scores))
                cands = [p for p in zip(boxes, scores, strict=True) if p[1] >= floor]
                big = max(r.area() for r, _ in cands)
                b = max((p for p in cands if p[0].area() >= 0.7 * big), key=lambda p: p[1])[0]
                ox, oy = offset
                rect = dlib.rectangle(
                    int(b.left() / s) + ox, int(b.top() / s) + oy, int(b.right() / s) + ox, int(b.bottom() / s) + oy
                )
                self.prev = (rect.left(), rect.top(), rect.right(), rect.bottom())
                return rect
        return None


def _resize(img: np.ndarray, s: float) -> np.ndarray:
    if abs(s - 1.0) < 1e-3:
        return img
    from PIL import Image

    h, w = img.shape[:2]
    return np.asarray(Image.fromarray(img).resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR))


@dataclass
class Face:
    """One measured face: ``points`` float [68, 2] in full-frame pixels; ``shape`` + ``chip_source`` for embed()."""

    points: np.ndarray
    shape: Any  # dlib full_object_detection in chip_source's coordinates
    chip_source: np.ndarray  # the image (or enlarged crop) the shape refers to


def landmarks(img: np.ndarray, rect: Any) -> Face:
    """68 landmarks of the face in ``rect``; small faces are measured on a crop enlarged to LANDMARK_FACE_PX.

    dlib returns whole-pixel points, so on a 90 px face a mouth is ~35 px wide and openness moves in steps
    of ~0.03; enlarging the crop first gives sub-pixel points in frame coordinates.
    """
    import dlib

    k = LANDMARK_FACE_PX / max(rect.width(), 1)
    if k <= 1.0:
        shape = models()[1](img, rect)
        return Face(_points(shape), shape, img)
    h, w = img.shape[:2]
    m = rect.width() // 2
    x0, y0 = max(0, rect.left() - m), max(0, rect.top() - m)
    x1, y1 = min(w, rect.right() + m + 1), min(h, rect.bottom() + m + 1)
    crop = _resize(img[y0:y1, x0:x1], k)
    ky, kx = crop.shape[0] / (y1 - y0), crop.shape[1] / (x1 - x0)
    r = dlib.rectangle(
        round((rect.left() - x0) * kx),
        round((rect.top() - y0) * ky),
        round((rect.right() - x0) * kx),
        round((rect.bottom() - y0) * ky),
    )
    shape = models()[1](crop, r)
    pts = (_points(shape) + 0.5) / np.array([kx, ky]) - 0.5 + np.array([x0, y0])
    return Face(pts, shape, crop)


def _points(shape: Any) -> np.ndarray:
    return np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float64)


def embed(face: Face) -> np.ndarray:
    """128-D dlib embedding of a measured face (same person: distance < 0.6)."""
    return np.asarray(models()[2].compute_face_descriptor(face.chip_source, face.shape), np.float64)


def portrait_embedding(portrait: str | Path | np.ndarray) -> np.ndarray:
    """128-D embedding of the largest face in a portrait (path or uint8 [H,W,3]); UserError if none."""
    if not isinstance(portrait, np.ndarray):
        from PIL import Image, UnidentifiedImageError

        try:
            portrait = np.asarray(Image.open(portrait).convert("RGB"))
        except (OSError, UnidentifiedImageError) as e:
            raise UserError(f"cannot read portrait {portrait}: {e}") from None
    img = np.ascontiguousarray(portrait[..., :3], dtype=np.uint8)
    rect = FaceFinder().find(img)
    if rect is None:
        raise UserError(f"no face found in the portrait ({img.shape[1]}x{img.shape[0]} px)")
    return embed(landmarks(img, rect))

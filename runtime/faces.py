"""Find, align and crop the face of any photo; paste animated crops back with a feathered blend.

``prepare(photo uint8 [H, W, 3], size) -> Face``:
  1. dlib's HOG detector on a copy downscaled to <= ``DETECT_MAX_SIDE`` px (cost grows with pixels;
     PLATFORM-NOTES: ~50 ms at 960x640), retried with one upsample if nothing is found (small faces);
     the largest box wins. No face -> ``UserError``.
  2. dlib's 68 landmarks at full resolution inside the (scaled-back) box.
  3. The corpus alignment (``eartalking.data.faces``: eyes and mouth to fixed template points) gives the 2x3
     similarity matrix photo -> crop and the crop itself, exactly as the training portraits were made.
``Face.crop`` is the uint8 [size, size, 3] model input; ``Face.paste(frame)`` warps a generated crop back
into the photo and blends it through a feathered mask (computed once per session, over the face's box only).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from eartalking.cli import UserError

DETECT_MAX_SIDE = 640
FAST_SIDE = 320
_DETECTOR = None
_PREDICTOR = None


def load_models():
    global _DETECTOR, _PREDICTOR
    if _DETECTOR is None:
        try:
            import dlib

            with warnings.catch_warnings():  # face_recognition_models imports the deprecated pkg_resources
                warnings.simplefilter("ignore", UserWarning)
                import face_recognition_models
        except ImportError as e:
            raise UserError(f"face finding needs dlib-bin and face-recognition-models ({e}); pip install "
                            "'eartalking[runtime]', or pass a pre-aligned crop with crop_only") from None
        _DETECTOR = dlib.get_frontal_face_detector()
        _PREDICTOR = dlib.shape_predictor(face_recognition_models.pose_predictor_model_location())
    return _DETECTOR, _PREDICTOR


def detect_largest(photo: np.ndarray, max_side: int = DETECT_MAX_SIDE) -> tuple[float, float, float, float]:
    """Largest face box (left, top, right, bottom) in full-resolution pixels, found on downscaled copies.

    HOG cost grows with pixels and its window is ~80 px, so a cascade: a copy of <= ``FAST_SIDE`` px first
    (a portrait's face is large: ~4x cheaper), then <= ``max_side`` px, then that copy upsampled once.
    """
    from PIL import Image

    detector, _ = load_models()
    h, w = photo.shape[:2]
    for side, upsample in ((min(FAST_SIDE, max_side), 0), (max_side, 0), (max_side, 1)):
        scale = min(1.0, side / max(h, w))
        small = photo if scale == 1.0 else np.asarray(
            Image.fromarray(photo).resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR))
        boxes = list(detector(small, upsample))
        if boxes:
            b = max(boxes, key=lambda r: r.width() * r.height())
            return b.left() / scale, b.top() / scale, b.right() / scale, b.bottom() / scale
    scale = min(1.0, max_side / max(h, w))
    raise UserError(f"no face found in the portrait ({w}x{h} px); give a photo with one clear, frontal face "
                    f"at least ~{int(40 / scale)} px wide")


def landmarks68(photo: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """dlib's 68 landmarks, float32 [68, 2] (x, y) at full resolution."""
    import dlib

    _, predictor = load_models()
    rect = dlib.rectangle(*(int(round(v)) for v in box))
    shape = predictor(np.ascontiguousarray(photo), rect)
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def alignment_matrix(landmarks: np.ndarray, size: int) -> np.ndarray:
    """2x3 similarity matrix photo -> crop: the corpus' own (``eartalking.data.faces.alignment_matrix``)."""
    from eartalking.data import faces as data_faces

    return np.asarray(data_faces.alignment_matrix(landmarks, size), np.float64)[:2]


def aligned_crop(photo: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """The crop exactly as the corpus makes it (``eartalking.data.faces.align_face``: anti-aliased warp at the
    corpus' working size, then downsized), so a session's portrait looks like the training portraits."""
    from eartalking.data import faces as data_faces

    return data_faces.align_face(photo, landmarks, size)[0]


@dataclass
class Face:
    """A photo, its aligned crop and what is needed to paste crops back."""

    photo: np.ndarray  # uint8 [H, W, 3]
    crop: np.ndarray  # uint8 [S, S, 3]
    matrix: np.ndarray  # 2x3 photo -> crop
    box: tuple[int, int, int, int] | None = None  # paste region (x0, y0, x1, y1) in the photo
    mask: np.ndarray | None = None  # float32 [y1-y0, x1-x0, 1] feathered blend weights

    def paste(self, frame: np.ndarray) -> np.ndarray:
        """Generated crop uint8 [S, S, 3] -> the photo with it blended in, uint8 [H, W, 3]."""
        from PIL import Image

        if self.box is None or self.mask is None:
            raise ValueError("this Face was prepared without paste-back data (need_paste=False)")
        x0, y0, x1, y1 = self.box
        inv = _shifted(self.matrix, x0, y0)  # region pixel -> crop pixel
        warped = np.asarray(Image.fromarray(frame).transform((x1 - x0, y1 - y0), Image.AFFINE, tuple(inv.ravel()),
                                                              Image.BILINEAR), np.float32)
        out = self.photo.copy()
        region = out[y0:y1, x0:x1].astype(np.float32)
        out[y0:y1, x0:x1] = (region + (warped - region) * self.mask + 0.5).astype(np.uint8)
        return out


def _shifted(m: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """Photo->crop matrix for coordinates relative to (x0, y0) (PIL's affine maps output -> input)."""
    r = m.copy()
    r[:, 2] = m[:, 2] + m[:, :2] @ np.array([x0, y0], np.float64)
    return r


def _invert(m: np.ndarray) -> np.ndarray:
    a = np.vstack([m, [0, 0, 1]])
    return np.linalg.inv(a)[:2]


def feather_mask(size: int, feather: float = 0.12) -> np.ndarray:
    """float32 [size, size]: 1 inside, a smooth ramp to 0 over ``feather * size`` px at the border."""
    d = np.minimum(np.arange(size), np.arange(size)[::-1]).astype(np.float32) + 0.5
    r = np.clip(d / max(1.0, feather * size), 0.0, 1.0)
    m = np.minimum(r[:, None], r[None, :])
    return m * m * (3 - 2 * m)  # smoothstep


def prepare(photo: np.ndarray, size: int, need_paste: bool = True) -> Face:
    """Find the largest face of ``photo`` (uint8 [H, W, 3]), align it to a ``size`` crop, set up paste-back."""
    from PIL import Image

    if photo.ndim != 3 or photo.shape[2] != 3 or photo.dtype != np.uint8:
        raise UserError(f"portrait must be RGB uint8 [H, W, 3], got {photo.dtype} {tuple(photo.shape)}")
    photo = np.ascontiguousarray(photo)
    box = detect_largest(photo)
    lm = landmarks68(photo, box)
    m = alignment_matrix(lm, size)
    inv = _invert(m)  # crop -> photo
    crop = aligned_crop(photo, lm, size)
    face = Face(photo=photo, crop=crop, matrix=m)
    if need_paste:
        corners = np.array([[0, 0], [size, 0], [0, size], [size, size]], np.float64)
        pts = corners @ inv[:, :2].T + inv[:, 2]
        h, w = photo.shape[:2]
        x0, y0 = (int(max(0, np.floor(v))) for v in pts.min(0))
        x1, y1 = int(min(w, np.ceil(pts[:, 0].max()))), int(min(h, np.ceil(pts[:, 1].max())))
        if x1 - x0 < 2 or y1 - y0 < 2:
            raise UserError("the face lies outside the photo; use --crop-only")
        mask_img = Image.fromarray((feather_mask(size) * 255).astype(np.uint8))
        mask = np.asarray(mask_img.transform((x1 - x0, y1 - y0), Image.AFFINE, tuple(_shifted(m, x0, y0).ravel()),
                                             Image.BILINEAR), np.float32)[..., None] / 255.0
        face.box, face.mask = (x0, y0, x1, y1), mask
    return face


def from_crop(crop: np.ndarray) -> Face:
    """A Face for an already-aligned crop (no detection): the crop is its own photo."""
    s = crop.shape[0]
    m = np.array([[1.0, 0, 0], [0, 1.0, 0]])
    return Face(photo=crop, crop=crop, matrix=m, box=(0, 0, s, s), mask=np.ones((s, s, 1), np.float32))

